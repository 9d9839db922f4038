"""Checkpoint folders: the folder format (`folder.py`) and the import of the authors' notebook
`.pt` files into that format (`notebook.py`, over `notebook_files.py` and `notebook_keys.py`)."""
from clara.checkpoint.folder import (CONFIG_FIELDS, CONFIG_FILE, FORMAT_VERSION, HISTORY_FILE, METRICS_FILE,
                                     OLD_MARK, TMP_MARK, TOKENIZER_DIR, TRAINING_STATE_JSON, TRAINING_STATE_TENSORS,
                                     WEIGHTS_FILE, CheckpointError, LoadedCheckpoint, checkpoint_config, git_commit,
                                     load_checkpoint, package_versions, read_checkpoint_info,
                                     read_training_state, save_checkpoint, stored_state, weights_mode)
from clara.checkpoint.notebook import import_notebook_checkpoint
from clara.checkpoint.notebook_files import NotebookImportError
from clara.checkpoint.notebook_keys import map_notebook_state_dict

__all__ = ["CONFIG_FIELDS", "CONFIG_FILE", "FORMAT_VERSION", "HISTORY_FILE", "METRICS_FILE", "OLD_MARK", "TMP_MARK",
           "TOKENIZER_DIR", "TRAINING_STATE_JSON", "TRAINING_STATE_TENSORS", "WEIGHTS_FILE", "CheckpointError",
           "LoadedCheckpoint", "NotebookImportError", "checkpoint_config", "git_commit", "import_notebook_checkpoint",
           "load_checkpoint", "map_notebook_state_dict", "package_versions",
           "read_checkpoint_info", "read_training_state", "save_checkpoint", "stored_state", "weights_mode"]
