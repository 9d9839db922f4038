"""Streamlit pieces every page shares: paths, session state, the cached model, the demo banner and
the post picker. Not a page itself (st.navigation in streamlit_app.py lists the pages)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from clara import app_support as support

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
TRAIN_COMMAND = "python scripts/train.py --dataset mvsa_single --data-dir data/MVSA_Single"

# Session-state keys shared by the pages.
CHECKPOINT = "checkpoint_path"  # str: the folder of the checkpoint every page uses
IMAGE_BYTES = "image_bytes"  # bytes of the image chosen on Predict (upload or example)
IMAGE_NAME = "image_name"  # display name of that image (never used as a path)
POST_TEXT = "post_text"  # widget: the typed post text
IMAGE_TEXT = "image_text"  # widget: text read from the image by OCR, editable
TEXT_SOURCE = "text_source"  # widget: which of the two texts the model reads
PREDICTION = "prediction"  # dict: the last prediction and what it was made on
POST = "post"  # Post: the last predicted post, explained by the Attention/Attributions pages
# Widget values that must survive a visit to another page (Streamlit drops the state of widgets
# that are not drawn in a run unless the key is assigned again, see keep_widget_state).
PERSISTENT_WIDGETS = (POST_TEXT, IMAGE_TEXT, TEXT_SOURCE, "ocr_enabled", "explain_post", "attention_layer",
                      "attention_head", "attention_patch", "attr_methods", "attr_steps", "attr_target", "attr_deletion",
                      "errors_run", "errors_true", "errors_pred")


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
    """Defaults on a new session: the demo checkpoint (or the newest usable one)."""
    keep_widget_state()
    current = st.session_state.get(CHECKPOINT)
    if current and Path(current).is_dir():
        return
    entries = [e for e in list_checkpoints() if e.usable]
    st.session_state[CHECKPOINT] = str(entries[0].path) if entries else None


def keep_widget_state() -> None:
    for key in PERSISTENT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def valid_choice(key: str, options: list[Any]) -> None:
    """Reset a kept select box value that is not among this run's options (e.g. after the
    checkpoint, and with it the labels or the number of layers, changed)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def checkpoints_dir() -> Path:
    """Where the picker looks: checkpoints/ of the repository, or $CLARA_CHECKPOINTS_DIR."""
    return Path(os.environ.get("CLARA_CHECKPOINTS_DIR") or ROOT / "checkpoints")


def results_dir() -> Path:
    """Where training writes results: results/ of the repository, or $CLARA_RESULTS_DIR."""
    return Path(os.environ.get("CLARA_RESULTS_DIR") or ROOT / "results")


def list_checkpoints() -> list[support.CheckpointEntry]:
    return support.find_checkpoints(checkpoints_dir(), results_roots=[results_dir()])


def list_results() -> list[support.RunResults]:
    return support.find_results([results_dir()], list_checkpoints())


def current_entry() -> support.CheckpointEntry | None:
    path = st.session_state.get(CHECKPOINT)
    if not path or not Path(path).is_dir():
        return None
    # The sidebar and banner need no test metrics: reading every results folder on each rerun is waste.
    return support.read_checkpoint_entry(path, checkpoints_dir(), results_roots=())


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def _load_predictor(path: str, mtime: float) -> Any:
    # `mtime` is only part of the cache key: a checkpoint rewritten in place is loaded again.
    from clara.inference import Predictor
    return Predictor.from_checkpoint(path)


def predictor_for(path: str | Path) -> Any:
    """The cached Predictor of a checkpoint folder; shows the error and stops the page if it cannot load."""
    try:
        return _load_predictor(str(path), support.checkpoint_mtime(path))
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


@st.cache_data(max_entries=64, show_spinner=False)
def read_image_text(image_bytes: bytes) -> dict[str, Any] | None:
    """OCR of an image (cached by content); None when tesseract is not installed."""
    if not support.tesseract_available():
        return None
    result = support.ocr_meme_text(support.check_image_upload(image_bytes).image)
    return {"text": result.text, "variant": result.variant, "confidence": result.confidence}


def explainer_for(predictor: Any, n_steps: int = 32) -> Any:
    from clara.explain import Explainer
    return Explainer(predictor, n_steps=n_steps)


def demo_banner(entry: support.CheckpointEntry | None) -> None:
    if entry is None or not entry.is_demo:
        return
    st.info(
        "**You are using the demo checkpoint.** It has *tiny* encoders trained for about a minute on "
        "*synthetic* posts (a coloured square in a noisy picture plus a text with one cue word, built so that "
        "the label needs both), so it is **not a real sentiment model**: real photos and tweets get meaningless "
        "answers. The bundled examples show what it learned. To train a real model, download MVSA-Single and "
        f"run `{TRAIN_COMMAND}`, then pick the new checkpoint on the Home page.",
        icon=":material/info:")


def sidebar(entry: support.CheckpointEntry | None) -> None:
    with st.sidebar:
        st.caption("Checkpoint in use (change it on Home)")
        if entry is None:
            st.markdown("**none**")
        else:
            st.markdown(f"**{entry.name}**" + (" · demo" if entry.is_demo else ""))
            st.caption(f"{entry.dataset} · {entry.encoders} encoders · labels: {', '.join(entry.labels)}")


def store_post(image_bytes: bytes, text: str, name: str) -> None:
    st.session_state[POST] = Post(image_bytes=image_bytes, text=text, name=name)


def pick_post(key: str = "explain_post") -> Post | None:
    """Which post to explain: the last one predicted on Predict, or a bundled example."""
    options: dict[str, Post] = {}
    last = st.session_state.get(POST)
    if isinstance(last, Post):
        options[f"Last prediction: {last.name}"] = last
    for example in support.load_examples(EXAMPLES_DIR):
        options[f"Example: {example.name}"] = Post(example.image_path.read_bytes(), example.text, example.name)
    if not options:
        st.warning("Nothing to explain yet: predict a post on the Predict page first.")
        return None
    valid_choice(key, list(options))
    choice = st.selectbox("Post to explain", list(options), key=key)
    post = options[choice]
    left, right = st.columns([1, 3])
    left.image(support.check_image_upload(post.image_bytes).image, width=160)
    right.markdown("**Text:** " + escape_markdown(post.text))
    return post


def escape_markdown(text: str) -> str:
    """Show user text literally in st.markdown (no links, emphasis or HTML from it)."""
    escaped = text.replace("\\", "\\\\")
    for ch in "*_`[]()<>#|~$":
        escaped = escaped.replace(ch, "\\" + ch)
    return escaped

