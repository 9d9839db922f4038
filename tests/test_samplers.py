"""Samplers (inverse frequency, the two negative samplers, random) and the negative image mixup.

tests/test_fidelity_training.py compares the draw fractions with the authors' notebook samplers."""
from collections import Counter

import pytest
import torch

from clara.train.samplers import (NegativeMixup, build_sampler, count_classes, extreme_negative_weights,
                                  inverse_frequency_weights, negative_target_weights)

# 80 positive, 15 neutral, 5 negative: an imbalanced training split.
LABELS = [0] * 80 + [1] * 15 + [2] * 5


def draw(sampler, repeats=1):
    return [index for _ in range(repeats) for index in sampler]


def class_fractions(indices, labels):
    counts = Counter(labels[i] for i in indices)
    return {c: counts[c] / len(indices) for c in sorted(set(labels))}


def test_count_classes_includes_absent_classes_and_rejects_out_of_range():
    assert count_classes([0, 0, 2], 3) == [2, 0, 1]
    with pytest.raises(ValueError, match="label index 3 out of range for 3 classes"):
        count_classes([0, 3], 3)


def test_inverse_frequency_gives_every_class_the_same_total_weight():
    weights = inverse_frequency_weights(LABELS, 3)
    per_class = [float(weights[[i for i, y in enumerate(LABELS) if y == c]].sum()) for c in range(3)]
    assert per_class == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_sampler_draws_classes_about_equally_and_repeats_with_its_seed():
    sampler = build_sampler("weighted", LABELS, 3, seed=7)
    indices = draw(sampler, repeats=30)  # 3,000 draws
    assert len(indices) == 3000
    for fraction in class_fractions(indices, LABELS).values():
        assert 0.29 < fraction < 0.38
    assert draw(build_sampler("weighted", LABELS, 3, seed=7), 30) == indices
    assert draw(build_sampler("weighted", LABELS, 3, seed=8), 30) != indices


def test_negative_target_reaches_the_minimum_fraction_and_keeps_the_other_ratios():
    labels = [0] * 600 + [1] * 370 + [2] * 30  # 3 % negatives, like MVSA-Multiple
    weights = negative_target_weights(labels, negative_index=2, min_fraction=0.30)
    negative_share = float(weights[970:].sum() / weights.sum())
    assert negative_share == pytest.approx(0.30)
    assert torch.all(weights[:970] == 1.0)  # positive : neutral stays 600 : 370
    indices = draw(build_sampler("negative_target", labels, 3, seed=0, negative_index=2,
                                 negative_min_fraction=0.30), repeats=5)
    assert class_fractions(indices, labels)[2] > 0.27
    # boost_negative, its former name, still builds the same sampler (config.json of earlier runs)
    assert torch.equal(build_sampler("boost_negative", labels, 3, seed=0, negative_index=2).weights,
                       build_sampler("negative_target", labels, 3, seed=0, negative_index=2).weights)


def test_negative_target_leaves_a_set_with_enough_negatives_alone():
    labels = [0] * 6 + [2] * 4
    assert negative_target_weights(labels, 2, 0.30).tolist() == [1.0] * 10
    assert negative_target_weights([0, 1], 2, 0.30).tolist() == [1.0, 1.0]  # no negatives at all


def test_extreme_negative_applies_both_the_boost_and_the_min_ratio_scale():
    labels = [0] * 600 + [1] * 370 + [2] * 30  # 3 % negatives
    weights = extreme_negative_weights(labels, negative_index=2, boost=12.0, min_fraction=0.30)
    base = 1000 / 3  # N / (k n_c) summed over a class: each class starts at N / k
    per_class = [float(weights[[i for i, y in enumerate(labels) if y == c]].sum()) for c in range(3)]
    assert per_class == pytest.approx([base, base, base * 12 * (0.30 / 0.03)])
    assert per_class[2] / sum(per_class) == pytest.approx(120 / 122)  # 98 %, not the 30 % it aims at
    # enough negatives already: only the boost applies
    enough = extreme_negative_weights([0] * 6 + [2] * 4, 2, 12.0, 0.30)
    assert float(enough[6:].sum() / enough.sum()) == pytest.approx(12 / 13)
    assert extreme_negative_weights([0, 0, 1], 2, 12.0, 0.30).tolist() == pytest.approx([0.75, 0.75, 1.5])


def test_random_sampler_is_a_seeded_permutation():
    first = draw(build_sampler("random", LABELS, 3, seed=3))
    assert sorted(first) == list(range(len(LABELS)))
    assert draw(build_sampler("random", LABELS, 3, seed=3)) == first
    assert first != list(range(len(LABELS)))


def test_bad_sampler_settings_are_named():
    with pytest.raises(ValueError, match="unknown sampler 'balanced'"):
        build_sampler("balanced", LABELS, 3, seed=0)
    with pytest.raises(ValueError, match="needs the index of the negative class"):
        build_sampler("extreme_negative", LABELS, 3, seed=0)
    with pytest.raises(ValueError, match=r"negative_min_fraction must be in \[0, 1\)"):
        negative_target_weights(LABELS, 2, 1.0)


def make_batch(labels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.rand(len(labels), 3, 4, 4, generator=generator),
            "labels": torch.tensor(labels), "ids": [str(i) for i in range(len(labels))]}


def test_negative_mixup_blends_each_negative_with_another_negative_only():
    batch = make_batch([0, 2, 2, 1, 2, 0])
    original = batch["pixel_values"].clone()
    mixed = NegativeMixup(negative_index=2, prob=1.0, alpha=0.4, seed=0)(batch)
    assert torch.equal(batch["pixel_values"], original)  # the input batch is not modified
    assert torch.equal(mixed["labels"], batch["labels"])  # negative + negative stays negative
    for i in (0, 3, 5):
        assert torch.equal(mixed["pixel_values"][i], original[i])
    negatives = [1, 2, 4]
    for i in negatives:
        # mixed_i = lam * x_i + (1 - lam) * x_j for some other negative j and lam in [0, 1]
        fits = []
        for j in (n for n in negatives if n != i):
            diff = original[i] - original[j]
            lam = float(((mixed["pixel_values"][i] - original[j]) * diff).sum() / (diff * diff).sum())
            residual = (lam * original[i] + (1 - lam) * original[j] - mixed["pixel_values"][i]).abs().max()
            fits.append(0.0 <= lam <= 1.0 and float(residual) < 1e-5)
        assert any(fits), f"post {i} is not a mix of itself and another negative"
        assert not torch.equal(mixed["pixel_values"][i], original[i])


def test_negative_mixup_is_seeded_and_off_when_it_cannot_or_should_not_mix():
    batch = make_batch([2, 2, 2, 2])
    first = NegativeMixup(2, prob=0.5, alpha=0.4, seed=11)(batch)["pixel_values"]
    again = NegativeMixup(2, prob=0.5, alpha=0.4, seed=11)(batch)["pixel_values"]
    assert torch.equal(first, again)
    single = make_batch([0, 2, 1])
    assert NegativeMixup(2, prob=1.0, alpha=0.4, seed=0)(single) is single
    assert NegativeMixup(2, prob=0.0, alpha=0.4, seed=0)(batch) is batch
    with pytest.raises(ValueError, match="alpha must be > 0"):
        NegativeMixup(2, prob=0.5, alpha=0.0, seed=0)
