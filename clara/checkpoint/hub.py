"""Checkpoint folders on the Hugging Face Hub (the `hub` extra: huggingface_hub).

`upload_checkpoint` pushes, in one commit, the files that make a checkpoint and its model card
(written from config.json when an older folder has none): never the resume state (optimizer
tensors) nor a results folder, whose predictions.csv holds the test posts. `download_checkpoint`
fetches those files into a local folder and checks that it is a checkpoint this code loads;
nothing in it is unpickled or run (clara.untrusted). config.json records the training data
folder's local path: look at it before uploading a private run.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from clara.checkpoint.card import CARD_FILE, model_card
from clara.checkpoint.folder import (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, TOKENIZER_DIR, WEIGHTS_FILE,
                                     CheckpointError, read_checkpoint_info)
from clara.untrusted import UntrustedFolderError, check_model_folder

HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, f"{TOKENIZER_DIR}/*", METRICS_FILE, HISTORY_FILE, CARD_FILE)  # fnmatch patterns


def hub_files(folder: str | Path) -> dict[str, Path | bytes]:
    """What `upload_checkpoint` sends: path in the repository -> local file (or the card's bytes
    when the folder has no README.md). CheckpointError for a folder that is not a checkpoint."""
    info = read_checkpoint_info(folder)
    root = Path(info["path"])
    files: dict[str, Path | bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in HUB_FILES):
            files[name] = path
    if CARD_FILE not in files:
        metrics, history = _read_json(root / METRICS_FILE), _read_json(root / HISTORY_FILE)
        files[CARD_FILE] = model_card(info, metrics if isinstance(metrics, dict) else None,
                                      history if isinstance(history, list) else None).encode()
    return files


def upload_checkpoint(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
                      revision: str | None = None, commit_message: str | None = None) -> str:
    """Create the model repository `repo_id` if needed (private unless told) and commit the
    checkpoint's files (`hub_files`) to it; return the commit's URL."""
    hub = _huggingface_hub()
    files = hub_files(folder)
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path)
                                         else source) for name, source in files.items()]
    commit = api.create_commit(repo_id, operations=operations, revision=revision, repo_type="model",
                               commit_message=commit_message or f"Upload CLARA checkpoint {Path(folder).name}")
    return str(commit.commit_url)


def download_checkpoint(repo_id: str, local_dir: str | Path, *, revision: str | None = None,
                        token: str | None = None) -> Path:
    """Fetch a checkpoint uploaded by `upload_checkpoint` (only the HUB_FILES) into `local_dir`;
    CheckpointError when what arrived is not a checkpoint this code loads."""
    hub = _huggingface_hub()
    folder = Path(hub.snapshot_download(repo_id, revision=revision, local_dir=str(local_dir), token=token,
                                        allow_patterns=list(HUB_FILES), library_name="clara"))
    try:
        check_model_folder(folder)
    except UntrustedFolderError as exc:
        raise CheckpointError(str(exc)) from None
    read_checkpoint_info(folder)
    return folder


def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError('the Hub needs the huggingface_hub package: pip install "clara[hub]"') from None
    return huggingface_hub


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
