"""Runs the CLARA authors' own data loading and splitting (../shared/reference/clara-notebooks/).

Nothing is copied: the notebook cell that defines the loader class (`MVSALoader`, `HFMLoader`) is
parsed with `ast` and exec'd (whole, or its classes only) with the notebook's own CONFIG (its
paths pointed at a test folder) and its standard-library imports. `random` there is a private
`random.Random`, so the notebook's `random.seed` leaves the global generator alone. No torch is
imported. Tests that use it skip when ../shared is absent.
"""
from __future__ import annotations

import ast
import contextlib
import io
import random
import sys
import types
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT.parent / "shared" / "reference" / "clara-notebooks"
NOTEBOOK_FILES = {"mvsa_single": "CLARA_MVSA_Single.py", "mvsa_multiple": "CLARA_MVSA_Multi.py",
                  "hfm": "CLARA_HFM.py"}
LOADER_CLASS = {"mvsa_single": "MVSALoader", "mvsa_multiple": "MVSALoader", "hfm": "HFMLoader"}
# The names the data cell leaves its splits in, and the sample attribute holding the label.
SPLIT_NAMES = {"train": "train_samples", "val": "val_samples", "test": "test_samples"}
LABEL_ATTRIBUTE = {"mvsa_single": "label", "mvsa_multiple": "combined_majority", "hfm": "label"}

requires_notebooks = pytest.mark.skipif(
    not all((NOTEBOOK_DIR / name).is_file() for name in NOTEBOOK_FILES.values()),
    reason=f"the authors' notebooks are not at {NOTEBOOK_DIR} (../shared/reference/clara-notebooks "
           "beside the repository); the split fidelity tests run their loading code")

_CELL_MARK = "# ===== CELL "


def _cells(source: str) -> dict[int, list[ast.stmt]]:
    """Top-level statements per code cell (cells as marked in the notebook's .py)."""
    starts = [number for number, line in enumerate(source.splitlines(), 1) if line.startswith(_CELL_MARK)]
    cells: dict[int, list[ast.stmt]] = {}
    for node in ast.parse(source).body:
        cell = max((start for start in starts if start <= node.lineno), default=0)
        cells.setdefault(cell, []).append(node)
    return cells


def _stdlib_imports(source: str) -> list[ast.stmt]:
    """The notebook's top-level imports of standard-library modules (torch, PIL and the rest are left out)."""
    chosen = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names = [alias for alias in node.names if alias.name.split(".")[0] in sys.stdlib_module_names]
            if names:
                chosen.append(ast.Import(names=names))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in sys.stdlib_module_names:
            chosen.append(node)
    return [ast.fix_missing_locations(node) for node in chosen]


def _exec(nodes: list[ast.stmt], path: Path, namespace: dict[str, Any]) -> None:
    # Compiled under the notebook's file name, so a traceback points at the authors' line.
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102


def notebook_config(dataset: str) -> dict[str, Any]:
    """The notebook's CONFIG literal."""
    source = (NOTEBOOK_DIR / NOTEBOOK_FILES[dataset]).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CONFIG" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{NOTEBOOK_FILES[dataset]} has no CONFIG = {{...}}")


def notebook_data_cell(dataset: str, paths: dict[str, str] | None = None) -> dict[str, Any]:
    """Exec the notebook's data cell; return its namespace. With `paths` (CONFIG keys such as
    text_dir and label_file) the whole cell runs, loader calls included; without, only its
    class definitions."""
    path = NOTEBOOK_DIR / NOTEBOOK_FILES[dataset]
    source = path.read_text(encoding="utf-8")
    loader = LOADER_CLASS[dataset]
    cell = next(nodes for nodes in _cells(source).values()
                if any(isinstance(n, ast.ClassDef) and n.name == loader for n in nodes))
    if paths is None:
        cell = [node for node in cell if isinstance(node, ast.ClassDef)]
    # A registered module to exec in: @dataclass looks its class's module up in sys.modules.
    module = types.ModuleType(f"authors_data_{dataset}")
    namespace = module.__dict__
    sys.modules[module.__name__] = module
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _exec(_stdlib_imports(source), path, namespace)
            namespace["random"] = random.Random()  # the notebook's random.seed / random.shuffle, privately
            namespace["CONFIG"] = {**notebook_config(dataset), **(paths or {})}
            _exec(cell, path, namespace)
    finally:
        del sys.modules[module.__name__]
    return namespace


def run_notebook_data_cell(dataset: str, paths: dict[str, str]) -> dict[str, list[tuple[str, Any]]]:
    """Run the notebook's data cell on `paths`; return {split: [(id, label), ...]} in the order
    the notebook's lists hold them."""
    namespace = notebook_data_cell(dataset, paths)
    attribute = LABEL_ATTRIBUTE[dataset]
    return {split: [(sample.image_id, getattr(sample, attribute)) for sample in namespace[name]]
            for split, name in SPLIT_NAMES.items()}
