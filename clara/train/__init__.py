"""Training: losses, samplers and the Accelerate loop (`train(cfg) -> TrainResult`).

The names below are imported on first use, so that `clara-train` (clara.train.cli) checks its
arguments and data folder before torch is imported: a typo fails in a second.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "train": "loop", "TrainResult": "loop", "TrainingError": "loop", "OutputDirError": "loop", "run_paths": "loop",
    "clara_loss": "losses", "focal_loss": "losses", "weighted_cross_entropy": "losses", "symmetric_kl": "losses",
    "class_weights": "losses", "build_sampler": "samplers", "NegativeMixup": "samplers",
}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
