"""Class weights, samplers and loss terms against the authors' own notebook code (tests/_authors.py).

The notebook statements run as written on stand-in samples with the class counts of the
notebooks' own training splits (their saved outputs print them); ours run on the same counts
under each dataset's preset. docs/FIDELITY.md lists what each test pins.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import _authors as authors
from _authors import AUTHORS_CODE_WARNINGS, requires_notebooks
from clara.config import get_preset
from clara.model import CLARAOutput
from clara.train.losses import clara_loss, training_class_weights
from clara.train.samplers import build_sampler, count_classes

pytestmark = [requires_notebooks, *AUTHORS_CODE_WARNINGS]

# Training-split class counts as the notebooks print them (positive, neutral, negative; HFM 0, 1):
# MVSA-Single cell 6 (1,398 / 470 / 724 at 70 %), MVSA-Multiple cell 6, HFM cell 6.
TRAIN_COUNTS = {"mvsa_single": (978, 329, 506), "mvsa_multiple": (1521, 887, 79), "hfm": (11174, 8642)}
# Draws per sampler measurement and the tolerance on a class's fraction: 60 epochs of the split
# (>= 149,220 draws), where 4 standard errors of any fraction are at most 4 * sqrt(0.25 / 149,220) = 0.0052.
EPOCHS_DRAWN = 60
FRACTION_TOLERANCE = 0.006


def preset(dataset: str):
    return get_preset(dataset)


def train_labels(dataset: str) -> list[int]:
    return [label for label, count in enumerate(TRAIN_COUNTS[dataset]) for _ in range(count)]


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_class_weights_equal_the_notebooks(dataset):
    labels = train_labels(dataset)
    cfg = preset(dataset)
    theirs = authors.class_weights(dataset, labels)
    ours = training_class_weights(cfg.train, count_classes(labels, len(cfg.labels)), cfg.labels)
    if theirs is None:  # HFM: unweighted cross entropy
        assert ours is None
    else:
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)


def test_class_weights_are_the_printed_ones():
    single, multiple = (training_class_weights(preset(d).train, TRAIN_COUNTS[d], preset(d).labels)
                        for d in ("mvsa_single", "mvsa_multiple"))
    printed = authors.printed("mvsa_single", r"Class weights: \[([\d.]+), ([\d.]+), ([\d.]+)\]").groups()
    assert single.tolist() == pytest.approx([float(v) for v in printed], rel=1e-6)
    printed = authors.printed("mvsa_multiple", r"Pos=([\d.]+) Neu=([\d.]+) Neg=([\d.]+)").groups()
    assert [round(v, 3) for v in multiple.tolist()] == [float(v) for v in printed]  # 0.735, 1.261, 1.180


def class_shares(sampler: torch.utils.data.WeightedRandomSampler, labels: list[int]) -> list[float]:
    """Each class's exact probability per draw: its posts' summed weight over all the weight."""
    weights = torch.as_tensor(sampler.weights, dtype=torch.double)
    classes = torch.tensor(labels)
    return [float(weights[classes == c].sum() / weights.sum()) for c in sorted(set(labels))]


def measured_shares(sampler, labels: list[int]) -> list[float]:
    counts = Counter(labels[i] for _ in range(EPOCHS_DRAWN) for i in sampler)
    total = sum(counts.values())
    return [counts[c] / total for c in sorted(set(labels))]


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_sampler_draw_fractions_equal_the_notebooks(dataset):
    labels = train_labels(dataset)
    cfg = preset(dataset)
    theirs = authors.train_sampler(dataset, labels)
    ours = build_sampler(cfg.train.sampler, labels, len(cfg.labels), seed=cfg.train.seed,
                         negative_index=cfg.labels.index("negative") if "negative" in cfg.labels else None,
                         negative_min_fraction=cfg.train.negative_min_fraction,
                         negative_boost=cfg.train.negative_boost)
    exact = class_shares(theirs, labels)
    # rel 1e-6: MVSA-Single and HFM compute their weights in float32 (np.float32 counts), we in float64.
    assert class_shares(ours, labels) == pytest.approx(exact, rel=1e-6)
    torch.manual_seed(0)  # the notebooks' samplers draw from the global generator
    for shares in (measured_shares(theirs, labels), measured_shares(ours, labels)):
        assert shares == pytest.approx(exact, abs=FRACTION_TOLERANCE)
    if dataset == "mvsa_multiple":  # prints "target 30.0%", draws 98.3 % negatives
        assert exact[2] == pytest.approx(0.9827, abs=1e-4)


def test_negative_target_sampler_is_the_printed_intent():
    labels = train_labels("mvsa_multiple")
    cfg = preset("mvsa_multiple").override({"train.sampler": "negative_target"})
    sampler = build_sampler(cfg.train.sampler, labels, 3, seed=0, negative_index=2,
                            negative_min_fraction=cfg.train.negative_min_fraction)
    shares = class_shares(sampler, labels)
    assert shares[2] == pytest.approx(0.30, rel=1e-9)
    assert shares[0] / shares[1] == pytest.approx(1521 / 887, rel=1e-9)  # the others keep their ratio
    assert authors.printed("mvsa_multiple", r"Negative min-ratio boost x9\.44 → target 30\.0%")


def random_batch(dataset: str, seed: int):
    num_classes = len(TRAIN_COUNTS[dataset]) if dataset != "hfm" else 3  # the HFM notebook's heads have 3 outputs
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(8, num_classes, generator=generator) * 2 for _ in range(3)]
    labels = torch.arange(8) % len(TRAIN_COUNTS[dataset])
    return labels, logits


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_each_loss_term_equals_the_notebooks(dataset, seed):
    labels, (final, pred, verify) = random_batch(dataset, seed)
    theirs = authors.notebook_loss_terms(dataset, labels, final, pred, verify, train_labels(dataset))
    cfg = preset(dataset)
    num_classes = final.shape[1]
    weights = training_class_weights(cfg.train, count_classes(train_labels(dataset), num_classes),
                                     [*cfg.labels, "extra"][:num_classes])
    out = CLARAOutput(logits=final, pred_logits=pred, verify_logits=verify, probs=final.softmax(-1),
                      uncertainty=torch.zeros(8))
    _, parts = clara_loss(out, labels, weights, cfg.train)
    assert set(parts) == set(theirs)
    for name, value in theirs.items():
        assert float(parts[name]) == pytest.approx(value, rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_one_notebook_training_epoch_has_the_same_loss(dataset):
    """The notebook's whole `Trainer.train_epoch` on one batch returns the total of its loss block
    (so the block the other test runs is the one training uses), and ours equals it."""
    labels, (final, pred, verify) = random_batch(dataset, 2)
    trainer = authors.notebook_trainer(dataset, labels, final, pred, verify, train_labels(dataset))
    epoch_loss = trainer.train_epoch() if dataset == "mvsa_single" else trainer.train_epoch(1)
    accum = trainer.cfg.get("grad_accum_steps", 1) if dataset == "mvsa_multiple" else 1
    terms = authors.notebook_loss_terms(dataset, labels, final, pred, verify, train_labels(dataset))
    assert epoch_loss * accum == pytest.approx(terms["loss"], rel=1e-6)
