"""Speed options: length-grouped batches, the config switches, and a training run that uses them."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import RandomSampler

from clara.config import get_preset
from clara.data.synthetic import write_synthetic
from clara.train.samplers import LengthGroupedSampler, build_sampler, make_generator, token_lengths


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


@pytest.mark.parametrize("n,batch_size,factor", [(103, 8, 4), (64, 16, 50), (5, 4, 1)])
def test_length_grouped_batches_cover_every_index_once_per_epoch(n, batch_size, factor):
    lengths = [(i * 37) % 29 + 1 for i in range(n)]
    sampler = LengthGroupedSampler(RandomSampler(range(n), generator=make_generator(3)), lengths, batch_size,
                                   seed=3, mega_batch_factor=factor)
    for _ in range(2):  # two epochs, each a permutation
        epoch = list(sampler)
        assert sorted(epoch) == list(range(n))
        assert len(sampler) == n
    # only the last batch may be short
    assert all(len(batch) == batch_size for batch in _batches(epoch, batch_size)[:-1])


def test_length_grouped_keeps_the_wrapped_samplers_draws_and_reduces_padding():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    lengths = [5 + (i * 13) % 60 for i in range(len(labels))]
    base_draws = list(build_sampler("weighted", labels, 3, seed=7))
    grouped = list(LengthGroupedSampler(build_sampler("weighted", labels, 3, seed=7), lengths, 10, seed=7))
    assert Counter(grouped) == Counter(base_draws)  # same multiset: class balance unchanged

    def padded_tokens(order: list[int]) -> int:
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in _batches(order, 10))

    assert padded_tokens(grouped) < 0.75 * padded_tokens(base_draws)
    # within a mega-batch every batch is sorted longest first
    for batch in _batches(grouped, 10):
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_length_grouped_order_repeats_with_the_seed():
    lengths = list(range(50))
    make = lambda: LengthGroupedSampler(RandomSampler(range(50), generator=make_generator(1)), lengths, 4, seed=1,  # noqa: E731
                                        mega_batch_factor=3)
    assert list(make()) == list(make())


def test_token_lengths_count_special_tokens_and_cap_at_max_length():
    from clara.model.encoders import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(["a b c d e f"], 300)
    assert token_lengths(tokenizer, ["a b", "a b c d e f", ""], max_length=5) == [4, 5, 2]


def test_config_fields_parse_from_overrides():
    cfg = get_preset("mvsa_single").override({"data.image_cache": "true", "train.length_grouped": "yes",
                                              "data.image_cache_dir": "/tmp/x"})
    assert (cfg.data.image_cache, cfg.train.length_grouped, cfg.data.image_cache_dir) == (True, True, "/tmp/x")
    defaults = get_preset("mvsa_single")
    # image_cache unset: decided by the device (off on CPU, on with a GPU: test_fast_paths.py)
    assert (defaults.data.image_cache, defaults.train.length_grouped) == (None, False)


@pytest.mark.slow
def test_training_with_the_image_cache_and_length_grouping(tmp_path):
    from clara.train import train

    torch.set_num_threads(1)
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=2, quirks=False)
    cfg = get_preset("mvsa_single").override({
        "data.data_dir": str(data_dir), "model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4",
        "train.epochs": "1", "train.batch_size": "8", "train.output_dir": str(tmp_path / "out"),
        "data.image_cache": "true", "data.image_cache_dir": str(tmp_path / "cache"), "train.length_grouped": "true",
        "data.check_images": "false"})
    result = train(cfg, progress=False)
    assert result.history[0]["train_samples"] == 28  # 70 % of 40 posts, weighted draws: one epoch's worth
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    import numpy as np

    from clara.data import load_dataset
    splits = load_dataset("mvsa_single", data_dir, check_images=False).splits
    # one row per train and val post, 96 px crops (the tiny vision encoder's size)
    assert np.load(cached[0], mmap_mode="r").shape == (len(splits["train"]) + len(splits["val"]), 3, 96, 96)


# ---------------------------------------------------------------------------------------------
# Options that must not change the arithmetic: the same loss and gradients on the same batch.

TEXTS = ["i love this sunny day at the beach", "so sad", "meeting at ten in the office again today", "ok"]


def _tiny(cfg_overrides: dict[str, str], tokenizer=None):
    from clara.model import create_model

    cfg = get_preset("mvsa_single").override({"model.encoders": "tiny", "model.hidden_dim": "64",
                                              "model.fusion_heads": "4", **cfg_overrides})
    torch.manual_seed(0)
    model, tokenizer = create_model(cfg, tokenizer_texts=TEXTS, tokenizer=tokenizer)
    return cfg, model, tokenizer


def _loss_and_grads(model, cfg, batch, seed: int = 5):
    from clara.train.losses import clara_loss

    torch.manual_seed(seed)  # the same dropout draws for both runs
    out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss, _ = clara_loss(out, batch["labels"], None, cfg.train)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batch(tokenizer, pad_to_max_length: bool):
    from clara.data import Collator

    torch.manual_seed(1)
    items = [{"pixel_values": torch.randn(3, 96, 96), "text": t, "label": i % 3, "id": str(i)}
             for i, t in enumerate(TEXTS)]
    return Collator(tokenizer, max_length=128, pad_to_max_length=pad_to_max_length)(items)


def _assert_same(first, second):
    loss_a, grads_a = first
    loss_b, grads_b = second
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-6), name


def test_dynamic_padding_gives_the_same_loss_and_gradients_as_padding_to_128():
    cfg, model, tokenizer = _tiny({})
    model.eval()  # dropout masks would depend on the padded shape
    padded, dynamic = _batch(tokenizer, True), _batch(tokenizer, False)
    assert padded["input_ids"].shape[1] == 128 and dynamic["input_ids"].shape[1] < 20
    _assert_same(_loss_and_grads(model, cfg, padded), _loss_and_grads(model, cfg, dynamic))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    cfg, plain, tokenizer = _tiny({})
    _, checkpointed, _ = _tiny({"model.gradient_checkpointing": "true"}, tokenizer)
    plain.train()
    checkpointed.train()
    batch = _batch(tokenizer, False)
    _assert_same(_loss_and_grads(plain, cfg, batch), _loss_and_grads(checkpointed, cfg, batch))


# ---------------------------------------------------------------------------------------------
# Precision chosen by the hardware (clara/precision.py): the probe's logic with injected timings,
# the override, and what the fast paths cost on the trained demo checkpoint.

# Largest change of any class probability allowed on the demo's 151 test posts (labels must not change):
# measured 0.028 for bf16 and 0.066 for int8 (per-channel weights).
BF16_MAX_PROB_CHANGE = 0.05
INT8_MAX_PROB_CHANGE = 0.12


def test_probe_picks_bf16_only_when_it_is_clearly_faster():
    from clara.precision import MIN_BF16_SPEEDUP, decide_cpu_precision

    assert decide_cpu_precision("AVX512", 4e-3, 1e-3)[0] == "bf16"  # AMX / AVX-512 BF16: 4x
    assert decide_cpu_precision("AVX512", 1e-3, 1e-3 / (MIN_BF16_SPEEDUP * 1.01))[0] == "bf16"
    assert decide_cpu_precision("AVX512", 1e-3, 1e-3 / (MIN_BF16_SPEEDUP * 0.99))[0] == "fp32"
    precision, reason = decide_cpu_precision("AVX2", 1e-4, 2e-2)  # emulated bf16 (Zen 3): 200x slower
    assert precision == "fp32" and "AVX2" in reason
    assert decide_cpu_precision("AVX2", None, None)[0] == "fp32"


def test_probe_screens_out_an_emulated_bf16_without_timing_the_large_shape(monkeypatch):
    from clara import precision

    calls = []

    def fake_timings(shape, repeats=precision.PROBE_REPEATS):
        calls.append(shape)
        return (1e-5, 1e-3) if shape == precision.SCREEN_SHAPE else (4e-3, 1e-3)

    monkeypatch.setattr(precision, "time_linear", fake_timings)
    precision.cpu_precision_probe.cache_clear()
    try:
        probe = precision.cpu_precision_probe()
        assert probe.precision == "fp32" and calls == [precision.SCREEN_SHAPE] and probe.shape == precision.SCREEN_SHAPE
        monkeypatch.setattr(precision, "time_linear", lambda shape, repeats=0: (4e-3, 1e-3))
        precision.cpu_precision_probe.cache_clear()
        probe = precision.cpu_precision_probe()
        assert probe.precision == "bf16" and probe.fp32_ms == pytest.approx(4.0) and probe.bf16_ms == pytest.approx(1.0)
        assert precision.cpu_precision_probe() is probe  # once per process
    finally:
        precision.cpu_precision_probe.cache_clear()


def test_precision_setting_override_and_auto(monkeypatch):
    from clara import precision

    probe = precision.PrecisionProbe("AVX512", "bf16", "injected", 4.0, 1.0, precision.PROBE_SHAPE)
    monkeypatch.setattr(precision, "cpu_precision_probe", lambda: probe)
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    assert precision.resolve_precision(None, "cpu")[0] == "bf16"
    assert precision.resolve_mixed_precision("auto", "cpu") == "no"  # training, width unknown: fp32
    assert precision.resolve_mixed_precision("auto", "cpu", 768) == "bf16"  # full width: the probe's choice
    assert precision.resolve_mixed_precision("auto", "cpu", 64) == "no"  # tiny: fp32 (tests/test_train_precision.py)
    assert precision.resolve_precision("fp32", "cpu")[0] == "fp32"  # the Predictor argument
    assert precision.resolve_precision(None, "cpu", hidden_size=768)[0] == "bf16"  # full-size encoders
    precision_, reason = precision.resolve_precision(None, "cpu", hidden_size=64)  # the tiny demo's
    assert precision_ == "fp32" and "too narrow" in reason
    assert precision.resolve_precision("bf16", "cpu", hidden_size=64)[0] == "bf16"  # asked for: given
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.resolve_precision(None, "cpu") == ("fp32", "set to fp32 by CLARA_PRECISION")
    assert precision.resolve_mixed_precision("auto", "cpu") == "no"
    assert precision.resolve_mixed_precision("bf16", "cpu") == "bf16"  # explicit settings pass through
    monkeypatch.setenv(precision.PRECISION_ENV, "bf16")
    assert precision.resolve_mixed_precision("auto", "cpu") == "bf16"  # ... and CLARA_PRECISION=bf16
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    monkeypatch.setenv(precision.PRECISION_ENV, "fp64")
    with pytest.raises(ValueError, match="CLARA_PRECISION='fp64' is not one of: auto, fp32, bf16"):
        precision.resolve_precision(None, "cpu")
    fp32_probe = precision.PrecisionProbe("AVX2", "fp32", "injected")
    monkeypatch.setattr(precision, "cpu_precision_probe", lambda: fp32_probe)
    monkeypatch.setenv(precision.PRECISION_ENV, "auto")
    assert precision.resolve_precision(None, "cpu")[0] == "fp32" and precision.resolve_mixed_precision("auto", "cpu") == "no"


@pytest.fixture(scope="module")
def demo_test_posts():
    import csv

    from _app_utils import DEMO_CHECKPOINT, require_demo
    from clara.inference import Predictor

    require_demo()
    with (DEMO_CHECKPOINT / "results" / "predictions.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    posts = [DEMO_CHECKPOINT / "results" / row["image_path"] for row in rows]
    texts = [row["text"] for row in rows]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    reference = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="fp32").predict(posts, texts, 64)
    yield DEMO_CHECKPOINT, posts, texts, reference
    torch.set_num_threads(previous)


@pytest.mark.parametrize("option,limit", [({"precision": "bf16"}, BF16_MAX_PROB_CHANGE),
                                          ({"quantize": True}, INT8_MAX_PROB_CHANGE)])
def test_fast_paths_change_no_label_on_the_demo_test_posts(demo_test_posts, option, limit):
    from clara.inference import Predictor

    checkpoint, posts, texts, reference = demo_test_posts
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", **option)
    assert predictor.path.precision == ("int8" if "quantize" in option else "bf16") and predictor.path.lora == "merged"
    fast = predictor.predict(posts, texts, batch_size=64)
    assert len(fast) == len(reference) == 151
    assert [p.label for p in fast] == [p.label for p in reference]
    changes = [abs(getattr(a, field)[k] - getattr(b, field)[k]) for a, b in zip(reference, fast)
               for field in ("probs", "pred_probs", "text_only_probs", "image_only_probs") for k in a.probs]
    assert max(changes) <= limit
