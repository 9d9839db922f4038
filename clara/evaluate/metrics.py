"""Metrics of one split: accuracy, weighted/macro F1, per-class scores and the confusion matrix."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clara.datasets import CLASS_F1_METRICS, spec_for_labels

SUMMARY_METRICS = ("accuracy", "f1_weighted", "f1_macro")


def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted/macro F1, per-class precision/recall/F1/support, confusion matrix.

    Every class in `labels` is reported (a class absent from both y_true and y_pred gets zeros).
    For a dataset's `f1_classes` (HFM: sarcastic), `f1_<class>` is that class's binary F1.
    """
    # Here, not at the top: SUMMARY_METRICS' readers (the dashboard's Home) need no scikit-learn.
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-d and of equal length")
    if not len(y_true):
        raise ValueError("cannot compute metrics of an empty split")
    classes = list(range(len(labels)))
    out_of_range = sorted({int(v) for v in np.concatenate([y_true, y_pred]) if not 0 <= v < len(labels)})
    if out_of_range:
        raise ValueError(f"class indices {out_of_range} are outside the {len(labels)} labels {list(labels)}")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                     zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }
    spec = spec_for_labels(labels)
    for name in spec.f1_classes if spec else ():
        metrics[f"f1_{name}"] = float(f1_score(y_true, y_pred, labels=classes, pos_label=list(labels).index(name),
                                               average="binary", zero_division=0))
    metrics["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                   "f1": float(f1[i]), "support": int(support[i])}
                            for i, name in enumerate(labels)}
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
    metrics["labels"] = list(labels)
    metrics["n"] = int(len(y_true))
    return metrics


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """accuracy, f1_weighted, f1_macro (and a dataset's f1_<class> when present) of a compute_metrics dict."""
    keys = (*SUMMARY_METRICS, *CLASS_F1_METRICS)
    return {key: metrics[key] for key in keys if key in metrics}
