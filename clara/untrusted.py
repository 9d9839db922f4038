"""Refuse model folders that would make transformers run code shipped inside them.

transformers imports Python files named by a folder's `auto_map` (after a `[y/N]` question on
stdin when `trust_remote_code` is not given). clara passes `trust_remote_code=False` on every
load and, before a local folder (a checkpoint, its tokenizer/, an encoder saved on disk) reaches
transformers, `check_model_folder` refuses it with a one-line reason when it holds `auto_map`,
any Python file, or names a class that transformers itself does not define.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REMOTE_CODE_KEY = "auto_map"
CODE_SUFFIXES = (".py", ".pyc")
# Fields of transformers' config files that name the class to build (`architectures`: a list).
CLASS_NAME_KEYS = ("architectures", "tokenizer_class", "processor_class", "image_processor_type",
                   "feature_extractor_type", "video_processor_type")

_TRANSFORMERS_NAMES: frozenset[str] | None = None


class UntrustedFolderError(ValueError):
    """A model folder that could make transformers run code; the message names the file and why."""


def check_model_folder(folder: str | Path) -> None:
    """Raise UntrustedFolderError for `folder` (and everything under it) if it holds a Python file,
    a JSON file with an `auto_map` entry or naming a class transformers lacks, or unreadable JSON."""
    root = Path(folder).expanduser()
    files = sorted(path for path in root.rglob("*") if path.is_file())
    for path in files:
        if path.suffix.lower() in CODE_SUFFIXES:
            raise UntrustedFolderError(f"{path} is Python code inside a model folder; clara never runs code "
                                       "shipped with a model: remove the file")
    for path in files:
        if path.suffix.lower() == ".json":
            _check_json(path)


def _check_json(path: Path) -> None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise UntrustedFolderError(f"{path} is not readable JSON ({reason})") from None
    items = list(_items(content))
    if any(key == REMOTE_CODE_KEY for key, _ in items):
        raise UntrustedFolderError(f"{path} has an '{REMOTE_CODE_KEY}' entry, which asks to run code shipped "
                                   "with the model; clara never does: remove the entry")
    for key, value in items:
        if key in CLASS_NAME_KEYS:
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str) and not _is_transformers_class(name):
                    raise UntrustedFolderError(f"{path}: {key} {name!r} is not a class of transformers (custom "
                                               "code, which clara never runs)")


def _items(content: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every JSON object in `content`, at any depth (iteratively: no recursion limit)."""
    stack = [content]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _is_transformers_class(name: str) -> bool:
    """Whether transformers defines `name`, reading it as transformers does (a dropped `Fast`
    suffix; an old `...FeatureExtractor` name meaning `...ImageProcessor`)."""
    global _TRANSFORMERS_NAMES
    if _TRANSFORMERS_NAMES is None:
        import transformers

        _TRANSFORMERS_NAMES = frozenset(dir(transformers))
    candidates = {name, name.removesuffix("Fast"), name.replace("FeatureExtractor", "ImageProcessor")}
    return any(candidate[:1].isupper() and candidate in _TRANSFORMERS_NAMES for candidate in candidates)
