"""Side-by-side speed measurements of CLARA: the published pipeline's settings against ours.

    report = run_benchmark(BenchmarkOptions(dataset="mvsa_single", data_dir="data/x", encoders="random-full"))
    print(format_report(report)); json.dumps(report)

What is measured (docs/BENCHMARKS.md has the numbers and the reasoning):
- training samples/s, running the real forward, loss, backward and optimizer step on real batches
  from the data folder, for each `TrainSettings` (published vs ours). The settings run
  INTERLEAVED (one step of each in turn, after warm-up steps), so that load from other
  processes on a shared machine hits both alike; the ratio is the robust number;
- data loading alone (images/s through each settings' Dataset + Collator);
- prediction latency (one image path + text through `Predictor.predict`, preprocessing included)
  p50/p95, and batch throughput;
- one explanation (text LIG + image IG at the explainer's default steps) beside a plain prediction;
- peak memory: the process's peak RSS on CPU, `torch.cuda.max_memory_allocated` on a GPU.

`compare_quality` trains tiny-encoder models on a (synthetic) folder with and without each kept
optimisation and reports their val/test metrics side by side: the check that a speed-up does not
change what is learned.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from clara.config import Config, get_preset
from clara.data import CLARADataset, Collator, LoadedDataset, load_dataset
from clara.data.dataset import MODEL_INPUTS
from clara.data.images import ImageTransform, model_image_transform
from clara.train.losses import class_weights, clara_loss
from clara.train.samplers import LengthGroupedSampler, build_sampler, count_classes, token_lengths



@dataclass(frozen=True)
class TrainSettings:
    """One way of running training steps; `published_settings` and `our_settings` build the two compared."""
    name: str
    pad_to_max_length: bool  # pad every text to max_text_length (the notebooks) or to the batch's longest
    gradient_checkpointing: bool
    precision: str  # fp32 | fp16 (autocast + GradScaler, the notebooks' AMP) | bf16 (autocast)
    image_cache: bool  # uint8 crops from clara.data.image_cache instead of per-sample decode + resize
    length_grouped: bool  # clara.train.samplers.LengthGroupedSampler
    fused_adamw: bool
    num_workers: int = 0


def published_settings(device: str) -> TrainSettings:
    """The notebooks: pad to 128, per-sample PIL preprocessing, gradient checkpointing, no cache;
    AMP fp16 on a GPU, fp32 on CPU."""
    return TrainSettings("published_settings", pad_to_max_length=True, gradient_checkpointing=True,
                         precision="fp16" if device == "cuda" else "fp32", image_cache=False,
                         length_grouped=False, fused_adamw=False)


def our_settings(device: str) -> TrainSettings:
    """What the measurements justify (docs/BENCHMARKS.md): dynamic padding, no gradient
    checkpointing, the decoded-image cache; bf16 autocast and fused AdamW on a GPU. fp32 on CPU:
    this machine's CPUs lack AVX-512 BF16, and there bf16 matmuls are far slower. Length-grouped
    batches are left out: they lowered val F1 in the short quality runs."""
    on_gpu = device == "cuda"
    return TrainSettings("ours", pad_to_max_length=False, gradient_checkpointing=False,
                         precision="bf16" if on_gpu else "fp32", image_cache=True, length_grouped=False,
                         fused_adamw=on_gpu, num_workers=4 if on_gpu else 0)


@dataclass
class BenchmarkOptions:
    dataset: str
    data_dir: str
    encoders: str = "random-full"
    device: str = "cpu"
    steps: int = 3
    warmup_steps: int = 1
    batch_size: int = 16
    predict_runs: int = 20
    explain: bool = True
    train: bool = True
    predict: bool = True
    cache_dir: str | None = None  # image cache folder; None: a folder inside the system temp dir
    threads: int | None = None  # torch threads; None: leave torch's default (one per core)
    quantize_check: bool = True  # also time int8 dynamic quantisation for prediction, with its accuracy cost
    seed: int = 42
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def machine_description(device: str) -> dict[str, Any]:
    """CPU model, core count, torch version and, on a GPU, its name."""
    cpu_model = platform.processor() or "unknown"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model in ("unknown", "x86_64", ""):
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    info: dict[str, Any] = {
        "cpu": cpu_model, "cores": torch.get_num_threads(), "torch": torch.__version__,
        "python": sys.version.split()[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_memory_mb(device: str) -> float:
    """Peak RSS of this process (CPU) or peak allocated GPU memory since the last reset (cuda), MiB."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device, dtype=dtype)


