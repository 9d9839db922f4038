"""Losses: weighted/smoothed CE, per-class focal loss, KL terms and the combined CLARA loss.

tests/test_fidelity_training.py checks the same functions against the authors' notebook code;
these tests pin them by hand on small cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from clara.config import get_preset
from clara.model import CLARAOutput
from clara.train.losses import (class_weights, clara_loss, consistency, focal_loss, kl_divergence, symmetric_kl,
                                weighted_cross_entropy)


def logits(batch=6, classes=3, seed=0):
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed)) * 2


def output(final, pred, verify):
    return CLARAOutput(logits=final, pred_logits=pred, verify_logits=verify, probs=final.softmax(-1),
                       uncertainty=torch.zeros(final.shape[0]), attentions=None)


def test_class_weights_inverse_frequency_count_boosted_and_none():
    labels = ["positive", "neutral", "negative"]
    assert class_weights([6, 3, 1], labels).tolist() == pytest.approx([10 / 6, 10 / 3, 10.0])
    assert class_weights([6, 3, 1], labels, {"negative": 12.0}).tolist() == pytest.approx([10 / 6, 10 / 3, 120.0])
    # An absent class counts as 1, as in the notebooks (N = 11 here): never N / 0.
    assert class_weights([5, 0, 5], labels).tolist() == pytest.approx([2.2, 11.0, 2.2])
    # MVSA-Multiple: the boost multiplies the negatives' count, then N' / (C n'): [6, 3, 12], N' = 21.
    assert class_weights([6, 3, 1], labels, {"negative": 12.0}, "count_boosted").tolist() == pytest.approx(
        [21 / 18, 21 / 9, 21 / 36])
    assert class_weights([6, 3, 1], labels, {"negative": 12.0}, "none") is None
    with pytest.raises(ValueError, match="unknown label 'angry'"):
        class_weights([1, 1, 1], labels, {"angry": 2.0})
    with pytest.raises(ValueError, match="unknown class weight scheme 'balanced'"):
        class_weights([1, 1, 1], labels, scheme="balanced")


def test_weighted_cross_entropy_equals_torch_for_hard_labels():
    x, y = logits(), torch.tensor([0, 1, 2, 2, 0, 1])
    w = torch.tensor([1.5, 3.0, 0.7])
    expected = F.cross_entropy(x, y, weight=w, label_smoothing=0.05)
    assert float(weighted_cross_entropy(x, y, w, 0.05)) == pytest.approx(float(expected), rel=1e-6)
    # one-hot distributions are the same targets
    assert float(weighted_cross_entropy(x, F.one_hot(y, 3).float(), w, 0.05)) == pytest.approx(float(expected), rel=1e-6)


def test_weighted_cross_entropy_of_a_soft_target_by_hand():
    # uniform prediction: every -log p_c is log 3; target half class 0, half class 2, no smoothing
    x = torch.zeros(1, 3)
    target = torch.tensor([[0.5, 0.0, 0.5]])
    w = torch.tensor([1.0, 1.0, 3.0])
    # sum_c w_c t_c log3 / sum_c w_c t_c = log 3
    assert float(weighted_cross_entropy(x, target, w)) == pytest.approx(math.log(3))
    # with smoothing 0.3: t' = [0.45, 0.1, 0.45]; numerator (0.45 + 0.1 + 1.35) log 3, denominator 2
    assert float(weighted_cross_entropy(x, target, w, 0.3)) == pytest.approx(1.9 * math.log(3) / 2.0)


def test_focal_loss_by_hand_with_a_gamma_per_class():
    x = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # p = [0.6, 0.2, 0.2]
    gammas = (1.0, 2.0, 4.0)
    assert float(focal_loss(x, torch.tensor([0]), gammas)) == pytest.approx(0.4 ** 1 * -math.log(0.6))
    assert float(focal_loss(x, torch.tensor([2]), gammas)) == pytest.approx(0.8 ** 4 * math.log(5.0))
    # batch of both, class weights 1 and 3: the weight scales each sample, then a plain mean
    both = focal_loss(x.repeat(2, 1), torch.tensor([0, 2]), gammas, torch.tensor([1.0, 1.0, 3.0]))
    expected = (0.4 * -math.log(0.6) + 3 * 0.8 ** 4 * math.log(5.0)) / 2
    assert float(both) == pytest.approx(expected)
    # smoothing 0.1: 0.9 on the true class, 0.05 on each other one
    smoothed = focal_loss(x, torch.tensor([0]), gammas, label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(0.4 * -(0.9 * math.log(0.6) + 0.1 * math.log(0.2)))


def test_focal_loss_with_zero_gammas_is_a_class_weighted_cross_entropy_with_a_plain_mean():
    x, y, w = logits(seed=1), torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([1.0, 2.0, 12.0])
    assert float(focal_loss(x, y, (0.0, 0.0, 0.0), w)) == pytest.approx(
        float((w[y] * F.cross_entropy(x, y, reduction="none")).mean()), rel=1e-6)
    # smoothing eps / (C - 1) on the other classes equals torch's eps' / C with eps' = eps * C / (C - 1)
    per_sample = F.cross_entropy(x, y, reduction="none", label_smoothing=0.02 * 3 / 2)
    assert float(focal_loss(x, y, (0.0, 0.0, 0.0), w, 0.02)) == pytest.approx(
        float((w[y] * per_sample).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="one gamma per class"):
        focal_loss(x, y, (1.0, 2.0))


def test_kl_terms():
    a, b = logits(seed=2), logits(seed=3)
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean()
    assert float(kl_divergence(a, b)) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(symmetric_kl(a, b)) == pytest.approx(float(symmetric_kl(b, a)), rel=1e-6)
    assert float(symmetric_kl(a, b)) == pytest.approx(0.5 * float(kl_divergence(a, b) + kl_divergence(b, a)), rel=1e-6)
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-6)
    # MVSA-Multiple's consistency: the full sum (not halved), logs taken of p + 1e-8
    assert float(consistency(a, b)) == pytest.approx(float(kl_divergence(a, b) + kl_divergence(b, a)), rel=1e-5)


def test_clara_loss_mvsa_single_terms_and_weights():
    cfg = get_preset("mvsa_single").train
    final, pred, verify = logits(seed=4), logits(seed=5), logits(seed=6)
    y, w = torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([1.0, 3.0, 2.0])
    total, parts = clara_loss(output(final, pred, verify), y, w, cfg)
    assert set(parts) == {"loss", "final", "verify", "kl", "sym_kl"}  # aux_weight 0: no L(pred)
    assert float(parts["final"]) == pytest.approx(float(F.cross_entropy(final, y, weight=w, label_smoothing=0.05)), rel=1e-6)
    assert float(parts["verify"]) == pytest.approx(float(F.cross_entropy(verify, y, weight=w, label_smoothing=0.05)), rel=1e-6)
    # F.kl_div(log_softmax(final), softmax(verify)) as the notebook writes it: KL(verify || final)
    notebook_kl = F.kl_div(F.log_softmax(final, -1), F.softmax(verify, -1), reduction="batchmean")
    assert float(parts["kl"]) == pytest.approx(float(notebook_kl), rel=1e-6)
    assert float(parts["kl"]) == pytest.approx(float(kl_divergence(verify, final)), rel=1e-6)
    expected = parts["final"] + 0.35 * parts["verify"] + 0.25 * parts["kl"] + 0.05 * parts["sym_kl"]
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert float(parts["loss"]) == pytest.approx(float(total))
    leaf = final.clone().requires_grad_(True)
    clara_loss(output(leaf, pred, verify), y, w, cfg)[0].backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_clara_loss_mvsa_multiple_uses_the_boosted_focal_loss():
    preset = get_preset("mvsa_multiple")  # the notebook's settings
    cfg = preset.train
    final, pred, verify = logits(seed=7), logits(seed=8), logits(seed=9)
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    w = class_weights([50, 30, 2], preset.labels, cfg.class_weight_boost, cfg.class_weights)
    total, parts = clara_loss(output(final, pred, verify), y, w, cfg)
    assert set(parts) == {"loss", "final", "pred", "verify", "consistency"}  # kl_weight 0, verify_weight 0
    assert float(parts["final"]) == pytest.approx(float(focal_loss(final, y, (1.0, 2.0, 4.0), w, 0.02)), rel=1e-6)
    assert float(parts["pred"]) == pytest.approx(float(focal_loss(pred, y, (1.0, 2.0, 4.0), w, 0.02)), rel=1e-6)
    expected = parts["final"] + 0.30 * (parts["pred"] + parts["verify"]) + 0.10 * parts["consistency"]
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


def test_clara_loss_leaves_out_heads_the_model_did_not_produce():
    cfg = get_preset("mvsa_single").train
    final = logits(seed=10)
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    total, parts = clara_loss(output(final, None, None), y, None, cfg)
    assert set(parts) == {"loss", "final"}
    assert float(total) == pytest.approx(float(F.cross_entropy(final, y, label_smoothing=0.05)), rel=1e-6)


def test_clara_loss_takes_soft_targets():
    cfg = get_preset("hfm").train
    final, verify = logits(classes=2, seed=11), logits(classes=2, seed=12)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    hard, _ = clara_loss(output(final, verify, verify), y, None, cfg)
    soft, _ = clara_loss(output(final, verify, verify), F.one_hot(y, 2).float(), None, cfg)
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)
