"""Session state and cached resources of the dashboard: where checkpoints, results and batch images
are read from, the checkpoint picked on Home (every page uses it), the cached Predictor, Explainer
and OCR, and the widget values each page asks to keep while another page is shown."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from clara import catalog
from clara.inputs import check_image_upload
from clara import ocr

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
TRAIN_COMMAND = "python scripts/train.py --dataset mvsa_single --data-dir data/MVSA_Single"
CHECKPOINTS_ENV = "CLARA_CHECKPOINTS_DIR"  # default: checkpoints/ of the repository
RESULTS_ENV = "CLARA_RESULTS_DIR"  # default: results/ of the repository
# Folders (os.pathsep-separated) the Batch page may read images from; none unless the operator sets it.
BATCH_ROOTS_ENV = "CLARA_BATCH_ROOTS"

# Session keys more than one page reads.
CHECKPOINT = "checkpoint_path"  # str: the folder of the checkpoint every page uses
POST = "post"  # Post: the last predicted post, explained by the Attention/Attributions pages
_KEPT_WIDGETS = "kept_widgets"  # set of the widget keys the pages asked to keep (keep_widgets)


@dataclass(frozen=True)
class Post:
    """An image + text to explain; the image is kept as the uploaded bytes (in memory only)."""
    image_bytes: bytes
    text: str
    name: str

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.image_bytes).hexdigest()[:16]
        return f"{digest}:{hashlib.sha256(self.text.encode()).hexdigest()[:16]}"


def init_state() -> None:
    """Every run, before the page: keep the kept widgets' values; on a new session pick the demo
    checkpoint (or the newest usable one)."""
    for key in st.session_state.get(_KEPT_WIDGETS, ()):
        # Streamlit drops the state of widgets not drawn in a run unless the key is assigned again.
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    current = st.session_state.get(CHECKPOINT)
    if current and Path(current).is_dir():
        return
    entries = [e for e in list_checkpoints() if e.usable]
    st.session_state[CHECKPOINT] = str(entries[0].path) if entries else None


def keep_widgets(*keys: str) -> None:
    """Keep these widgets' values (a page's own) while the user is on other pages."""
    kept = st.session_state.setdefault(_KEPT_WIDGETS, set())
    kept.update(keys)


def valid_choice(key: str, options: list[Any]) -> None:
    """Reset a kept select box value that is not among this run's options (e.g. after the
    checkpoint, and with it the labels or the number of layers, changed)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def checkpoints_dir() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or ROOT / "checkpoints")


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or ROOT / "results")


def batch_roots() -> list[Path]:
    """The folders the operator allows the Batch page to read images from ($CLARA_BATCH_ROOTS)."""
    return [Path(part) for part in os.environ.get(BATCH_ROOTS_ENV, "").split(os.pathsep) if part.strip()]


def list_checkpoints() -> list[catalog.CheckpointEntry]:
    return catalog.find_checkpoints(checkpoints_dir(), results_roots=[results_dir()])


def list_results() -> list[catalog.RunResults]:
    return catalog.find_results([results_dir()], list_checkpoints())


def current_entry() -> catalog.CheckpointEntry | None:
    path = st.session_state.get(CHECKPOINT)
    if not path or not Path(path).is_dir():
        return None
    # The sidebar and banner need no test metrics: reading every results folder on each rerun is waste.
    return catalog.read_checkpoint_entry(path, checkpoints_dir(), results_roots=())


@st.cache_resource(max_entries=3, show_spinner="Loading the model (and, the first time after a server start, "
                                               "PyTorch and Transformers)…")
def _load_predictor(path: str, mtime: float) -> Any:
    # `mtime` is only part of the cache key: a checkpoint rewritten in place is loaded again.
    from clara.inference import Predictor  # PyTorch and Transformers: Home and the sidebar never pay for them
    return Predictor.from_checkpoint(path)


def device_line() -> str:
    """Home's device line (markdown). Before any page has loaded a model this server has not imported
    PyTorch (~2 s of CPU), so the line says when the device gets chosen instead of importing it."""
    if "torch" not in sys.modules:
        return (f"**Device in use:** chosen by PyTorch (torch {importlib.metadata.version('torch')}) when a page "
                "first loads the model; this line names it from then on")
    import torch

    from clara.precision import default_device  # the device the model loader uses

    cuda = f"CUDA available: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU found"
    return f"**Device in use:** `{default_device()}` · torch {torch.__version__} · {cuda}"


def predictor_for(path: str | Path) -> Any:
    """The cached Predictor of a checkpoint folder; shows the error and stops the page if it cannot load."""
    try:
        return _load_predictor(str(path), catalog.checkpoint_mtime(path))
    except Exception as exc:  # CheckpointError, a missing file, an incompatible folder: say so on the page
        st.error(f"Cannot load the checkpoint {path}: {exc}")
        st.stop()


def get_predictor() -> Any:
    """The Predictor of the checkpoint picked on Home; stops the page with a message when there is none."""
    path = st.session_state.get(CHECKPOINT)
    if not path:
        st.error("No checkpoint found under checkpoints/. Rebuild the demo one with "
                 "`python scripts/make_demo_checkpoint.py` or train one with "
                 f"`{TRAIN_COMMAND}`.")
        st.stop()
    return predictor_for(path)


def explainer_for(predictor: Any, max_steps: int | None = None) -> Any:
    """An Explainer at clara.explain's defaults (EXPLAIN_DEFAULTS); `max_steps` bounds the adaptive IG steps."""
    from clara.explain import Explainer  # Captum and friends: only the pages that explain pay for them
    return Explainer(predictor, max_steps=max_steps)


@st.cache_resource
def _explain_timings() -> dict[tuple[Any, ...], dict[str, float]]:
    """Seconds per explanation step measured on this server, per (checkpoint, settings): shared by sessions."""
    return {}


def record_explain_timings(checkpoint: str | None, settings: tuple[Any, ...], timings: dict[str, float]) -> None:
    """Keep what each step of an explanation took (Explanation.timings), for the next run's estimate."""
    _explain_timings().setdefault((checkpoint, *settings), {}).update(timings)


def explain_estimate(checkpoint: str | None, settings: tuple[Any, ...], steps: list[str]) -> dict[str, float] | None:
    """Seconds each of `steps` (plus the preparation) took on this server's last run at these settings;
    None when one of them has not been timed yet."""
    measured = _explain_timings().get((checkpoint, *settings), {})
    wanted = ["prepare", *steps]
    if not all(step in measured for step in wanted):
        return None
    return {step: measured[step] for step in wanted}


def ocr_engines() -> list[str]:
    """The OCR engines installed on this server, most preferred first (clara.ocr.OCR_ENGINES)."""
    return ocr.available_ocr_engines()


@st.cache_data(max_entries=64, show_spinner=False)
def read_image_text(image_bytes: bytes, engine: str | None = None) -> dict[str, Any] | None:
    """OCR of an image (cached by content and engine); None when no OCR engine is installed."""
    try:
        result = ocr.read_image_text(check_image_upload(image_bytes).image, engine=engine)
    except ocr.OCRUnavailableError:
        return None
    return {"text": result.text, "variant": result.variant, "confidence": result.confidence,
            "engine": result.engine}


def store_post(image_bytes: bytes, text: str, name: str) -> None:
    st.session_state[POST] = Post(image_bytes=image_bytes, text=text, name=name)


def last_post() -> Post | None:
    post = st.session_state.get(POST)
    return post if isinstance(post, Post) else None
