"""`scripts/benchmark.py`'s prediction and explanation measurements (clara.train.benchmark runs them):
each inference path's latency side by side (interleaved), its agreement with fp32, the time per
encoder, and one explanation at the library's defaults. What and why: docs/BENCHMARKS.md."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clara.config import Config
from clara.data import LoadedDataset
from clara.explain import Explainer
from clara.inference import Predictor
from clara.model import create_model
from clara.model.relative_span import untrim_relative_spans
from clara.precision import SCREEN_SHAPE, cpu_precision_probe, resolve_precision


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_predict_paths(predictors: dict[str, Any], image_paths: Sequence[Path], texts: Sequence[str], runs: int,
                          batch_size: int) -> dict[str, dict[str, float]]:
    """Single-post latency (an image path: decoding and preprocessing included, + a text), p50/p95
    over `runs` calls after one warm-up, and samples/s for `batch_size` posts per call, for several
    predictors INTERLEAVED: each round times one call of every predictor in turn (the order reversed
    every other round), so load from other processes hits all alike and their ratios are the robust
    numbers."""
    for predictor in predictors.values():
        predictor.predict([image_paths[0]], [texts[0]])  # warm-up
    latencies: dict[str, list[float]] = {name: [] for name in predictors}
    for i in range(runs):
        index = i % len(image_paths)
        order = list(predictors.items()) if i % 2 == 0 else list(reversed(predictors.items()))
        for name, predictor in order:
            started = time.perf_counter()
            predictor.predict([image_paths[index]], [texts[index]])
            _sync(predictor.device.type)
            latencies[name].append((time.perf_counter() - started) * 1000)
    batch_images = [image_paths[i % len(image_paths)] for i in range(batch_size)]
    batch_texts = [texts[i % len(texts)] for i in range(batch_size)]
    results = {}
    for name, predictor in predictors.items():
        predictor.predict(batch_images, batch_texts, batch_size=batch_size)  # warm-up at this shape
        started = time.perf_counter()
        predictor.predict(batch_images, batch_texts, batch_size=batch_size)
        _sync(predictor.device.type)
        batch_s = time.perf_counter() - started
        results[name] = {"p50_ms": _percentile(latencies[name], 0.50), "p95_ms": _percentile(latencies[name], 0.95),
                         "min_ms": min(latencies[name]), "batch_samples_per_s": batch_size / batch_s, "runs": runs}
    return results


def prediction_agreement(reference: Any, other: Any, image_paths: Sequence[Path],
                         texts: Sequence[str]) -> dict[str, float]:
    """How far another path's predictions move from the reference's on the same posts: label agreement
    and the largest absolute change of any class probability."""
    ref = reference.predict(list(image_paths), list(texts))
    out = other.predict(list(image_paths), list(texts))
    agree = sum(a.label == b.label for a, b in zip(ref, out)) / len(ref)
    max_change = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(ref, out) for k in a.probs)
    return {"label_agreement": agree, "max_prob_change": max_change, "posts": len(ref)}



def measure_breakdown(predictors: dict[str, Any], image_path: Path, text: str, runs: int = 5
                      ) -> dict[str, dict[str, float]]:
    """Median ms of each encoder, the fusion + heads and the whole `predict` call for one post, per
    predictor, interleaved as in `measure_predict_paths`: where a prediction's time goes."""
    prepared = {}
    for name, predictor in predictors.items():
        batch = predictor.encode([image_path], [text])
        with torch.inference_mode(), predictor.autocast():
            tokens = predictor.model.encode(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        prepared[name] = (predictor, batch, tokens)
    timings = {name: {"vision_ms": [], "text_ms": [], "decide_ms": [], "predict_ms": []} for name in predictors}
    for round_index in range(runs):
        order = list(prepared.items()) if round_index % 2 == 0 else list(reversed(prepared.items()))
        for name, (predictor, batch, (vision_tokens, text_tokens)) in order:
            model, mask = predictor.model, batch["attention_mask"]
            steps = (("vision_ms", lambda: model.encode(batch["pixel_values"], None, None, text=False)),
                     ("text_ms", lambda: model.encode(None, batch["input_ids"], mask, vision=False)),
                     ("decide_ms", lambda: model.decide(vision_tokens, text_tokens, mask)))
            with torch.inference_mode(), predictor.autocast():
                for key, run in steps:
                    started = time.perf_counter()
                    run()
                    timings[name][key].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            predictor.predict([image_path], [text])
            timings[name]["predict_ms"].append((time.perf_counter() - started) * 1000)
    return {name: {key: statistics.median(values) for key, values in per_step.items()}
            | {"text_tokens": int(prepared[name][1]["input_ids"].shape[1])} for name, per_step in timings.items()}


def measure_explain(predictor: Any, image_path: Path, text: str) -> dict[str, Any]:
    """Seconds for one explanation (text + image integrated gradients at the library's defaults,
    EXPLAIN_DEFAULTS) and for one plain prediction of the same post; steps and convergence of each."""
    explainer = Explainer(predictor)
    started = time.perf_counter()
    predictor.predict([image_path], [text])
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    explanation = explainer.explain(image_path, text, methods=["text_ig", "image_ig"])
    explain_s = time.perf_counter() - started
    convergence = {name: {"steps": result.n_steps, "steps_tried": list(result.steps_tried),
                          "delta": result.convergence_delta, "output_change": result.output_change,
                          "converged": result.converged}
                   for name, result in (("text_ig", explanation.text_ig), ("image_ig", explanation.image_ig))}
    return {"explain_s": explain_s, "predict_s": predict_s, "n_steps": explainer.n_steps,
            "max_steps": explainer.settings.max_steps, "timings": dict(explanation.timings),
            "convergence": convergence, "path": predictor.path.to_dict()}


def _predictor(cfg: Config, data: LoadedDataset, device: str, **predictor_options: Any) -> Predictor:
    """A fresh model (same seed every time) in a Predictor; LoRA B drawn from N(0, 0.01^2), since a
    fresh adapter's B is zero and merging it would change nothing."""
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = create_model(cfg, tokenizer_texts=[s.text for s in data.splits["train"]])
    generator = torch.Generator().manual_seed(cfg.train.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    return Predictor(model, tokenizer, cfg, cfg.labels, device=device, **predictor_options)


def prediction_paths(cfg: Config, data: LoadedDataset, device: str, int8: bool) -> tuple[dict[str, Predictor], str]:
    """The inference paths compared, and the name of the one `Predictor.from_checkpoint` runs here by
    default (the precision probe's choice). bf16 is left out where the probe found it emulated."""
    default_precision = resolve_precision(None, device)[0]
    paths = {"fp32_adapters": _predictor(cfg, data, device, precision="fp32"),
             "merged_fp32": _predictor(cfg, data, device, precision="fp32", prepare=True)}
    emulated = device == "cpu" and cpu_precision_probe().shape == SCREEN_SHAPE  # screened out: seconds per call
    if not emulated:
        paths["merged_bf16"] = _predictor(cfg, data, device, precision="bf16", prepare=True)
        # The same without DeBERTa's trimmed relative span (clara.model.relative_span): that lever alone.
        paths["merged_bf16_full_span"] = _predictor(cfg, data, device, precision="bf16", prepare=True)
        untrim_relative_spans(paths["merged_bf16_full_span"].model)
    if int8 and device == "cpu":
        paths["int8"] = _predictor(cfg, data, device, quantize=True)
    return paths, "merged_bf16" if default_precision == "bf16" and "merged_bf16" in paths else "merged_fp32"
