"""Read the CLARA authors' notebook `.pt` files, each in its own notebook's layout (`NOTEBOOK_FILES`).

Only `torch.load(weights_only=True)` (plus numpy's scalar/array rebuilders) reads them: a file
that needs any other object, or that is in no notebook's layout, is refused with a message
saying how to re-save it. The one module that opens the untrusted file; the key mapping is in
`notebook_keys.py`, the import in `notebook.py`.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clara.jsonio import to_jsonable

MAX_RECORDED_ITEMS = 1000  # larger arrays among a notebook file's extras are recorded by shape only


class NotebookImportError(ValueError):
    """The file cannot be imported; the message says which file or keys and what to do."""


def _numpy_safe_globals() -> list[Any]:
    """numpy's scalar/array reconstructors, under both numpy 1.x and 2.x module names.

    They rebuild plain numbers and arrays from bytes (their contents still go through the
    restricted unpickler); notebooks save sklearn metrics (numpy.float64) beside the weights.
    """
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed.append((multiarray.scalar, f"{module}.scalar"))
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
    # numpy >= 1.25 pickles dtypes by their DType class (numpy.dtypes.Float64DType, ...).
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        allowed.extend(getattr(dtypes_module, name) for name in dir(dtypes_module) if name.endswith("DType"))
    return allowed


@dataclass(frozen=True)
class NotebookLayout:
    """What one notebook's save cell writes."""
    notebook: str
    file_name: str  # the path it passes to torch.save
    state_key: str | None  # the entry holding model.state_dict(); None: the file is the bare state dict
    config_key: str | None  # the entry holding its CONFIG
    saved_by: str  # where in the notebook


NOTEBOOK_FILES = {
    "mvsa_single": NotebookLayout("MVSA-Single", "artifacts_clara/clara_mvsa_single.pt", "model_state_dict",
                                  "config", "cell 18"),
    "mvsa_multiple": NotebookLayout("MVSA-Multiple", "clara_mvsa_multi.pt", None, None,
                                    "cell 14, Trainer.train; the path from cell 16"),
    "hfm": NotebookLayout("HFM", "clara_hfm.pt", "model_state", "cfg", "cell 16, Trainer.train"),
}
BARE_STATE_DICT = "bare state dict"
CONVERTED_NAME = "clara_converted.pt"


@dataclass
class NotebookFile:
    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    notebook_config: dict[str, Any] | None  # the notebook's CONFIG, when the file holds one
    extras: dict[str, Any] = field(default_factory=dict)  # other plain entries (metrics, epoch, ...)
    layout: str = BARE_STATE_DICT  # which notebook's layout the file has, in words
    saved_by: str | None = None  # the dataset whose notebook writes this layout (None: a bare state dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-friendly copy of CONFIG/metric values (large arrays as their shape, other objects as text)."""
    return to_jsonable(value, max_items=MAX_RECORDED_ITEMS, unknown=str)


