"""The training fast paths (clara.train.fast_paths): the once-cast frozen weights give autocast's
arithmetic exactly and leave the parameters and checkpoints in fp32; fused AdamW and the eager
vision attention change a step by rounding only; bits_dropout keeps each element with probability
1 - p (to 2**-17) and expectation x; a training run records what ran in metrics.json.
No timings are asserted (docs/BENCHMARKS.md has them)."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clara.checkpoint import METRICS_FILE, WEIGHTS_FILE, load_checkpoint
from clara.config import get_preset
from clara.data import Collator
from clara.data.synthetic import write_synthetic
from clara.model import create_model
from clara.model.relative_span import trim_relative_spans, untrim_relative_spans
from clara.train.data import GPU_LOADER_WORKERS, resolve_loader_settings
from clara.train.fast_paths import (
    MASK_LEVELS,
    _OnceCastForward,
    apply_fast_paths,
    bits_dropout,
    build_optimizer,
    cast_frozen_weights,
    release_frozen_weight_casts,
    set_vision_attention,
    use_bits_dropout,
)
from clara.train.loop import train
from clara.train.losses import clara_loss
from clara.train.tiny import TINY_MODEL

TEXTS = ["a happy day at the beach", "this is awful and sad", "the bus is late again", "love it so much"]


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("mvsa_single").override(dict(TINY_MODEL))
    torch.manual_seed(0)
    model, tokenizer = create_model(cfg, tokenizer_texts=TEXTS * 4)
    size = model.vision.backbone.config.image_size
    batch = Collator(tokenizer, 32)([{"pixel_values": torch.randn(3, size, size, generator=torch.Generator().manual_seed(i)),
                                      "text": text, "label": i % 3, "id": str(i)} for i, text in enumerate(TEXTS)])
    return cfg, model, batch


def inputs(batch):
    return {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}


def bf16_step(model, batch, cfg, seed=7):
    """Loss and every gradient of one bf16-autocast training step with fixed dropout draws."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = clara_loss(model(**inputs(batch)), batch["labels"], None, cfg.train)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def wrappers(model):
    return [m.__dict__["forward"] for m in model.modules() if isinstance(m.__dict__.get("forward"), _OnceCastForward)]


def test_once_cast_frozen_weights_give_autocasts_arithmetic_exactly(tiny):
    cfg, model, batch = tiny
    plain, cast = copy.deepcopy(model), copy.deepcopy(model)
    count = cast_frozen_weights([cast.vision, cast.text])
    frozen = [m for tower in (cast.vision, cast.text) for m in tower.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not m.weight.requires_grad]
    assert count == len(frozen) > 10  # every frozen projection of both towers (LoRA's base layers included)
    loss_plain, grads_plain = bf16_step(plain, batch, cfg)
    loss_cast, grads_cast = bf16_step(cast, batch, cfg)
    assert torch.equal(loss_plain, loss_cast)
    assert grads_plain.keys() == grads_cast.keys() and len(grads_plain) > 10
    assert all(torch.equal(grads_plain[name], grads_cast[name]) for name in grads_plain)
    # The copies were read (made at the first autocast call), the parameters stay fp32 and unchanged.
    assert all(w.weight is not None and w.weight.dtype == torch.bfloat16 for w in wrappers(cast))
    state_plain, state_cast = plain.state_dict(), cast.state_dict()
    assert state_plain.keys() == state_cast.keys()
    assert all(torch.equal(state_plain[k], state_cast[k]) and state_plain[k].dtype == state_cast[k].dtype
               for k in state_plain)


