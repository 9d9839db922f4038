"""What a checkpoint folder is made of (file names, config.json's fields) and the checked reader of
its config.json, without PyTorch or Transformers: the dashboard and the commands list checkpoints
with this alone (docs/BENCHMARKS.md, "Dashboard"); `folder.py` saves and loads the weights.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clara.config import Config, ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"
CONFIG_FIELDS = {"config", "labels", "dataset", "protocol", "encoders", "image", "params", "versions",
                 "git_commit", "created", "format_version", "weights", "source", "data", "extra"}
# Sibling folders used while saving: .<name>.tmp-<hex> (being written), .<name>.old-<hex> (the
# previous checkpoint, between rename-aside and delete when no atomic exchange is available).
TMP_MARK, OLD_MARK = ".tmp-", ".old-"


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete or does not match this code; the message says what differs."""


def weights_mode(cfg: Config) -> str:
    """`trainable` for published (hub / local folder) encoders, `full` for the offline ones and for
    runs that fine-tune the encoders fully (train.full_finetune_from_epoch: every weight changes)."""
    if cfg.model.encoders != "published" or cfg.train.full_finetune_from_epoch is not None:
        return "full"
    return "trainable"


def aside_copies(target: Path) -> list[Path]:
    """Previous checkpoints left beside `target` by a save interrupted between its two renames."""
    if not target.parent.is_dir():
        return []
    found = [p for p in target.parent.glob(f".{target.name}{OLD_MARK}*") if (p / CONFIG_FILE).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, checked for completeness and version (no model built)."""
    folder = resolve_folder(Path(path).expanduser())
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"no {name} in {folder}: incomplete checkpoint (was training interrupted?)")
    if not (folder / TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"no {TOKENIZER_DIR}/ folder in {folder}: incomplete checkpoint "
                              "(was training interrupted?)")
    info = read_json_object(folder / CONFIG_FILE)
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: format_version {version!r} is not supported by this code "
                              f"(it reads format_version {FORMAT_VERSION})")
    unknown = sorted(set(info) - CONFIG_FIELDS)
    if unknown:
        raise CheckpointError(f"{folder / CONFIG_FILE} has unknown fields {unknown}; "
                              "was it written by another version of clara?")
    missing = sorted({"config", "labels", "weights"} - set(info))
    if missing:
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks the fields {missing}")
    info["path"] = str(folder)
    return info


def checkpoint_config(info: Mapping[str, Any]) -> Config:
    """The Config recorded in a checkpoint's config.json, checked against its labels."""
    try:
        cfg = Config.from_dict(info["config"])
        cfg.validate()
    except (ConfigError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{info.get('path', 'checkpoint')}: config.json's config does not fit this code: "
                              f"{exc}") from None
    if list(info["labels"]) != list(cfg.labels):
        raise CheckpointError(f"{info.get('path', 'checkpoint')}: config.json labels {info['labels']} differ from "
                              f"the labels of dataset {cfg.data.dataset} {cfg.labels}")
    if info["weights"] != weights_mode(cfg):
        raise CheckpointError(f"{info.get('path', 'checkpoint')}: weights {info['weights']!r} but encoders "
                              f"{cfg.model.encoders!r} store {weights_mode(cfg)!r} weights")
    return cfg


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file; CheckpointError when it is unreadable or not an object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return content


def resolve_folder(folder: Path) -> Path:
    """`folder`, or the previous checkpoint an interrupted save left beside it (with a warning)."""
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{folder} is not a folder: a checkpoint is a folder holding {CONFIG_FILE}, "
                              f"{WEIGHTS_FILE} and {TOKENIZER_DIR}/")
    aside = aside_copies(folder)
    if aside:
        warnings.warn(f"{folder} is missing but an interrupted save left the previous checkpoint at {aside[0]}; "
                      "loading that one (the next save puts it back)", stacklevel=3)
        return aside[0]
    raise CheckpointError(f"checkpoint folder {folder} does not exist")