def _count_tensors(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return 0


def _entry_record(value: Any) -> Any:
    """What config.json records of one extra entry: its plain value, or a count of the tensors it holds."""
    n_tensors = _count_tensors(value)
    return _plain(value) if n_tensors == 0 else f"<{n_tensors} tensors, not recorded>"


def _layout_name(dataset: str) -> str:
    layout = NOTEBOOK_FILES[dataset]
    shape = (BARE_STATE_DICT if layout.state_key is None
             else f"{{{layout.state_key!r}: state dict, {layout.config_key!r}: CONFIG, ...}}")
    return f"{shape} (as the {layout.notebook} notebook saves {layout.file_name}, {layout.saved_by})"


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def resave_snippet(file_name: str, state_key: str | None = None, config_key: str | None = None) -> list[str]:
    """Three lines of Python that re-save a file's state dict (under `state_key`) in the layout we read."""
    state = f"ckpt[{state_key!r}]" if state_key else "ckpt[KEY_OF_THE_STATE_DICT]"
    config = f"ckpt.get({config_key!r})" if config_key else "CONFIG  # or None"
    return ["  import torch",
            f"  ckpt = torch.load({file_name!r}, map_location='cpu', weights_only=True)",
            f"  torch.save({{'model_state_dict': {state}, 'config': {config}}}, {CONVERTED_NAME!r})"]


def _layouts_we_read() -> str:
    return "; ".join(_layout_name(dataset) for dataset in NOTEBOOK_FILES)


def _unknown_layout(path: Path, loaded: Any) -> NotebookImportError:
    """The refusal for a file in no notebook's layout: what we look for and how to convert it."""
    if isinstance(loaded, Mapping):
        keys = ", ".join(repr(k) for k in list(loaded)[:12]) + (" ..." if len(loaded) > 12 else "")
        found = f"a dict with keys {keys}" if loaded else "an empty dict"
        state_keys = [k for k, v in loaded.items() if _is_state_dict(v)]
        config_keys = [k for k, v in loaded.items() if isinstance(v, Mapping) and v and _count_tensors(v) == 0]
        state_key = state_keys[0] if len(state_keys) == 1 else None
        config_key = config_keys[0] if len(config_keys) == 1 else None
    else:
        found, state_key, config_key = f"a {type(loaded).__name__}", None, None
    return NotebookImportError("\n".join([
        f"{path}: not a layout the CLARA notebooks write: it holds {found}; we read {_layouts_we_read()}. "
        "To convert it, re-save its state dict (every value a tensor) as 'model_state_dict':",
        *resave_snippet(path.name, state_key, config_key)]))


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), plus numpy's scalar rebuilders; refusals explained, never bypassed."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            try:  # memory-mapped: a 1.5 GB file is not copied into RAM before its tensors are mapped
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # pre-zip torch.save format
    except Exception as exc:  # noqa: BLE001 - torch raises several types; all mean "cannot read safely"
        text = str(exc)
    # torch's refusal opens with advice to retry with weights_only=False (unsafe): only its reason is kept.
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    refusal = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if match or refusal or text.startswith("Weights only load failed"):
        reason = (f"it needs unpickling of arbitrary Python objects ({match.group(1)})" if match else
                  f"torch's safe reader cannot read it ({refusal.group(1).strip() if refusal else 'not plain data'})")
        resave = f"  torch.save({{'model_state_dict': model.state_dict(), 'config': CONFIG}}, {CONVERTED_NAME!r})"
        raise NotebookImportError("\n".join([
            f"{path}: refused: {reason}, which could run code; only tensors, numbers, strings, lists and dicts "
            "are accepted. Re-save it in the notebook session that holds the model:", resave])) from None
    raise NotebookImportError(f"{path}: not a readable PyTorch checkpoint ({text.splitlines()[0] if text else ''})"
                              ) from None


def read_notebook_file(pt_path: str | Path) -> NotebookFile:
    """Load a notebook `.pt` file safely, in any notebook's layout (`NOTEBOOK_FILES`).

    MVSA-Single: {'model_state_dict', 'config', metrics...}; HFM: {'model_state', 'cfg', 'epoch',
    'best_val_f1', 'history'}; MVSA-Multiple: the bare state dict. Anything else is refused with
    the keys we look for and a snippet that converts it.
    """
    path = Path(pt_path)
    if not path.is_file():
        raise NotebookImportError(f"{path}: no such file")
    loaded = _torch_load(path)
    saved_by = next((dataset for dataset, layout in NOTEBOOK_FILES.items() if layout.state_key is not None
                     and isinstance(loaded, Mapping) and layout.state_key in loaded), None)
    if saved_by is not None:
        state_key, config_key = NOTEBOOK_FILES[saved_by].state_key, NOTEBOOK_FILES[saved_by].config_key
        state, notebook_config = loaded[state_key], loaded.get(config_key)
        extras = {str(k): _entry_record(v) for k, v in loaded.items() if k not in (state_key, config_key)}
        if not _is_state_dict(state):
            what = "empty" if isinstance(state, Mapping) and not state else "not a dict of tensors"
            raise NotebookImportError("\n".join([
                f"{path}: {state_key!r} is {what} ({type(state).__name__}); expected the model's state dict there. "
                "If another entry holds it, convert the file with:", *resave_snippet(path.name)]))
        layout = _layout_name(saved_by)
    elif _is_state_dict(loaded):
        state, notebook_config, extras = loaded, None, {}
        layout = _layout_name("mvsa_multiple")
    else:
        raise _unknown_layout(path, loaded)
    if notebook_config is not None and not isinstance(notebook_config, Mapping):
        notebook_config = {"value": notebook_config}
    return NotebookFile(path=path, sha256=_sha256(path), state_dict=dict(state),
                        notebook_config=_plain(notebook_config) if notebook_config is not None else None,
                        extras=extras, layout=layout, saved_by=saved_by)
