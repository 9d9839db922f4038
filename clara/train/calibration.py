"""Post-hoc calibration variants of the CLARA notebooks (clara-reference.md §3), fitted on the
validation logits and applied unchanged to the test logits, reported beside raw.

Each variant moves the decision towards or away from one *target* class:
- `bias_temperature`: temperature scaling of all logits (T fitted on val by negative
  log-likelihood; it does not change the argmax) plus a bias on the target logit, chosen on
  val by grid search for the selection metric;
- `top2_flip`: predict the target class whenever it is among the top two and the top-2
  probability margin is below 0.03 (the published margin; nothing fitted);
- `affine`: the target logit becomes `scale * z + shift`, both chosen on val by grid search.

Target class: `neutral` for MVSA. HFM has no neutral class; there the target is the positive
class of the binary task (`sarcastic`), so the bias/affine variants become a tuned decision
threshold and the flip sends near-ties to "sarcastic". That keeps the report meaningful for
every dataset instead of "not applicable"; the target is named in every variant's params.

Grid ties are broken towards the identity (bias 0, scale 1, shift 0), so a variant equals raw
whenever nothing on val beats it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

NEUTRAL = "neutral"
TOP2_MARGIN = 0.03
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
BIASES = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.05), 4)
AFFINE_SCALES = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
AFFINE_SHIFTS = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.1), 4)
METRICS = ("accuracy", "f1_weighted", "f1_macro")
VARIANTS = ("bias_temperature", "top2_flip", "affine")


def target_class(labels: Sequence[str]) -> int:
    """Index of the class the variants adjust: neutral, else the last (positive) class."""
    return list(labels).index(NEUTRAL) if NEUTRAL in labels else len(labels) - 1


def scores(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, weighted F1 and macro F1 over all `n_classes` classes."""
    classes = list(range(n_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }


def _metric(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, metric: str) -> float:
    """One metric from the confusion matrix, in numpy: the grid searches score hundreds of
    candidates, for which sklearn's per-call checks dominate. Equal to sklearn's values (tested);
    the reported scores come from sklearn (`scores`)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if metric == "accuracy":
        return float(np.mean(y_true == y_pred))
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, -1)
    true_pos = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    denominator = support + confusion.sum(axis=0)  # 2TP + FP + FN
    f1 = np.divide(2 * true_pos, denominator, out=np.zeros(n_classes), where=denominator > 0)
    if metric == "f1_macro":
        return float(f1.mean())
    return float((f1 * support).sum() / max(support.sum(), 1))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y_true: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y_true)), y_true].mean())


# --------------------------------------------------------------------------- the variants

def apply_bias_temperature(logits: np.ndarray, target: int, temperature: float, bias: float) -> np.ndarray:
    """Logits / T with `bias` added to the target logit."""
    adjusted = np.asarray(logits, dtype=np.float64) / temperature
    adjusted[:, target] += bias
    return adjusted


def top2_flip_predictions(logits: np.ndarray, target: int, margin: float = TOP2_MARGIN) -> np.ndarray:
    """Argmax, except the target class wherever it is in the top two and p1 - p2 < margin."""
    probs = _softmax(np.asarray(logits, dtype=np.float64))
    order = np.argsort(-probs, axis=1, kind="stable")
    top1, top2 = order[:, 0], order[:, 1]
    rows = np.arange(len(probs))
    near_tie = probs[rows, top1] - probs[rows, top2] < margin
    flip = near_tie & ((top1 == target) | (top2 == target))
    return np.where(flip, target, top1)


def apply_affine(logits: np.ndarray, target: int, scale: float, shift: float) -> np.ndarray:
    """The target logit becomes scale * z + shift; the others are unchanged."""
    adjusted = np.array(logits, dtype=np.float64)
    adjusted[:, target] = scale * adjusted[:, target] + shift
    return adjusted


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood (grid, ties towards 1)."""
    losses = [(_nll(logits / t, y_true), abs(np.log(t)), float(t)) for t in TEMPERATURES]
    return min(losses)[2]


def _best(candidates: list[tuple[float, float, dict[str, float]]]) -> dict[str, float]:
    """Highest val score, then smallest distance from the identity."""
    return max(candidates, key=lambda c: (c[0], -c[1]))[2]


def fit_bias_temperature(logits: np.ndarray, y_true: np.ndarray, target: int, metric: str) -> dict[str, float]:
    n_classes = logits.shape[1]
    temperature = fit_temperature(logits, y_true)
    scaled = logits / temperature
    candidates = []
    for bias in BIASES:
        shifted = scaled.copy()
        shifted[:, target] += bias
        candidates.append((_metric(y_true, shifted.argmax(1), n_classes, metric), abs(float(bias)),
                           {"temperature": round(temperature, 6), "bias": float(bias)}))
    return _best(candidates)


def fit_affine(logits: np.ndarray, y_true: np.ndarray, target: int, metric: str) -> dict[str, float]:
    n_classes = logits.shape[1]
    candidates = []
    for scale in AFFINE_SCALES:
        for shift in AFFINE_SHIFTS:
            preds = apply_affine(logits, target, scale, shift).argmax(1)
            candidates.append((_metric(y_true, preds, n_classes, metric), abs(scale - 1.0) + abs(float(shift)),
                               {"scale": float(scale), "shift": float(shift)}))
    return _best(candidates)


def _predict(variant: str, logits: np.ndarray, target: int, params: dict[str, float]) -> np.ndarray:
    if variant == "raw":
        return logits.argmax(1)
    if variant == "bias_temperature":
        return apply_bias_temperature(logits, target, params["temperature"], params["bias"]).argmax(1)
    if variant == "top2_flip":
        return top2_flip_predictions(logits, target, params["margin"])
    if variant == "affine":
        return apply_affine(logits, target, params["scale"], params["shift"]).argmax(1)
    raise ValueError(f"unknown calibration variant {variant!r}")


def calibration_report(val_logits: Any, val_labels: Any, test_logits: Any, test_labels: Any,
                       labels: Sequence[str], metric: str = "f1_weighted") -> dict[str, dict[str, Any]]:
    """Fit the three variants on val, apply them to test.

    Returns `{"raw": {...}, "bias_temperature": {...}, "top2_flip": {...}, "affine": {...}}`, each
    `{"params", "accuracy", "f1_weighted", "f1_macro", "val": {metric: value}}` (test scores;
    params include the target class and, for raw, are empty).
    """
    val_logits = np.asarray(val_logits, dtype=np.float64)
    test_logits = np.asarray(test_logits, dtype=np.float64)
    val_true = np.asarray(val_labels, dtype=np.int64)
    test_true = np.asarray(test_labels, dtype=np.int64)
    n_classes = len(labels)
    for name, logits, truth in (("val", val_logits, val_true), ("test", test_logits, test_true)):
        if logits.ndim != 2 or logits.shape[1] != n_classes or len(logits) != len(truth) or not len(truth):
            raise ValueError(f"{name} logits of shape {logits.shape} do not fit {len(truth)} labels "
                             f"of {n_classes} classes")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    target = target_class(labels)

    fitted: dict[str, dict[str, Any]] = {
        "raw": {},
        "bias_temperature": fit_bias_temperature(val_logits, val_true, target, metric),
        "top2_flip": {"margin": TOP2_MARGIN},
        "affine": fit_affine(val_logits, val_true, target, metric),
    }
    report: dict[str, dict[str, Any]] = {}
    for variant, params in fitted.items():
        shown = dict(params, target=labels[target]) if params else {}
        val_score = _metric(val_true, _predict(variant, val_logits, target, params), n_classes, metric)
        report[variant] = {"params": shown,
                           **scores(test_true, _predict(variant, test_logits, target, params), n_classes),
                           "val": {metric: val_score}}
    return report