def base_config(options: BenchmarkOptions) -> Config:
    cfg = get_preset(options.dataset).override({
        "data.data_dir": options.data_dir, "model.encoders": options.encoders,
        "train.batch_size": options.batch_size, "train.seed": options.seed, **options.overrides})
    return cfg


def load_benchmark_data(cfg: Config) -> LoadedDataset:
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir, protocol=cfg.data.protocol, hfm_label=cfg.data.hfm_label,
                        splits_file=cfg.data.splits_file, seed=cfg.data.split_seed, check_images=False)
    if not data.splits.get("train"):
        raise ValueError(f"{cfg.data.data_dir} has no training posts; the benchmark needs some")
    return data


def build_train_loader(settings: TrainSettings, cfg: Config, data: LoadedDataset, tokenizer: Any,
                       transform: ImageTransform, cache_dir: str | None, device: str) -> DataLoader:
    """The training DataLoader `settings` describe, built as clara.train.loop builds it."""
    samples = data.splits["train"]
    labels = [s.label for s in samples]
    image_cache = None
    if settings.image_cache:
        from clara.data.image_cache import ImageCache
        image_cache = ImageCache.build([s.image_path for s in samples], transform, cache_dir, progress=False)
    sampler = build_sampler(cfg.train.sampler, labels, len(cfg.labels), seed=cfg.train.seed,
                            negative_index=cfg.labels.index("negative") if "negative" in cfg.labels else None,
                            negative_min_fraction=cfg.train.negative_min_fraction)
    if settings.length_grouped:
        lengths = token_lengths(tokenizer, [s.text for s in samples], cfg.data.max_text_length)
        sampler = LengthGroupedSampler(sampler, lengths, cfg.train.batch_size, seed=cfg.train.seed)
    collator = Collator(tokenizer, max_length=cfg.data.max_text_length, pad_to_max_length=settings.pad_to_max_length,
                        normalize=transform)
    return DataLoader(CLARADataset(samples, transform, image_cache), batch_size=cfg.train.batch_size, sampler=sampler,
                      collate_fn=collator, num_workers=settings.num_workers, pin_memory=device == "cuda",
                      persistent_workers=settings.num_workers > 0)


def _endless(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


class TrainRunner:
    """A model, optimizer and batch stream for one TrainSettings; `step()` times one training step
    (fetching the batch included, since per-sample preprocessing is part of the published cost)."""

    def __init__(self, settings: TrainSettings, cfg: Config, data: LoadedDataset, tokenizer: Any | None,
                 device: str, cache_dir: str | None):
        from clara.model import create_model

        self.settings = settings
        self.device = device
        self.cfg = cfg.override({"model.gradient_checkpointing": settings.gradient_checkpointing,
                                 "data.pad_to_max_length": settings.pad_to_max_length})
        torch.manual_seed(cfg.train.seed)  # the same trainable initial weights for every settings
        texts = [s.text for s in data.splits["train"]]
        model, self.tokenizer = create_model(self.cfg, tokenizer_texts=texts, tokenizer=tokenizer)
        self.model = model.to(device).train()
        self.transform = model_image_transform(model)
        self.loader = build_train_loader(settings, self.cfg, data, self.tokenizer, self.transform, cache_dir, device)
        self.batches = _endless(self.loader)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = trainable
        extra = {"fused": True} if settings.fused_adamw else {}
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, **extra)
        self.scaler = torch.amp.GradScaler(device) if settings.precision == "fp16" else None
        counts = count_classes([s.label for s in data.splits["train"]], len(cfg.labels))
        self.weights = class_weights(counts, cfg.labels, cfg.train.class_weight_boost).to(device)
        self.times: list[float] = []
        self.samples: list[int] = []
        self.text_tokens: list[int] = []
        self.peak_mb = 0.0

    def step(self, record: bool) -> float:
        _sync(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        batch = next(self.batches)
        inputs = {key: batch[key].to(self.device, non_blocking=True) for key in MODEL_INPUTS}
        labels = batch["labels"].to(self.device, non_blocking=True)
        with _autocast(self.device, self.settings.precision):
            out = self.model(**inputs)
            loss, _ = clara_loss(out, labels, self.weights, self.cfg.train)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.train.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.train.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        elapsed = time.perf_counter() - started
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"{self.settings.name}: the loss became {loss_value} in the benchmark")
        if record:
            self.times.append(elapsed)
            self.samples.append(len(labels))
            self.text_tokens.append(int(inputs["input_ids"].shape[1]))
            self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))
        return elapsed

    def summary(self) -> dict[str, Any]:
        total = sum(self.times)
        result = {
            "samples_per_s": sum(self.samples) / total if total else float("nan"),
            "step_s": [round(t, 3) for t in self.times],
            "mean_padded_text_tokens": statistics.fmean(self.text_tokens) if self.text_tokens else None,
            "settings": dataclasses.asdict(self.settings),
        }
        if self.device == "cuda":
            result["peak_memory_mb"] = self.peak_mb
        return result