def test_outside_autocast_or_after_an_in_place_change_the_weight_itself_is_read(tiny):
    _, model, batch = tiny
    plain, cast = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    cast_frozen_weights([cast.vision, cast.text])
    with torch.no_grad():
        assert torch.equal(plain(**inputs(batch)).logits, cast(**inputs(batch)).logits)  # fp32: no copy used
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast(**inputs(batch))  # copies made
        for m in (plain, cast):  # a frozen weight changed in place, as load_state_dict would
            m.text.base_model.model.encoder.layer[0].attention.self.query_proj.base_layer.weight.mul_(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(plain(**inputs(batch)).logits, cast(**inputs(batch)).logits)


def test_weights_unfrozen_for_full_fine_tuning_train_in_fp32(tiny):
    cfg, model, batch = tiny
    cast = copy.deepcopy(model)
    count = cast_frozen_weights([cast.vision, cast.text])
    cast.unfreeze_encoders()  # MVSA-Multiple's switch: the wrappers step aside at once...
    _, grads = bf16_step(cast, batch, cfg)
    base = "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight"
    assert base in grads and grads[base].dtype == torch.float32 and grads[base].abs().sum() > 0
    assert release_frozen_weight_casts(cast) == count and not wrappers(cast)  # ...and the loop frees them


def test_fused_adamw_and_eager_vision_attention_change_a_step_by_rounding_only(tiny):
    cfg, model, batch = tiny
    runs = []
    for fast in (False, True):
        trained = copy.deepcopy(model)
        if fast:
            assert set_vision_attention(trained, "eager")
            assert trained.vision.backbone.config._attn_implementation == "eager"
        params = [p for p in trained.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, 1e-3, 0.01, fused=fast)
        assert optimizer.param_groups[0]["fused"] is (True if fast else None)
        losses = []
        for step in range(3):
            trained.train()
            torch.manual_seed(step)
            loss, _ = clara_loss(trained(**inputs(batch)), batch["labels"], None, cfg.train)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        runs.append((losses, torch.cat([p.detach().flatten() for p in params])))
    (losses_plain, params_plain), (losses_fast, params_fast) = runs
    assert losses_fast == pytest.approx(losses_plain, rel=1e-5)
    # Adam moves a weight by up to lr = 1e-3 a step, and normalises tiny gradients, where rounding
    # differences show most: after 3 steps the paths differ by 8e-6 at most (1e-9 on average).
    assert (params_fast - params_plain).abs().max() < 1e-4 and losses_fast[2] != losses_fast[0]  # it trained


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return Path(write_synthetic("mvsa_single", tmp_path_factory.mktemp("fast_paths") / "data",
                                n=40, seed=5, quirks=False)["out_dir"])


# The second run follows the first in this process at another precision, which Accelerate alone refuses.
@pytest.mark.parametrize("fast_paths, precision", [(True, "bf16"), (False, "no")])
def test_a_training_run_records_its_precision_and_fast_paths(tiny_data, tmp_path, fast_paths, precision):
    cfg = get_preset("mvsa_single").override({
        **TINY_MODEL, "data.data_dir": str(tiny_data), "train.output_dir": str(tmp_path), "train.epochs": 1,
        "train.max_steps_per_epoch": 2, "train.batch_size": 8, "train.calibrate": False, "train.report_to": "none",
        "train.mixed_precision": precision, "train.fast_paths": fast_paths})
    result = train(cfg, progress=False)
    how = json.loads((result.results_dir / METRICS_FILE).read_text())["training"]
    assert how["mixed_precision"] == precision and how["precision_reason"] == f"train.mixed_precision={precision}"
    assert how["processes"] == 1
    if fast_paths:
        assert how["fast_paths"]["enabled"] and how["fast_paths"]["frozen_weight_casts"] > 10
        assert how["fast_paths"]["fused_optimizer"] and how["fast_paths"]["vision_attention"] == "eager"
        assert how["fast_paths"]["trimmed_relative_spans"] == 1 and how["fast_paths"]["bits_dropouts"] > 10
    else:
        assert how["fast_paths"] == {"enabled": False, "frozen_weight_casts": 0, "cast_dtype": None,
                                     "vision_attention": None, "fused_optimizer": False, "trimmed_relative_spans": 0,
                                     "bits_dropouts": 0}
    # The checkpoint holds the frozen weights as they were built (fp32, not rounded to bf16), and the
    # training-only attention switch does not travel with it.
    torch.manual_seed(0)
    fresh, _ = create_model(cfg, tokenizer_texts=TEXTS)
    stored = load_file(str(result.best_dir / WEIGHTS_FILE))
    key = "vision.backbone.encoder.layers.0.mlp.fc1.weight"  # frozen (LoRA is on the attention)
    assert stored[key].dtype == torch.float32 and torch.equal(stored[key], fresh.state_dict()[key])
    loaded = load_checkpoint(result.best_dir)
    assert (loaded.config.train.num_workers, loaded.config.data.image_cache) == (0, False)  # decided on CPU
    assert loaded.model.vision.backbone.config._attn_implementation == fresh.vision.backbone.config._attn_implementation


def test_apply_fast_paths_describes_what_it_did(tiny):
    _, model, _ = tiny
    fast = apply_fast_paths(copy.deepcopy(model), "bf16", "cpu")
    assert fast.frozen_weight_casts > 10 and fast.cast_dtype == "bf16" and fast.vision_attention == "eager"
    assert "frozen encoder weights cast once to bf16" in fast.describe() and "fused AdamW on" in fast.describe()
    assert apply_fast_paths(copy.deepcopy(model), "no", "cpu").frozen_weight_casts == 0  # fp32: nothing to cast
    assert apply_fast_paths(model, "bf16", "cpu", enabled=False).describe() == "off (train.fast_paths=false)"
    assert f"{fast.bits_dropouts} dropouts drawing 16-bit masks" in fast.describe()
    assert apply_fast_paths(copy.deepcopy(model), "bf16", "cuda").bits_dropouts == 0  # CUDA's dropout is fused


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_bits_dropout_keeps_each_element_with_probability_1_minus_p_and_expectation_x(p):
    torch.manual_seed(3)
    count = 1 << 20
    x = torch.ones(count, requires_grad=True)
    y = bits_dropout(x, p)
    kept = y.detach() > 0
    kept_levels = round((1 - p) * MASK_LEVELS)
    # Kept elements carry exactly 1 / (the kept rate), dropped ones 0; the rate is 1 - p to 2**-17.
    assert torch.equal(y.detach()[kept], torch.full((int(kept.sum()),), MASK_LEVELS / kept_levels))
    assert abs(kept_levels / MASK_LEVELS - (1 - p)) <= 2 ** -17
    sigma = (p * (1 - p) / count) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    # Each of the four int16 lanes of a random word is as likely to keep (all 64 bits are random).
    lanes = kept.view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max().item() < 5 * (p * (1 - p) / (count // 4)) ** 0.5
    assert abs(y.detach().mean().item() - 1) < 5 * sigma / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask, scaled alike
    # The same seed, the same mask; the generator's next draw, another mask.
    torch.manual_seed(3)
    assert torch.equal(bits_dropout(torch.ones(count), p), y.detach())
    assert not torch.equal(bits_dropout(torch.ones(count), p), y.detach())
    # Half precision: dtype and shape kept, values 0 or the scale rounded as torch rounds its own.
    for dtype in (torch.bfloat16, torch.float16):
        half = torch.ones(64, 5, 7, dtype=dtype)
        dropped = bits_dropout(half, p)
        assert dropped.dtype == dtype and dropped.shape == (64, 5, 7)
        assert set(dropped.unique().tolist()) <= {0.0, torch.tensor(MASK_LEVELS / kept_levels, dtype=dtype).item()}
        assert bits_dropout(half, p, inplace=True) is half
    # A transposed (non-contiguous) input: each element keeps its own value or 0.
    values = torch.arange(1, 2049, dtype=torch.float32).view(32, 64).t()
    dropped = bits_dropout(values, p)
    assert dropped.shape == (64, 32) and torch.equal(dropped[dropped > 0], (values * torch.tensor(MASK_LEVELS / kept_levels))[dropped > 0])
    assert torch.equal(bits_dropout(torch.ones(9), 1.0), torch.zeros(9))


def test_dropout_modules_draw_bits_masks_in_training_and_nothing_in_eval(tiny):
    cfg, model, batch = tiny
    fast = copy.deepcopy(model)
    dropouts = [m for m in fast.modules() if type(m) is torch.nn.Dropout and m.p > 0]
    assert use_bits_dropout(fast) == len(dropouts) > 10 and use_bits_dropout(fast) == 0  # once each
    # LoRA's dropout (peft), DeBERTa's hidden dropout and the fusion's are all among them.
    names = {name for name, m in fast.named_modules() if m in dropouts}
    assert any("lora_dropout" in n for n in names) and any(n.startswith("text.") and "lora" not in n for n in names)
    assert any(n.startswith("fusion.") for n in names)
    fast.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(fast(**inputs(batch)).logits, model(**inputs(batch)).logits)
    plain = copy.deepcopy(model).train()
    fast.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = fast(**inputs(batch)).logits
        torch.manual_seed(1)
        again = fast(**inputs(batch)).logits
        torch.manual_seed(2)
        other = fast(**inputs(batch)).logits
        torch.manual_seed(1)
        torch_drawn = plain(**inputs(batch)).logits
    assert torch.equal(first, again) and not torch.equal(first, other)
    # The masks are bits_dropout's, not torch's: the same seed gives other logits than torch's dropout.
    assert not torch.equal(first, torch_drawn)


def test_loader_settings_unset_are_decided_by_the_device():
    cfg = get_preset("mvsa_single")
    assert (cfg.train.num_workers, cfg.data.image_cache) == (None, None)
    cpu, gpu = resolve_loader_settings(cfg, "cpu"), resolve_loader_settings(cfg, "cuda")
    assert (cpu.train.num_workers, cpu.data.image_cache) == (0, False)
    assert (gpu.train.num_workers, gpu.data.image_cache) == (min(GPU_LOADER_WORKERS, os.cpu_count()), True)
    chosen = cfg.override({"train.num_workers": 2, "data.image_cache": False})
    assert resolve_loader_settings(chosen, "cuda").train.num_workers == 2  # what the user set is kept
    assert resolve_loader_settings(chosen, "cuda").data.image_cache is False


def rel_rows_seen(model, batch):
    """The rows of the relative-position table layer 0's query_proj projected in one text forward."""
    seen = []
    proj = model.text.base_model.model.encoder.layer[0].attention.self.query_proj
    handle = proj.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2]) if args[0].dim() == 3
                                        and args[0].shape[0] == 1 else None)
    try:
        out = model.text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    finally:
        handle.remove()
    return out, seen


