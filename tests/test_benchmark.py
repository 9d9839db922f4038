"""scripts/benchmark.py end to end on tiny encoders and a tiny synthetic folder: the JSON contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clara.explain import EXPLAIN_DEFAULTS
from clara.train.benchmark import our_settings, published_settings
from clara.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark.py"


def run_cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def test_cli_writes_the_contract_json(tmp_path):
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=3, quirks=False)
    out = tmp_path / "bench.json"
    done = run_cli("--encoders", "tiny", "--dataset", "mvsa_single", "--data-dir", str(data_dir), "--steps", "2",
                   "--warmup-steps", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1",
                   "--predict-runs", "3", "--cache-dir", str(tmp_path / "cache"), "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and isinstance(report["torch"], str)
    train = report["train"]
    for name in ("published_settings", "ours"):
        assert train[name]["samples_per_s"] > 0
        assert len(train[name]["step_s"]) == 2
    assert train["speedup"] == pytest.approx(train["ours"]["samples_per_s"] / train["published_settings"]["samples_per_s"])
    # published pads every text to 128 tokens; ours pads to the batch's longest (tweets: far fewer)
    assert train["published_settings"]["mean_padded_text_tokens"] == 128
    assert train["ours"]["mean_padded_text_tokens"] < 40
    assert report["data_images_per_s"] > 0
    predict = report["predict"]
    assert 0 < predict["p50_ms"] <= predict["p95_ms"] and predict["batch_samples_per_s"] > 0
    int8 = report["predict_int8"]
    assert 0.0 <= int8["label_agreement"] <= 1.0 and 0.0 <= int8["max_prob_change"] <= 1.0
    # every inference path side by side, the default one named, each compared with fp32 + adapters
    paths = report["predict_paths"]
    assert {"fp32_adapters", "merged_fp32", "int8"} <= set(paths) and report["default_path"] in paths
    assert predict == paths[report["default_path"]] and int8 == paths["int8"]
    assert paths["merged_fp32"]["path"]["lora"] == "merged" and paths["fp32_adapters"]["path"]["lora"] == "adapters"
    for name, run in paths.items():
        assert 0 < run["p50_ms"] <= run["p95_ms"] and ("label_agreement" in run) == (name != "fp32_adapters")
    assert paths["merged_fp32"]["max_prob_change"] < 1e-4  # merging regroups fp32 arithmetic only
    probe = report["precision_probe"]
    assert probe["precision"] in ("fp32", "bf16") and probe["capability"] == report["machine"]["cpu_capability"]
    assert ("merged_bf16" in paths) == (tuple(probe["shape"]) != (32, 128, 128))  # not timed when emulated
    for breakdown in report["predict_breakdown"].values():
        assert breakdown["vision_ms"] > 0 and breakdown["text_ms"] > 0 and breakdown["predict_ms"] > 0
    explain = report["explain"]
    assert report["explain_s"] > 0 and explain["n_steps"] == EXPLAIN_DEFAULTS.n_steps
    assert set(explain["convergence"]) == {"text_ig", "image_ig"}
    assert all(c["steps"] >= EXPLAIN_DEFAULTS.n_steps for c in explain["convergence"].values())
    memory = report["predictor_peak_memory_mb"]
    assert 100 < memory["built"] <= memory["predicting"] <= memory["explaining"] < 64_000
    assert 100 < report["peak_memory_mb"] < 64_000
    assert "published_settings" in done.stdout and "speedup" in done.stdout and "precision probe" in done.stdout


def test_cli_refuses_bad_arguments(tmp_path):
    done = run_cli("--dataset", "mvsa_single", "--data-dir", str(tmp_path / "missing"), "--steps", "1")
    assert done.returncode == 2 and "is not a folder" in done.stderr
    done = run_cli("--dataset", "mvsa_single", "--data-dir", str(tmp_path), "--steps", "0")
    assert done.returncode == 2 and "--steps must be at least 1" in done.stderr


def test_the_two_settings_differ_as_documented():
    published, ours = published_settings("cpu"), our_settings("cpu")
    assert (published.pad_to_max_length, published.gradient_checkpointing, published.image_cache) == (True, True, False)
    assert published.precision == "fp32" and published_settings("cuda").precision == "fp16"
    assert (ours.pad_to_max_length, ours.gradient_checkpointing, ours.image_cache, ours.length_grouped) == \
        (False, False, True, False)
    assert ours.precision == "fp32" and our_settings("cuda").precision == "bf16" and our_settings("cuda").fast_paths
    assert ours.fast_paths and not published.fast_paths and not published_settings("cuda").fast_paths
