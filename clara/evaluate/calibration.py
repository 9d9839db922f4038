"""Post-hoc calibration: the CLARA notebooks' three variants, and our temperature scaling.

Notebook variants (MVSA-Single / HFM cell 18, MVSA-Multiple cells 22-23), fitted on val and
applied to test, each moving the *target* logit (index 1 in every notebook: neutral for MVSA,
sarcastic for HFM): `bias_temperature` z / tau + b, `top2_flip` (the target wherever it is in the
top two and p1 - p2 < 0.03), `affine` w * z + b. Grids and metric: each notebook's
(clara.datasets.CalibrationGrids); the first best grid point in their loop order wins, on float32.
`temperature_scaling` (ours): one NLL-fitted temperature for all logits; it changes no
prediction, so `reliability_report` gives its ECE and reliability bins beside the raw ones.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from clara.datasets import REGISTRY, CalibrationGrids, spec_for_labels

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))  # temperature_scaling's NLL grid
ECE_BINS = 15
METRICS = ("accuracy", "f1_weighted", "f1_macro")
VARIANTS = ("bias_temperature", "top2_flip", "affine")


def calibration_grids(labels: Sequence[str], dataset: str | None = None) -> CalibrationGrids:
    """The notebook grids of `dataset` (else of the first dataset with these labels; else the defaults)."""
    spec = REGISTRY[dataset] if dataset is not None else spec_for_labels(labels)
    return spec.calibration if spec is not None else CalibrationGrids()


def target_class(labels: Sequence[str], dataset: str | None = None) -> int:
    """Index of the class the variants adjust: the dataset's calibration target, else the last class."""
    spec = REGISTRY[dataset] if dataset is not None else spec_for_labels(labels)
    return list(labels).index(spec.calibration_target) if spec else len(labels) - 1


