"""Post-hoc calibration variants: fitted on val, applied to test, identity when nothing helps."""
from __future__ import annotations

import numpy as np
import pytest

from clara.train.calibration import (calibration_report, fit_temperature, target_class,
                                     top2_flip_predictions)

MVSA = ["positive", "neutral", "negative"]
HFM = ["not_sarcastic", "sarcastic"]


def under_confident_neutral(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose neutral column sits 1.5 too low: many neutral posts lose to a neighbour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    logits = 2.0 * np.eye(3)[labels] + rng.normal(0.0, 0.7, size=(n, 3))
    logits[:, 1] -= 1.5
    return logits, labels


def test_neutral_bias_fitted_on_val_fixes_an_under_confident_neutral_class():
    val_logits, val_labels = under_confident_neutral(600, seed=0)
    test_logits, test_labels = under_confident_neutral(600, seed=1)
    report = calibration_report(val_logits, val_labels, test_logits, test_labels, MVSA, metric="f1_weighted")

    assert set(report) == {"raw", "bias_temperature", "top2_flip", "affine"}
    raw, biased, affine = report["raw"], report["bias_temperature"], report["affine"]
    assert raw["params"] == {}
    assert biased["params"]["target"] == "neutral" and affine["params"]["target"] == "neutral"
    # The neutral logit needs about +1.5 (in units of the fitted temperature).
    shift = biased["params"]["bias"] * biased["params"]["temperature"]
    assert 0.9 < shift < 2.1
    assert biased["accuracy"] > raw["accuracy"] + 0.08
    assert biased["f1_weighted"] > raw["f1_weighted"] + 0.08
    assert affine["f1_weighted"] > raw["f1_weighted"] + 0.08
    assert biased["val"]["f1_weighted"] > raw["val"]["f1_weighted"]
    assert report["top2_flip"]["params"] == {"margin": 0.03, "target": "neutral"}
    for row in report.values():
        assert set(row) == {"params", "accuracy", "f1_weighted", "f1_macro", "val"}


def test_variants_stay_at_the_identity_when_val_is_already_perfect():
    labels = np.array([0, 1, 2] * 20)
    logits = 6.0 * np.eye(3)[labels]  # perfectly separated, no near ties
    report = calibration_report(logits, labels, logits, labels, MVSA, metric="accuracy")
    assert report["bias_temperature"]["params"]["bias"] == 0.0
    assert report["affine"]["params"] == {"scale": 1.0, "shift": 0.0, "target": "neutral"}
    for name in ("bias_temperature", "top2_flip", "affine"):
        assert report[name]["accuracy"] == report["raw"]["accuracy"] == 1.0


def test_top2_flip_sends_near_ties_with_neutral_to_neutral():
    logits = np.array([
        [1.00, 0.99, -5.0],  # positive vs neutral, margin ~0.002 -> neutral
        [1.00, -5.0, 0.99],  # near tie, but neutral is not in the top two -> positive
        [2.00, 1.00, 0.00],  # clear winner -> positive
        [0.50, 0.60, 0.40],  # neutral already on top -> neutral
    ])
    assert top2_flip_predictions(logits, target=1).tolist() == [1, 0, 0, 1]
    assert top2_flip_predictions(logits, target=1, margin=0.0).tolist() == [0, 0, 0, 1]


def test_hfm_adjusts_the_sarcastic_class():
    assert target_class(MVSA) == 1 and target_class(HFM) == 1
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=300)
    logits = 1.5 * np.eye(2)[labels] + rng.normal(0, 0.8, size=(300, 2))
    logits[:, 1] -= 1.0  # sarcasm under-predicted
    report = calibration_report(logits, labels, logits, labels, HFM, metric="f1_macro")
    assert report["bias_temperature"]["params"]["target"] == "sarcastic"
    assert report["bias_temperature"]["params"]["bias"] > 0
    assert report["bias_temperature"]["f1_macro"] > report["raw"]["f1_macro"]


def test_temperature_fit_recovers_an_over_confident_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(4000, 3))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    assert 2.6 < fit_temperature(3.0 * true_logits, labels) < 3.4


def test_shapes_that_do_not_fit_are_refused():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"val logits of shape \(4, 3\) do not fit 5 labels of 3 classes"):
        calibration_report(logits, [0] * 5, logits, [0] * 4, MVSA)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        calibration_report(logits, [0] * 4, logits, [0] * 4, MVSA, metric="auc")


def test_grid_search_metric_equals_sklearn():
    from clara.train.calibration import _metric, scores

    rng = np.random.default_rng(5)
    for n_classes in (2, 3):
        y_true = rng.integers(0, n_classes, size=200)
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes, size=200))
        y_pred[y_pred == n_classes - 1] = 0  # one class never predicted
        reference = scores(y_true, y_pred, n_classes)
        for metric in ("accuracy", "f1_weighted", "f1_macro"):
            assert _metric(y_true, y_pred, n_classes, metric) == pytest.approx(reference[metric], abs=1e-12)