def test_deberta_relative_span_trimmed_to_the_texts_gives_the_same_scores(tiny):
    _, model, batch = tiny
    full, trimmed = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    assert trim_relative_spans(trimmed) == 1 and trim_relative_spans(trimmed) == 1  # idempotent
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        out_full, rows_full = rel_rows_seen(full, batch)
        out_trimmed, rows_trimmed = rel_rows_seen(trimmed, batch)
        assert rows_full == [2 * 32] and rows_trimmed == [2 * length] and length < 32  # tiny: 32 buckets
        assert torch.equal(out_full, out_trimmed)  # fp32: bit-identical
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_full, _ = rel_rows_seen(full, batch)
            out_trimmed, _ = rel_rows_seen(trimmed, batch)
        assert torch.allclose(out_full.float(), out_trimmed.float(), atol=0.05)  # bf16 rounding
    # Gradients (dropout off) agree too, and the encoder is restored after each forward.
    grads = []
    for m in (full, trimmed):
        m.zero_grad(set_to_none=True)
        rel_rows_seen(m, batch)[0].pow(2).mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)
                                                      for n in grads[0])
    assert trimmed.text.base_model.model.encoder.layer[0].attention.self.pos_ebd_size == 32
    assert untrim_relative_spans(trimmed) == 1 and rel_rows_seen(trimmed, batch)[1] == [2 * 32]