def scores(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, weighted F1 and macro F1 over all `n_classes` classes (the reported scores)."""
    classes = list(range(n_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }


def _metric(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, metric: str) -> float:
    """The grid searches' score, in numpy (sklearn's per-call checks dominate hundreds of calls).

    Equal to the notebooks' `f1_score(y_true, pred, average=...)` (tested): F1 averaged over the
    classes that occur in y_true or y_pred, as sklearn does without `labels`.
    """
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
        return float(f1[denominator > 0].mean())
    return float((f1 * support).sum() / max(support.sum(), 1))


def _grid(spec: tuple[float, float, int]) -> np.ndarray:
    start, stop, num = spec
    return np.linspace(start, stop, int(num))


def _float32(logits: Any) -> np.ndarray:
    return np.asarray(logits, dtype=np.float32)


# --------------------------------------------------------------------------- the notebooks' variants

def apply_bias_temperature(logits: np.ndarray, target: int, temperature: float, bias: float) -> np.ndarray:
    """The target logit divided by `temperature` (as a float32 scale), then `bias` added."""
    logits = _float32(logits)
    scale = np.ones(logits.shape[1], dtype=np.float32)
    scale[target] = 1.0 / max(1e-6, float(temperature))
    adjusted = logits * scale[None, :]
    adjusted[:, target] += float(bias)
    return adjusted


def top2_flip_predictions(logits: np.ndarray, target: int, margin: float = 0.03) -> np.ndarray:
    """Argmax, except the target class wherever it is in the top two and p1 - p2 < margin
    (probabilities: torch's float32 softmax, as the models' `probs`)."""
    probs = torch.softmax(torch.from_numpy(_float32(logits)), dim=-1).numpy()
    top2 = np.argsort(-probs, axis=1)[:, :2]
    rows = np.arange(len(probs))
    near_tie = probs[rows, top2[:, 0]] - probs[rows, top2[:, 1]] < margin
    return np.where(near_tie & (top2 == target).any(axis=1), target, top2[:, 0])


def apply_affine(logits: np.ndarray, target: int, scale: float, shift: float) -> np.ndarray:
    """The target logit becomes scale * z + shift; the others are unchanged."""
    adjusted = _float32(logits).copy()
    adjusted[:, target] = float(scale) * adjusted[:, target] + float(shift)
    return adjusted


def fit_bias_temperature(logits: np.ndarray, y_true: np.ndarray, target: int, grids: CalibrationGrids,
                         metric: str) -> dict[str, float]:
    """(bias, temperature) maximising `metric` on val; the first best in bias-outer order wins."""
    best, params = -1.0, {"bias": 0.0, "temperature": 1.0}
    for bias in _grid(grids.bias):
        for temperature in _grid(grids.temperature):
            value = _metric(y_true, apply_bias_temperature(logits, target, temperature, bias).argmax(1),
                            logits.shape[1], metric)
            if value > best:
                best, params = value, {"bias": float(bias), "temperature": float(temperature)}
    return params


def fit_affine(logits: np.ndarray, y_true: np.ndarray, target: int, grids: CalibrationGrids,
               metric: str) -> dict[str, float]:
    """(scale, shift) maximising `metric` on val; the first best in scale-outer order wins."""
    best, params = -1.0, {"scale": 1.0, "shift": 0.0}
    for scale in _grid(grids.affine_scale):
        for shift in _grid(grids.affine_shift):
            value = _metric(y_true, apply_affine(logits, target, scale, shift).argmax(1), logits.shape[1], metric)
            if value > best:
                best, params = value, {"scale": float(scale), "shift": float(shift)}
    return params


def variant_predictions(variant: str, logits: np.ndarray, target: int, params: Mapping[str, float]) -> np.ndarray:
    """The predictions of one fitted variant ("raw" included) on `logits`."""
    if variant == "raw":
        return _float32(logits).argmax(1)
    if variant == "bias_temperature":
        return apply_bias_temperature(logits, target, params["temperature"], params["bias"]).argmax(1)
    if variant == "top2_flip":
        return top2_flip_predictions(logits, target, params["margin"])
    if variant == "affine":
        return apply_affine(logits, target, params["scale"], params["shift"]).argmax(1)
    raise ValueError(f"unknown calibration variant {variant!r}")


def _check(name: str, logits: np.ndarray, truth: np.ndarray, n_classes: int) -> None:
    if logits.ndim != 2 or logits.shape[1] != n_classes or len(logits) != len(truth) or not len(truth):
        raise ValueError(f"{name} logits of shape {logits.shape} do not fit {len(truth)} labels of {n_classes} classes")


def calibration_report(val_logits: Any, val_labels: Any, test_logits: Any, test_labels: Any,
                       labels: Sequence[str], metric: str | None = None,
                       dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """Fit the notebook variants on val (grids and, unless `metric` is given, the metric of
    `dataset`'s notebook; see `calibration_grids`), apply them to test.

    Returns `{"raw", "bias_temperature", "top2_flip", "affine"}`, each `{"params", "accuracy",
    "f1_weighted", "f1_macro", "val": {metric: value}}` (test scores; params name the target
    class and, for raw, are empty).
    """
    val_logits, test_logits = _float32(val_logits), _float32(test_logits)
    val_true = np.asarray(val_labels, dtype=np.int64)
    test_true = np.asarray(test_labels, dtype=np.int64)
    n_classes = len(labels)
    _check("val", val_logits, val_true, n_classes)
    _check("test", test_logits, test_true, n_classes)
    grids = calibration_grids(labels, dataset)
    metric = metric or grids.metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    target = target_class(labels, dataset)

    fitted: dict[str, dict[str, Any]] = {
        "raw": {},
        "bias_temperature": fit_bias_temperature(val_logits, val_true, target, grids, metric),
        "top2_flip": {"margin": grids.top2_margin},
        "affine": fit_affine(val_logits, val_true, target, grids, metric),
    }
    report: dict[str, dict[str, Any]] = {}
    for variant, params in fitted.items():
        val_score = _metric(val_true, variant_predictions(variant, val_logits, target, params), n_classes, metric)
        report[variant] = {"params": dict(params, target=labels[target]) if params else {},
                           **scores(test_true, variant_predictions(variant, test_logits, target, params), n_classes),
                           "val": {metric: val_score}}
    return report


# --------------------------------------------------------------------------- logit bias (MVSA-Multiple cell 18)

def apply_logit_bias(logits: Any, labels: Sequence[str], bias: Mapping[str, float]) -> np.ndarray:
    """Logits plus a fixed offset per named label (float32, as the notebook's `lg_f + bias`)."""
    offsets = np.zeros(len(labels), dtype=np.float32)
    for name, value in bias.items():
        offsets[list(labels).index(name)] = value
    return _float32(logits) + offsets[None, :]


# --------------------------------------------------------------------------- temperature scaling and ECE

def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y_true: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y_true)), y_true].mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """temperature_scaling: the temperature minimising the negative log-likelihood (grid, ties towards 1)."""
    logits = np.asarray(logits, dtype=np.float64)
    losses = [(_nll(logits / t, y_true), abs(np.log(t)), float(t)) for t in TEMPERATURES]
    return min(losses)[2]


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins.

    Confidence = the top probability; bin k holds confidences in (k/n, (k+1)/n] (the first also 0).
    ECE = sum over bins of count/N * |accuracy - mean confidence|. Each bin: lower, upper,
    confidence and accuracy (None when empty), count.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(confidence) * abs(accuracy - mean_confidence)
        bins.append({"lower": k / n_bins, "upper": (k + 1) / n_bins, "confidence": mean_confidence,
                     "accuracy": accuracy, "count": count})
    return {"ece": float(ece), "bins": bins}


def reliability_report(val_logits: Any, val_labels: Any, test_logits: Any, test_labels: Any,
                       n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Test ECE and reliability bins of the raw probabilities and after temperature_scaling
    (temperature fitted on val): `{"n_bins", "raw": {"ece", "bins"}, "temperature_scaling":
    {"temperature", "ece", "bins"}}`."""
    test_logits = np.asarray(test_logits, dtype=np.float64)
    test_true = np.asarray(test_labels, dtype=np.int64)
    temperature = fit_temperature(val_logits, np.asarray(val_labels, dtype=np.int64))
    return {"n_bins": n_bins,
            "raw": reliability_bins(_softmax(test_logits), test_true, n_bins),
            "temperature_scaling": {"temperature": round(temperature, 6),
                                    **reliability_bins(_softmax(test_logits / temperature), test_true, n_bins)}}
