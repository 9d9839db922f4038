"""Training's `train.mixed_precision=auto` (clara.precision.resolve_training_precision): the inference
policy at the model's encoder width, decided before the model is built; and bf16 autocast changes a
tiny training step's loss by no more than bf16 rounding. No timings are asserted."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from clara import precision
from clara.config import get_preset
from clara.data.synthetic import write_synthetic
from clara.model.encoders import configured_encoder_width
from clara.train.benchmark import BenchmarkOptions, TrainRunner, base_config, load_benchmark_data, our_settings
from test_train import run_script

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op): the tiny steps below moved the
# loss (~1.5) by 2e-5 - 1.3e-3 in bf16 (0.1 %); 1 % leaves room and still catches a wrong cast
# (fp16 overflow, a head left in bf16 by the loss, a lost gradient), which moves it by far more.
BF16_LOSS_RTOL = 0.01


def model_config(encoders: str):
    return get_preset("mvsa_single").override({"model.encoders": encoders}).model


def test_auto_follows_the_probe_at_the_encoders_width(monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    tiny, full = configured = (configured_encoder_width(model_config("tiny")),
                               configured_encoder_width(model_config("random-full")))
    assert configured == (64, 768)  # read from the configs, before any model exists
    # Tiny encoders train in fp32 on any host, whatever the probe says (the test suite is unchanged).
    for probe in (precision.PrecisionProbe("AVX512", "bf16", "injected: bf16 3x"),
                  precision.PrecisionProbe("AVX2", "fp32", "injected: emulated")):
        monkeypatch.setattr(precision, "cpu_precision_probe", lambda probe=probe: probe)
        chosen, reason = precision.resolve_training_precision("auto", "cpu", tiny)
        assert chosen == "no" and "too narrow" in reason
        # Full-size encoders get the probe's choice, and the probe's reason is what the log records.
        chosen, reason = precision.resolve_training_precision("auto", "cpu", full)
        assert chosen == {"bf16": "bf16", "fp32": "no"}[probe.precision] and probe.reason in reason
        assert our_settings("cpu", full).precision == probe.precision  # the benchmark's "ours" the same
        assert our_settings("cpu", tiny).precision == "fp32"
    assert precision.resolve_training_precision("auto", "cpu", None)[0] == "no"  # width unknown
    assert precision.resolve_training_precision("bf16", "cpu", tiny) == ("bf16", "train.mixed_precision=bf16")
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.resolve_training_precision("auto", "cpu", full)[0] == "no"  # the override wins
    monkeypatch.setenv(precision.PRECISION_ENV, "bf16")
    assert precision.resolve_training_precision("auto", "cpu", tiny)[0] == "bf16"


def test_this_hosts_probe_decides_full_size_training(monkeypatch):
    """With the real probe: tiny is fp32 here too; full size is whatever this CPU measured, said why."""
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    probe = precision.cpu_precision_probe()
    assert precision.resolve_mixed_precision("auto", "cpu", 64) == "no"
    chosen, reason = precision.resolve_training_precision("auto", "cpu", 768)
    assert chosen == ("bf16" if probe.precision == "bf16" else "no")
    assert reason == f"auto: probe: {probe.reason}" and probe.capability in reason


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return Path(write_synthetic("mvsa_single", tmp_path_factory.mktemp("train_precision") / "data",
                                n=40, seed=3, quirks=False)["out_dir"])


def test_bf16_training_steps_match_fp32_losses(tiny_data, tmp_path):
    """The benchmark's training step (forward, CLARA loss, backward, clipping, AdamW) on the same
    batches and dropout draws, in fp32 and under bf16 autocast: losses within BF16_LOSS_RTOL."""
    torch.set_num_threads(1)
    cfg = base_config(BenchmarkOptions(dataset="mvsa_single", data_dir=str(tiny_data), encoders="tiny", batch_size=8))
    data = load_benchmark_data(cfg)
    fp32 = our_settings("cpu", 64)
    runners = [TrainRunner(settings, cfg, data, None, "cpu", str(tmp_path / "cache"))
               for settings in (fp32, dataclasses.replace(fp32, name="ours_bf16", precision="bf16"))]
    for step in range(3):
        for runner in runners:
            torch.manual_seed(100 + step)  # the same dropout masks for both
            runner.step(record=False)
    fp32_losses, bf16_losses = (runner.losses for runner in runners)
    assert bf16_losses == pytest.approx(fp32_losses, rel=BF16_LOSS_RTOL)
    assert bf16_losses != fp32_losses  # bf16 did run (an exact match would mean no autocast)


def test_the_training_log_says_which_precision_and_why(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    settings = {"model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4", "train.epochs": "1",
                "train.max_steps_per_epoch": "1", "train.batch_size": "8", "data.check_images": "false",
                "train.calibrate": "false"}
    done = run_script("--dataset", "mvsa_single", "--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "run"),
                      *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mixed precision no (auto: encoders 64 wide: too narrow for bf16 to pay" in done.stdout + done.stderr
