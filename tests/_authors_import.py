"""Saves a checkpoint the way each CLARA notebook does, by running the notebook's own save statements.

tests/_authors.py builds the authors' models; this module finds the statement list holding each
notebook's `torch.save` (MVSA-Single cell 18; MVSA-Multiple's Trainer.train, cell 14, with the
save_path cell 16 passes; HFM's Trainer.train, cell 16) and execs it, from ../shared, in a
scratch folder, with the model's state dict (or its transformers-4 key names) and metric values
of the types the notebook has there (sklearn's numpy floats). Nothing of the notebooks is copied.
"""
from __future__ import annotations

import ast
import contextlib
import itertools
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import _authors as authors

SAVE_CELL = {"mvsa_single": 18, "mvsa_multiple": 14, "hfm": 16}
TRAINER_CALL_CELL = {"mvsa_multiple": 16}  # where the Trainer is built with its save_path


def _is_call_to(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == name


def _save_statements(dataset: str) -> list[ast.stmt]:
    """The notebook's torch.save with what it needs from the same statement list: `os.makedirs`
    before it and assignments to `self.*` (HFM's `self.best_state = {...}`)."""
    cell = authors.notebook(dataset).cells[SAVE_CELL[dataset]]
    for node in ast.walk(ast.Module(body=cell, type_ignores=[])):
        for block in (getattr(node, "body", None), getattr(node, "orelse", None)):
            if isinstance(block, list) and any(_is_call_to(s, "torch.save") for s in block):
                save_at = next(i for i, s in enumerate(block) if _is_call_to(s, "torch.save"))
                return [s for s in block[:save_at + 1] if _is_call_to(s, "torch.save") or _is_call_to(s, "os.makedirs")
                        or (isinstance(s, ast.Assign) and all(ast.unparse(t).startswith("self.") for t in s.targets))]
    raise LookupError(f"{authors.NOTEBOOK_FILES[dataset]} cell {SAVE_CELL[dataset]}: no torch.save")


def _trainer_save_path(dataset: str) -> str:
    """The save_path keyword of the notebook's `Trainer(...)` call."""
    for node in ast.walk(ast.Module(body=authors.notebook(dataset).cells[TRAINER_CALL_CELL[dataset]], type_ignores=[])):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "Trainer":
            for keyword in node.keywords:
                if keyword.arg == "save_path":
                    return ast.literal_eval(keyword.value)
    raise LookupError(f"{authors.NOTEBOOK_FILES[dataset]}: no Trainer(save_path=...) call")


class _StateDictOf:
    """Stands in for the model at the save statement: `state_dict()` gives the chosen key names."""

    def __init__(self, state: Callable[[], dict[str, torch.Tensor]]):
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state())


def save_as_notebook(dataset: str, model: authors.AuthorsModel, folder: Path, transformers4: bool = False) -> Path:
    """Run the notebook's own save statements for `model` in `folder`; return the file they wrote.

    `transformers4`: the state dict carries the key names transformers 4.x gave (the notebooks' runs).
    """
    state = (lambda: authors.transformers4_state_dict(model)) if transformers4 else model.model.state_dict
    stand_in = _StateDictOf(state)
    numbers = (np.float64(0.5 + i / 64) for i in itertools.count())  # sklearn metrics and grid values
    namespace: dict[str, Any] = {**model.namespace, "model": stand_in, "CONFIG": model.config}
    if dataset == "hfm":  # the Trainer's attributes at the save (cell 16): cfg is CONFIG, history a dict of lists
        history = {"epoch": [1, 2], "train_loss": [0.9, 0.7], "val_acc": [np.float64(0.6), np.float64(0.7)],
                   "val_f1": [np.float64(0.5), np.float64(0.6)], "lr": [1e-4, 9e-5],
                   "best_val_f1_so_far": [np.float64(0.5), np.float64(0.6)]}
        namespace.update(self=types.SimpleNamespace(model=stand_in, cfg=model.config, best_f1=np.float64(0.6),
                                                    history=history), epoch=1)
    elif dataset == "mvsa_multiple":
        namespace.update(self=types.SimpleNamespace(model=stand_in, save_path=_trainer_save_path(dataset),
                                                    best_f1w=0.0, pat=3), va_f1w=np.float64(0.66))
    statements = _save_statements(dataset)
    for name in {n.id for s in statements for n in ast.walk(s) if isinstance(n, ast.Name)} - set(namespace):
        namespace[name] = next(numbers)  # MVSA-Single's metrics: best_val_f1, raw_acc, b_opt, tau_opt, ...
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(folder):
        authors.notebook(dataset).exec(statements, namespace)
    [written] = [p for p in folder.rglob("*.pt")]
    return written

