"""Evaluation: metrics, scoring a model or checkpoint, post-hoc calibration, result files."""
from clara.evaluate.metrics import SUMMARY_METRICS, compute_metrics, summary_metrics
from clara.evaluate.results import plot_confusion_matrix, plot_per_class, plot_training_curves, write_results
from clara.evaluate.scoring import (EvalResult, EvaluationError, calibration_report, default_calibration_metric,
                                    evaluate_checkpoint, evaluate_model, prediction_rows, score_split)

__all__ = ["SUMMARY_METRICS", "compute_metrics", "summary_metrics", "write_results", "plot_confusion_matrix",
           "plot_per_class", "plot_training_curves", "EvalResult", "EvaluationError", "calibration_report",
           "default_calibration_metric", "evaluate_checkpoint", "evaluate_model", "prediction_rows", "score_split"]
