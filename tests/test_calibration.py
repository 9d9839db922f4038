"""Post-hoc calibration: the notebooks' variants on their grids (fitted on val, applied to test),
the fixed logit bias, and temperature scaling's ECE / reliability bins. Equality with the
authors' own functions on the same logits: tests/test_fidelity_eval.py."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from clara.datasets import REGISTRY
from clara.evaluate.calibration import (ECE_BINS, apply_affine, apply_bias_temperature, apply_logit_bias,
                                        calibration_grids, calibration_report, fit_temperature, reliability_bins,
                                        reliability_report, target_class, top2_flip_predictions)

MVSA = ["positive", "neutral", "negative"]
HFM = ["not_sarcastic", "sarcastic"]


def under_confident_neutral(n: int, seed: int, drop: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose neutral column sits `drop` too low: many neutral posts lose to a neighbour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    logits = 2.0 * np.eye(3)[labels] + rng.normal(0.0, 0.7, size=(n, 3))
    logits[:, 1] -= drop
    return logits, labels


def on_grid(value: float, spec: tuple[float, float, int]) -> bool:
    return any(value == float(point) for point in np.linspace(*spec))


def test_neutral_bias_fitted_on_val_fixes_an_under_confident_neutral_class():
    val_logits, val_labels = under_confident_neutral(600, seed=0)
    test_logits, test_labels = under_confident_neutral(600, seed=1)
    report = calibration_report(val_logits, val_labels, test_logits, test_labels, MVSA, dataset="mvsa_single")

    assert set(report) == {"raw", "bias_temperature", "top2_flip", "affine"}
    raw, biased, affine = report["raw"], report["bias_temperature"], report["affine"]
    assert raw["params"] == {}
    assert biased["params"]["target"] == "neutral" and affine["params"]["target"] == "neutral"
    # +1.5 is out of the notebook's reach: its bias grid ends at +0.6, where the search settles.
    grids = REGISTRY["mvsa_single"].calibration
    assert biased["params"]["bias"] == 0.6 and on_grid(biased["params"]["temperature"], grids.temperature)
    assert on_grid(affine["params"]["scale"], grids.affine_scale) and affine["params"]["shift"] == 0.6
    assert biased["accuracy"] > raw["accuracy"] + 0.05
    assert biased["f1_weighted"] > raw["f1_weighted"] + 0.05
    assert affine["f1_weighted"] > raw["f1_weighted"] + 0.05
    assert biased["val"]["f1_weighted"] > raw["val"]["f1_weighted"]  # MVSA-Single maximises weighted F1
    assert report["top2_flip"]["params"] == {"margin": 0.03, "target": "neutral"}
    for row in report.values():
        assert set(row) == {"params", "accuracy", "f1_weighted", "f1_macro", "val"}


def test_temperature_scales_the_target_logit_only():
    logits = np.array([[2.0, 1.0, -1.0]], dtype=np.float32)
    assert apply_bias_temperature(logits, 1, 0.5, 0.25).tolist() == [[2.0, 2.25, -1.0]]
    assert apply_affine(logits, 1, 2.0, -0.5).tolist() == [[2.0, 1.5, -1.0]]


def test_ties_keep_the_first_grid_point_as_the_notebooks():
    """Strict > in bias-outer / scale-outer loop order: when every point is as good, the first."""
    labels = np.array([0, 1, 2] * 20)
    logits = 6.0 * np.eye(3)[labels]  # perfectly separated, no near ties
    report = calibration_report(logits, labels, logits, labels, MVSA, metric="accuracy", dataset="mvsa_single")
    assert report["bias_temperature"]["params"] == {"bias": -0.6, "temperature": 0.8, "target": "neutral"}
    assert report["affine"]["params"] == {"scale": 0.8, "shift": -0.6, "target": "neutral"}
    for name in ("bias_temperature", "top2_flip", "affine"):
        assert report[name]["accuracy"] == report["raw"]["accuracy"] == 1.0


def test_mvsa_multiple_searches_its_own_grids_for_macro_f1():
    val_logits, val_labels = under_confident_neutral(300, seed=2, drop=0.8)
    report = calibration_report(val_logits, val_labels, val_logits, val_labels, MVSA, dataset="mvsa_multiple")
    grids = calibration_grids(MVSA, "mvsa_multiple")
    assert (grids.bias, grids.temperature, grids.affine_scale, grids.metric) == (
        (-1.0, 1.0, 9), (0.7, 1.5, 9), (0.5, 1.5, 9), "f1_macro")
    assert set(report["bias_temperature"]["val"]) == {"f1_macro"}
    assert on_grid(report["bias_temperature"]["params"]["bias"], grids.bias)
    assert on_grid(report["bias_temperature"]["params"]["temperature"], grids.temperature)
    assert on_grid(report["affine"]["params"]["scale"], grids.affine_scale)
    assert report["bias_temperature"]["f1_macro"] > report["raw"]["f1_macro"]
    # Without a dataset, MVSA labels get the first registry entry with them: MVSA-Single's grids.
    assert calibration_grids(MVSA) == REGISTRY["mvsa_single"].calibration


def test_top2_flip_sends_near_ties_with_neutral_to_neutral():
    logits = np.array([
        [1.00, 0.99, -5.0],  # positive vs neutral, margin ~0.002 -> neutral
        [1.00, -5.0, 0.99],  # near tie, but neutral is not in the top two -> positive
        [2.00, 1.00, 0.00],  # clear winner -> positive
        [0.50, 0.60, 0.40],  # neutral already on top -> neutral
    ])
    assert top2_flip_predictions(logits, target=1).tolist() == [1, 0, 0, 1]
    assert top2_flip_predictions(logits, target=1, margin=0.0).tolist() == [0, 0, 0, 1]


def test_hfm_adjusts_the_sarcastic_class_for_macro_f1():
    assert target_class(MVSA) == 1 and target_class(HFM) == 1  # index 1, as every notebook's "neutral"
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=300)
    logits = 1.5 * np.eye(2)[labels] + rng.normal(0, 0.8, size=(300, 2))
    logits[:, 1] -= 0.5  # sarcasm under-predicted
    report = calibration_report(logits, labels, logits, labels, HFM)
    assert report["bias_temperature"]["params"]["target"] == "sarcastic"
    assert report["bias_temperature"]["params"]["bias"] > 0
    assert set(report["bias_temperature"]["val"]) == {"f1_macro"}
    assert report["bias_temperature"]["f1_macro"] > report["raw"]["f1_macro"]


def test_a_fixed_logit_bias_is_added_to_the_named_class():
    logits = np.array([[1.0, 0.5, 0.6], [0.0, 2.0, 1.0]], dtype=np.float32)
    biased = apply_logit_bias(logits, MVSA, {"negative": 0.6})
    assert biased.dtype == np.float32 and np.allclose(biased, [[1.0, 0.5, 1.2], [0.0, 2.0, 1.6]])
    assert biased.argmax(1).tolist() == [2, 1]


def test_temperature_fit_recovers_an_over_confident_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(4000, 3))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    assert 2.6 < fit_temperature(3.0 * true_logits, labels) < 3.4

    report = reliability_report(3.0 * true_logits[:2000], labels[:2000], 3.0 * true_logits[2000:], labels[2000:])
    assert report["n_bins"] == ECE_BINS == 15
    assert 2.6 < report["temperature_scaling"]["temperature"] < 3.4
    # Over-confident logits: ECE about 0.19 raw, about 0.02 after temperature scaling.
    assert report["raw"]["ece"] > 0.15 and report["temperature_scaling"]["ece"] < 0.05
    for reading in (report["raw"], report["temperature_scaling"]):
        assert len(reading["bins"]) == 15 and sum(b["count"] for b in reading["bins"]) == 2000


def test_reliability_bins_of_a_hand_made_example():
    # Confidences 0.9, 0.9 (one right), 0.6 (right), 0.5 (wrong) over 10 bins.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
    y_true = np.array([0, 0, 0, 1])
    result = reliability_bins(probs, y_true, n_bins=10)
    by_upper = {round(b["upper"], 1): b for b in result["bins"] if b["count"]}
    assert set(by_upper) == {0.5, 0.6, 0.9}
    assert by_upper[0.9] == pytest.approx({"lower": 0.8, "upper": 0.9, "confidence": 0.9, "accuracy": 0.5, "count": 2})
    assert by_upper[0.5]["accuracy"] == 0.0 and by_upper[0.6]["accuracy"] == 1.0
    # ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.6| + 1/4 |0 - 0.5|
    assert result["ece"] == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.5)
    empty = [b for b in result["bins"] if not b["count"]]
    assert all(b["confidence"] is None and b["accuracy"] is None for b in empty)


def test_shapes_that_do_not_fit_are_refused():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"val logits of shape \(4, 3\) do not fit 5 labels of 3 classes"):
        calibration_report(logits, [0] * 5, logits, [0] * 4, MVSA)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        calibration_report(logits, [0] * 4, logits, [0] * 4, MVSA, metric="auc")


def test_grid_search_metric_equals_sklearn():
    from clara.evaluate.calibration import _metric, scores

    rng = np.random.default_rng(5)
    for n_classes in (2, 3):
        y_true = rng.integers(0, n_classes, size=200)
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes, size=200))
        y_pred[y_pred == n_classes - 1] = 0  # one class never predicted
        reference = scores(y_true, y_pred, n_classes)
        for metric in ("accuracy", "f1_weighted", "f1_macro"):
            assert _metric(y_true, y_pred, n_classes, metric) == pytest.approx(reference[metric], abs=1e-12)
    # A class in neither y_true nor y_pred is left out of the mean, as the notebooks' f1_score(...).
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    for average in ("macro", "weighted"):
        assert _metric(y_true, y_pred, 3, f"f1_{average}") == pytest.approx(f1_score(y_true, y_pred, average=average))
