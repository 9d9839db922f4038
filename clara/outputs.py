"""Output paths checked before the work: an unusable output folder or file fails before a model
is loaded or a run trains, with one message naming the option, not with a traceback after it.
The one writability probe of the code base (scripts and the training loop use it)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output folder or file that cannot be written; the message names the option and the reason."""


def write_problem(folder: str | Path) -> str | None:
    """None if a file could be written in `folder` (created later if missing), else the reason.

    Creates nothing: an existing folder gets a probe file (removed at once); for a missing one the
    nearest existing ancestor must be a folder the process may write in.
    """
    folder = Path(folder)
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".clara_write_test_"):
                pass
        except OSError as exc:
            return exc.strerror or str(exc)
        return None
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"no permission to create folders in {ancestor}"
    return None


def check_writable_folder(folder: str | Path, option: str) -> Path:
    """Check that `folder` can be written or created (nothing is created here); return it.

    Raises OutputPathError("<option> <folder>: cannot write there (<reason>); ...") otherwise, e.g.
    when a parent is a file, the disk is read-only or permission is denied.
    """
    folder = Path(folder)
    problem = write_problem(folder)
    if problem:
        raise OutputPathError(f"{option} {folder}: cannot write there ({problem}); choose a writable location")
    return folder


def check_writable_file(path: str | Path, option: str) -> Path:
    """`path` must not be a folder and its folder must be writable or creatable; return it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    problem = write_problem(path.parent)
    if problem:
        raise OutputPathError(f"{option} {path}: cannot write to its folder {path.parent} ({problem}); "
                              "choose a writable location")
    return path