def test_long_texts_log_bucketed_positions_are_trimmed_alike(tiny):
    """Beyond 16 positions tiny's 32 buckets are logarithmic: 60 tokens reach bucket 26 (27 rows each
    side), 128 tokens the table's ends (nothing to trim). The scores equal the full table's in both."""
    _, model, batch = tiny
    full, trimmed = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    trim_relative_spans(trimmed)
    for length, rows in ((60, 2 * 27), (128, 2 * 32)):
        long = {"input_ids": batch["input_ids"][:, :1].repeat(1, length),
                "attention_mask": torch.ones(4, length, dtype=torch.long)}
        with torch.no_grad():
            out_trimmed, seen = rel_rows_seen(trimmed, long)
            assert seen == [rows]
            assert torch.equal(out_trimmed, rel_rows_seen(full, long)[0])


def test_with_gradient_checkpointing_the_encoder_keeps_the_whole_table():
    """Checkpointing re-runs DeBERTa's layers in backward, outside the trimmed forward: the trimmed
    encoder then runs as transformers' own (same loss and gradients, no index error)."""
    cfg = get_preset("mvsa_single").override({**TINY_MODEL, "model.gradient_checkpointing": True})
    torch.manual_seed(0)
    model, tokenizer = create_model(cfg, tokenizer_texts=TEXTS * 4)
    ids = tokenizer(TEXTS, padding=True, return_tensors="pt")
    runs = []
    for trim in (False, True):
        copy_ = copy.deepcopy(model).train()
        if trim:
            trim_relative_spans(copy_)
        torch.manual_seed(3)
        out = copy_.text(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
        out.pow(2).mean().backward()
        runs.append((out.detach(), {n: p.grad for n, p in copy_.named_parameters() if p.grad is not None}))
    (out_full, grads_full), (out_trim, grads_trim) = runs
    assert torch.equal(out_full, out_trim) and grads_full.keys() == grads_trim.keys() and grads_full
    assert all(torch.equal(grads_full[n], grads_trim[n]) for n in grads_full)
