"""Locks on the folders clara writes (filelock: OS locks, released when the process dies).

- A training run holds `OUT/.clara-training.lock` on its output folder, so a second run into
  the same folder is refused instead of interleaving its checkpoints with the first one's.
- A checkpoint save holds `<tmp folder>.lock` while it writes its temporary folder; the next
  save into the same parent removes every temporary folder whose lock nobody holds (left by a
  killed save), never one that a live save is still writing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

TRAINING_LOCK_FILE = ".clara-training.lock"
LOCK_SUFFIX = ".lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and what to do."""


@contextlib.contextmanager
def training_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the output folder's training lock for the `with` block (only in the main process of
    a multi-process run: RANK 0, the one that writes); FolderBusyError when another run has it."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = Path(output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / TRAINING_LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusyError(f"another training run is writing to {folder} (it holds {lock.lock_file}); "
                              "wait for it to finish or choose another --output-dir") from None
    try:
        yield
    finally:
        lock.release()


def lock_temporary_folder(folder: Path) -> FileLock:
    """Take the lock that marks `folder` (not created yet) as being written by this process."""
    lock = FileLock(_lock_path(folder), timeout=0)
    lock.acquire()
    return lock


def release_temporary_folder(lock: FileLock) -> None:
    """Release a lock_temporary_folder lock and delete its lock file."""
    lock.release()
    Path(lock.lock_file).unlink(missing_ok=True)


def remove_abandoned_folders(parent: Path, pattern: str) -> list[Path]:
    """Delete the folders in `parent` matching `pattern` whose lock no live process holds; return them."""
    removed = []
    folders = {path.with_name(path.name.removesuffix(LOCK_SUFFIX)) for path in parent.glob(pattern)
               if path.is_dir() and not path.is_symlink() or path.name.endswith(LOCK_SUFFIX)}
    for folder in sorted(folders):
        lock = FileLock(_lock_path(folder), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # a save in progress
        try:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        finally:
            release_temporary_folder(lock)
    return removed


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK_SUFFIX)