def measure_training(cfg: Config, data: LoadedDataset, settings: Sequence[TrainSettings], steps: int,
                     warmup_steps: int, device: str, cache_dir: str | None,
                     log: Any = print) -> dict[str, dict[str, Any]]:
    """Training samples/s per settings, measured interleaved: each round runs one step of every
    settings in turn; the first `warmup_steps` rounds are not recorded."""
    runners: list[TrainRunner] = []
    tokenizer = None
    for item in settings:
        runner = TrainRunner(item, cfg, data, tokenizer, device, cache_dir)
        tokenizer = runner.tokenizer  # one tokenizer for all, so they see the same tokens
        runners.append(runner)
    for round_index in range(warmup_steps + steps):
        record = round_index >= warmup_steps
        # Alternate which settings goes first, so neither always follows the other's cache state.
        order = runners if round_index % 2 == 0 else list(reversed(runners))
        for runner in order:
            elapsed = runner.step(record)
            log(f"  train {'step' if record else 'warm-up'} {round_index + 1}: {runner.settings.name} {elapsed:.2f} s")
    results = {runner.settings.name: runner.summary() for runner in runners}
    del runners
    gc.collect()
    return results


def measure_data_loading(cfg: Config, data: LoadedDataset, tokenizer: Any, transform: ImageTransform,
                         settings: TrainSettings, device: str, cache_dir: str | None,
                         max_images: int = 64) -> dict[str, float]:
    """Images/s through `settings`' Dataset + Collator alone (no model), over at most `max_images`."""
    loader = build_train_loader(settings, cfg, data, tokenizer, transform, cache_dir, device)
    seen = 0
    started = time.perf_counter()
    for batch in loader:
        seen += len(batch["ids"])
        if seen >= max_images:
            break
    elapsed = time.perf_counter() - started
    return {"images_per_s": seen / elapsed, "images": seen}


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_predict(predictor: Any, image_paths: Sequence[Path], texts: Sequence[str], runs: int,
                    batch_size: int) -> dict[str, float]:
    """Latency of one image (a path: decoding and preprocessing included) + text, p50/p95 over `runs`
    calls after one warm-up, and samples/s for `batch_size` posts per call."""
    predictor.predict([image_paths[0]], [texts[0]])  # warm-up
    latencies = []
    for i in range(runs):
        index = i % len(image_paths)
        started = time.perf_counter()
        predictor.predict([image_paths[index]], [texts[index]])
        _sync(predictor.device.type)
        latencies.append((time.perf_counter() - started) * 1000)
    batch_images = [image_paths[i % len(image_paths)] for i in range(batch_size)]
    batch_texts = [texts[i % len(texts)] for i in range(batch_size)]
    predictor.predict(batch_images, batch_texts, batch_size=batch_size)  # warm-up at this shape
    started = time.perf_counter()
    predictor.predict(batch_images, batch_texts, batch_size=batch_size)
    _sync(predictor.device.type)
    batch_s = time.perf_counter() - started
    return {"p50_ms": _percentile(latencies, 0.50), "p95_ms": _percentile(latencies, 0.95),
            "batch_samples_per_s": batch_size / batch_s, "runs": runs}


def quantisation_agreement(reference: Any, quantised: Any, image_paths: Sequence[Path],
                           texts: Sequence[str]) -> dict[str, float]:
    """How far int8 predictions move from fp32 ones on the same posts: label agreement and the
    largest absolute change of any class probability."""
    ref = reference.predict(list(image_paths), list(texts))
    quant = quantised.predict(list(image_paths), list(texts))
    agree = sum(a.label == b.label for a, b in zip(ref, quant)) / len(ref)
    max_change = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(ref, quant) for k in a.probs)
    return {"label_agreement": agree, "max_prob_change": max_change, "posts": len(ref)}


def measure_explain(predictor: Any, image_path: Path, text: str) -> dict[str, float]:
    """Seconds for one explanation (text LIG + image IG, the explainer's default steps) and for one
    plain prediction of the same post."""
    from clara.explain import Explainer

    explainer = Explainer(predictor)
    started = time.perf_counter()
    predictor.predict([image_path], [text])
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    explanation = explainer.explain(image_path, text, methods=["text_ig", "image_ig"])
    explain_s = time.perf_counter() - started
    return {"explain_s": explain_s, "predict_s": predict_s, "n_steps": explainer.n_steps,
            "timings": dict(explanation.timings)}


