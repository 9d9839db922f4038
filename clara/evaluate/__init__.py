"""Evaluation: metrics, scoring a model or checkpoint, post-hoc calibration, result files.
`scoring` (PyTorch) is imported on first use, so reading result files and metric names does not import it."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clara.evaluate.metrics import SUMMARY_METRICS, compute_metrics, summary_metrics
from clara.evaluate.results import plot_confusion_matrix, plot_per_class, plot_training_curves, write_results

if TYPE_CHECKING:
    from clara.evaluate.scoring import (EvalResult, EvaluationError, calibration_report, default_calibration_metric,
                                        evaluate_checkpoint, evaluate_model, prediction_rows, score_split)

_SCORING = {"EvalResult", "EvaluationError", "calibration_report", "default_calibration_metric", "evaluate_checkpoint",
            "evaluate_model", "prediction_rows", "score_split"}  # defined in clara.evaluate.scoring

__all__ = ["SUMMARY_METRICS", "compute_metrics", "summary_metrics", "write_results", "plot_confusion_matrix",
           "plot_per_class", "plot_training_curves", "EvalResult", "EvaluationError", "calibration_report",
           "default_calibration_metric", "evaluate_checkpoint", "evaluate_model", "prediction_rows", "score_split"]


def __getattr__(name: str) -> Any:
    if name not in _SCORING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("clara.evaluate.scoring"), name)
