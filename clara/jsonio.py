"""JSON for the files clara writes: one conversion of numpy / torch / Path / dataclass values to
plain JSON values, and one atomic file write (temporary file beside the target, then rename) that
the text, JSON and figure writers share."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def to_jsonable(value: Any, *, nonfinite_as_none: bool = False, max_items: int | None = None,
                unknown: Callable[[Any], Any] | None = None) -> Any:
    """A copy of `value` made of dicts (str keys), lists, str, int, float, bool and None.

    numpy / torch scalars and arrays become numbers and lists (with `max_items`, a larger array
    becomes the string "<array [shape]>"), Path a string, tuple and set a list, a dataclass its
    fields. `nonfinite_as_none`: NaN / inf become None (strict JSON). Any other object goes through
    `unknown`, or raises TypeError when none is given.
    """
    def convert(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {str(key): convert(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple, set, frozenset)):
            return [convert(inner) for inner in item]
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return convert(dataclasses.asdict(item))
        if isinstance(item, Path):
            return str(item)
        if hasattr(item, "tolist") and hasattr(item, "shape"):  # numpy / torch scalars and arrays
            size = math.prod(item.shape)
            if max_items is not None and size > max_items:
                return f"<{'tensor' if type(item).__module__.startswith('torch') else 'array'} {list(item.shape)}>"
            return convert(item.tolist())
        if isinstance(item, float):
            return None if nonfinite_as_none and not math.isfinite(item) else item
        if item is None or isinstance(item, (bool, int, str)):
            return item
        if unknown is not None:
            return unknown(item)
        raise TypeError(f"cannot write {type(item).__name__} to JSON")

    return convert(value)


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call `write` on a temporary file beside `path`, then rename it into place, so that a reader
    sees the old file or the new one, never a part; the temporary file is removed on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (atomic_write), UTF-8, newlines as given."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def write_json(path: str | Path, payload: Any) -> None:
    """`payload` (converted by to_jsonable) as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(payload), indent=2) + "\n")