def _predictor(cfg: Config, data: LoadedDataset, device: str, **predictor_options: Any) -> Any:
    from clara.inference import Predictor
    from clara.model import create_model

    torch.manual_seed(cfg.train.seed)
    model, tokenizer = create_model(cfg, tokenizer_texts=[s.text for s in data.splits["train"]])
    return Predictor(model, tokenizer, cfg, cfg.labels, device=device, **predictor_options)


def run_benchmark(options: BenchmarkOptions, log: Any = print) -> dict[str, Any]:
    """All measurements of the module docstring; returns the JSON-ready report."""
    import tempfile

    device = options.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    if options.threads:
        torch.set_num_threads(options.threads)
    cfg = base_config(options)
    data = load_benchmark_data(cfg)
    cache_dir = options.cache_dir or str(Path(tempfile.gettempdir()) / "clara_benchmark_cache")
    published, ours = published_settings(device), our_settings(device)
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "machine": machine_description(device),
                              "dataset": options.dataset, "data_dir": str(options.data_dir),
                              "encoders": options.encoders, "batch_size": options.batch_size,
                              "steps": options.steps, "warmup_steps": options.warmup_steps,
                              "train_posts": len(data.splits["train"])}

    if options.train:
        log(f"training: {options.warmup_steps} warm-up + {options.steps} measured steps of each settings, interleaved")
        runs = measure_training(cfg, data, [published, ours], options.steps, options.warmup_steps, device, cache_dir, log)
        speedup = runs["ours"]["samples_per_s"] / runs["published_settings"]["samples_per_s"]
        report["train"] = {**runs, "speedup": speedup}

    # Data loading alone needs the tokenizer and preprocessing only; the predictor (built anyway
    # for the prediction timings) supplies both.
    predictor = _predictor(cfg, data, device)
    transform = predictor.image_transform
    loading = {item.name: measure_data_loading(cfg, data, predictor.tokenizer, transform, item, device, cache_dir)
               for item in (published, ours)}
    report["data_loading"] = loading
    report["data_images_per_s"] = loading["ours"]["images_per_s"]

    posts = data.splits.get("test") or data.splits["train"]
    image_paths = [s.image_path for s in posts[:16]]
    texts = [s.text for s in posts[:16]]
    if options.predict:
        log(f"prediction: {options.predict_runs} single-post calls and one batch of {options.batch_size}")
        report["predict"] = measure_predict(predictor, image_paths, texts, options.predict_runs, options.batch_size)
        if options.quantize_check and device == "cpu":
            quantised = _predictor(cfg, data, device, quantize=True)
            report["predict_int8"] = {
                **measure_predict(quantised, image_paths, texts, options.predict_runs, options.batch_size),
                **quantisation_agreement(predictor, quantised, image_paths, texts)}
            del quantised
    if options.explain:
        log("explanation: text LIG + image IG")
        report["explain"] = measure_explain(predictor, image_paths[0], texts[0])
        report["explain_s"] = report["explain"]["explain_s"]
    report["peak_memory_mb"] = peak_memory_mb(device)
    report["peak_memory_kind"] = "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS"
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a `run_benchmark` report."""
    lines = [f"device {report['device']} ({report['machine'].get('gpu') or report['machine']['cpu']}, "
             f"{report['machine']['cores']} threads), torch {report['torch']}, encoders {report['encoders']}, "
             f"batch {report['batch_size']}"]
    train = report.get("train")
    if train:
        lines.append(f"{'training':<28}{'samples/s':>12}{'mean text tokens':>18}")
        for name in ("published_settings", "ours"):
            run = train[name]
            tokens = run["mean_padded_text_tokens"]
            shown = f"{tokens:.1f}" if tokens is not None else "-"
            lines.append(f"  {name:<26}{run['samples_per_s']:>12.3f}{shown:>18}")
        lines.append(f"  {'speedup (ours / published)':<26}{train['speedup']:>12.2f}x")
    loading = report.get("data_loading", {})
    for name, run in loading.items():
        lines.append(f"{'data loading ' + name:<40}{run['images_per_s']:>10.1f} images/s")
    for key, title in (("predict", "prediction fp32"), ("predict_int8", "prediction int8 dynamic")):
        if key in report:
            p = report[key]
            extra = (f", labels agree {p['label_agreement']:.0%}, max prob change {p['max_prob_change']:.3f}"
                     if "label_agreement" in p else "")
            lines.append(f"{title:<28} p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms, "
                         f"batch {p['batch_samples_per_s']:.1f} samples/s{extra}")
    if "explain" in report:
        e = report["explain"]
        lines.append(f"{'explanation (LIG + IG)':<28} {e['explain_s']:.1f} s ({e['n_steps']} steps) vs "
                     f"plain prediction {e['predict_s'] * 1000:.0f} ms")
    lines.append(f"{'peak memory':<28} {report['peak_memory_mb']:.0f} MiB ({report['peak_memory_kind']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- quality

QUALITY_VARIANTS: dict[str, dict[str, Any]] = {
    # Each kept optimisation alone against the published-settings baseline, then all together.
    "published_settings": {"data.pad_to_max_length": True, "model.gradient_checkpointing": True},
    "dynamic_padding": {"data.pad_to_max_length": False, "model.gradient_checkpointing": True},
    "no_gradient_checkpointing": {"data.pad_to_max_length": True, "model.gradient_checkpointing": False},
    "image_cache": {"data.pad_to_max_length": True, "model.gradient_checkpointing": True, "data.image_cache": True},
    "length_grouped": {"data.pad_to_max_length": False, "model.gradient_checkpointing": True,
                       "train.length_grouped": True},
    "ours": {"data.pad_to_max_length": False, "model.gradient_checkpointing": False, "data.image_cache": True},
}


# A tiny-encoder recipe that learns the synthetic task (which needs both modalities) within a few
# epochs (tests/test_train.py uses the same), so metrics differ from chance and can be compared.
QUALITY_RECIPE: dict[str, Any] = {
    "model.encoders": "tiny", "model.hidden_dim": 64, "model.fusion_heads": 4, "model.fusion_dropout": 0.0,
    "model.head_dropout": 0.0, "train.lr": 2e-3, "train.eval_batch_size": 128, "train.mixed_precision": "no",
    "data.check_images": False, "train.calibrate": False,
}


def compare_quality(dataset: str, data_dir: str, output_dir: str, epochs: int = 6, seeds: Sequence[int] = (1, 2),
                    batch_size: int = 16, variants: Sequence[str] | None = None,
                    log: Any = print) -> list[dict[str, Any]]:
    """Short tiny-encoder trainings (clara.train.loop.train, QUALITY_RECIPE) per variant of
    QUALITY_VARIANTS and seed; returns one row per run with the best val metrics and the test metrics."""
    from clara.train.loop import train

    rows = []
    for name in variants or list(QUALITY_VARIANTS):
        for seed in seeds:
            cfg = get_preset(dataset).override({
                **QUALITY_RECIPE, "data.data_dir": data_dir, "train.epochs": epochs,
                "train.patience": epochs, "train.batch_size": batch_size, "train.seed": seed,
                "train.output_dir": str(Path(output_dir) / f"{name}_seed{seed}"),
                "data.image_cache_dir": str(Path(output_dir) / "image_cache"),
                **QUALITY_VARIANTS[name]})
            started = time.perf_counter()
            result = train(cfg, progress=False)
            best = max(result.history, key=lambda entry: entry[f"val_{cfg.train.selection_metric}"])
            rows.append({"variant": name, "seed": seed, "val_f1_weighted": best["val_f1_weighted"],
                         "val_accuracy": best["val_accuracy"], "test_f1_weighted": result.metrics["f1_weighted"],
                         "test_accuracy": result.metrics["accuracy"], "best_epoch": best["epoch"],
                         "final_train_loss": result.history[-1]["train_loss"],
                         "seconds": time.perf_counter() - started})
            log(f"  quality {name} seed {seed}: val f1_w {best['val_f1_weighted']:.4f}, "
                f"test f1_w {result.metrics['f1_weighted']:.4f}, {rows[-1]['seconds']:.0f} s")
    return rows


def format_quality(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: one row per variant, metrics as mean over seeds (and each seed's value)."""
    lines = ["| variant | val F1-w (per seed) | val acc | test F1-w | test acc | last train loss |",
             "|---|---|---|---|---|---|"]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    for name, group in by_variant.items():
        def mean(key: str) -> float:
            return statistics.fmean(r[key] for r in group)
        per_seed = ", ".join(f"{r['val_f1_weighted']:.3f}" for r in group)
        lines.append(f"| {name} | {mean('val_f1_weighted'):.3f} ({per_seed}) | {mean('val_accuracy'):.3f} | "
                     f"{mean('test_f1_weighted'):.3f} | {mean('test_accuracy'):.3f} | {mean('final_train_loss'):.4f} |")
    return "\n".join(lines)
