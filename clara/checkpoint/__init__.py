"""Checkpoint folders: what a folder holds and its checked config.json (`info.py`, no PyTorch), the
folder format's saving and loading (`folder.py`) and the import of the authors' notebook `.pt`
files into that format (`notebook.py`, over `notebook_files.py` and `notebook_keys.py`). The
modules that need PyTorch are imported on first use, so listing checkpoints does not import it."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clara.checkpoint.info import (CONFIG_FIELDS, CONFIG_FILE, FORMAT_VERSION, HISTORY_FILE, METRICS_FILE, OLD_MARK,
                                   TMP_MARK, TOKENIZER_DIR, TRAINING_STATE_JSON, TRAINING_STATE_TENSORS, WEIGHTS_FILE,
                                   CheckpointError, checkpoint_config, read_checkpoint_info, weights_mode)

if TYPE_CHECKING:
    from clara.checkpoint.folder import (LoadedCheckpoint, git_commit, load_checkpoint, package_versions,
                                         read_training_state, save_checkpoint, stored_state)
    from clara.checkpoint.notebook import import_notebook_checkpoint
    from clara.checkpoint.notebook_files import NotebookImportError
    from clara.checkpoint.notebook_keys import map_notebook_state_dict

# What the submodules that import PyTorch define, by submodule: imported when first asked for.
_LAZY = {"LoadedCheckpoint": "folder", "git_commit": "folder", "load_checkpoint": "folder",
         "package_versions": "folder", "read_training_state": "folder", "save_checkpoint": "folder",
         "stored_state": "folder", "import_notebook_checkpoint": "notebook",
         "NotebookImportError": "notebook_files", "map_notebook_state_dict": "notebook_keys"}

__all__ = ["CONFIG_FIELDS", "CONFIG_FILE", "FORMAT_VERSION", "HISTORY_FILE", "METRICS_FILE", "OLD_MARK", "TMP_MARK",
           "TOKENIZER_DIR", "TRAINING_STATE_JSON", "TRAINING_STATE_TENSORS", "WEIGHTS_FILE", "CheckpointError",
           "LoadedCheckpoint", "NotebookImportError", "checkpoint_config", "git_commit", "import_notebook_checkpoint",
           "load_checkpoint", "map_notebook_state_dict", "package_versions",
           "read_checkpoint_info", "read_training_state", "save_checkpoint", "stored_state", "weights_mode"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
