"""Side-by-side speed measurements of CLARA: the published pipeline's settings against ours.

    report = run_benchmark(BenchmarkOptions(dataset="mvsa_single", data_dir="data/x", encoders="random-full"))
    print(format_report(report)); json.dumps(report)

Training samples/s (real steps, the settings interleaved so machine load hits all alike; ours at
`train.mixed_precision=auto`'s precision, and in fp32 beside it where that is bf16), data loading,
prediction latency of each inference path side by side (fp32 with the LoRA adapters, merged,
merged + bf16, int8; also interleaved), per-encoder time, one explanation at the library's
defaults, the precision probe's decision, peak memory of the process, of one training run and of
one Predictor alone (the prediction and explanation parts in clara.train.benchmark_predict);
`compare_quality` (clara.train.benchmark_quality) checks that a speed-up does not change what is learned.
What is measured and why: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from clara.memory import peak_rss_mb
from clara.config import Config, get_preset
from clara.data import LoadedDataset, load_dataset
from clara.data.dataset import MODEL_INPUTS
from clara.data.images import ImageTransform, model_image_transform
from clara.explain import Explainer
from clara.model import create_model
from clara.model.encoders import configured_encoder_width
from clara.precision import autocast, cpu_precision_probe, resolve_training_precision
from clara.train.benchmark_predict import (_predictor, _sync, measure_breakdown, measure_explain,
                                          measure_predict_paths, prediction_agreement, prediction_paths)
from clara.train.data import GPU_LOADER_WORKERS, build_image_cache, build_train_loader
from clara.train.fast_paths import apply_fast_paths, build_optimizer
from clara.train.losses import clara_loss, training_class_weights
from clara.train.samplers import count_classes

@dataclass(frozen=True)
class TrainSettings:
    """One way of running training steps; `published_settings` and `our_settings` build the two compared."""
    name: str
    pad_to_max_length: bool  # pad every text to max_text_length (the notebooks) or to the batch's longest
    gradient_checkpointing: bool
    precision: str  # fp32 | fp16 (autocast + GradScaler, the notebooks' AMP) | bf16 (autocast)
    image_cache: bool  # uint8 crops from clara.data.image_cache instead of per-sample decode + resize
    length_grouped: bool  # clara.train.samplers.LengthGroupedSampler
    fast_paths: bool  # clara.train.fast_paths, as train.fast_paths (fused AdamW, once-cast frozen weights, ...)
    num_workers: int = 0


def published_settings(device: str) -> TrainSettings:
    """The notebooks: pad to 128, per-sample PIL preprocessing, gradient checkpointing, no cache;
    AMP fp16 on a GPU, fp32 on CPU."""
    return TrainSettings("published_settings", pad_to_max_length=True, gradient_checkpointing=True,
                         precision="fp16" if device == "cuda" else "fp32", image_cache=False,
                         length_grouped=False, fast_paths=False)


def our_settings(device: str, hidden_size: int | None = None) -> TrainSettings:
    """What the measurements justify (docs/BENCHMARKS.md): dynamic padding, no gradient
    checkpointing, the decoded-image cache, the training loop's fast paths; bf16 autocast on a GPU. On CPU the
    precision `train.mixed_precision=auto` resolves to for encoders `hidden_size` wide (the probe:
    bf16 where the CPU has bf16 units and the encoders are wide; None: fp32). Length-grouped
    batches are left out: they lowered val F1 in the short quality runs."""
    on_gpu = device == "cuda"
    cpu_precision = "bf16" if resolve_training_precision("auto", "cpu", hidden_size)[0] == "bf16" else "fp32"
    return TrainSettings("ours", pad_to_max_length=False, gradient_checkpointing=False,
                         precision="bf16" if on_gpu else cpu_precision, image_cache=True, length_grouped=False,
                         fast_paths=True, num_workers=GPU_LOADER_WORKERS if on_gpu else 0)


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
    predictor_memory: bool = True  # peak RSS of one Predictor in a process of its own (CPU)
    train_memory: bool = True  # peak RSS of one training run (ours) in a process of its own (CPU)
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
    """Peak RSS of this process (CPU) or peak allocated GPU memory since the last reset (cuda), MiB.
    (clara.memory says why not getrusage)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


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


def settings_config(cfg: Config, settings: TrainSettings, cache_dir: str | None) -> Config:
    """`cfg` with the data and training options `settings` choose."""
    cache = {"data.image_cache_dir": cache_dir} if cache_dir is not None else {}
    return cfg.override({"model.gradient_checkpointing": settings.gradient_checkpointing,
                         "data.pad_to_max_length": settings.pad_to_max_length, "data.image_cache": settings.image_cache,
                         "train.length_grouped": settings.length_grouped, "train.num_workers": settings.num_workers,
                         **cache})


def settings_train_loader(settings: TrainSettings, cfg: Config, data: LoadedDataset, tokenizer: Any,
                          transform: ImageTransform, cache_dir: str | None, device: str) -> DataLoader:
    """The training DataLoader `settings` describe, built by clara.train.data as the loop builds it."""
    cfg = settings_config(cfg, settings, cache_dir)
    samples = data.splits["train"]
    return build_train_loader(cfg, samples, tokenizer, transform, build_image_cache(cfg, samples, transform),
                              pin_memory=device == "cuda", persistent_workers=True)


def _endless(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


class TrainRunner:
    """A model, optimizer and batch stream for one TrainSettings; `step()` times one training step
    (fetching the batch included, since per-sample preprocessing is part of the published cost)."""

    def __init__(self, settings: TrainSettings, cfg: Config, data: LoadedDataset, tokenizer: Any | None,
                 device: str, cache_dir: str | None):
        self.settings = settings
        self.device = device
        self.cfg = settings_config(cfg, settings, cache_dir)
        torch.manual_seed(cfg.train.seed)  # the same trainable initial weights for every settings
        texts = [s.text for s in data.splits["train"]]
        model, self.tokenizer = create_model(self.cfg, tokenizer_texts=texts, tokenizer=tokenizer)
        self.model = model.to(device).train()
        self.transform = model_image_transform(model)
        self.loader = settings_train_loader(settings, cfg, data, self.tokenizer, self.transform, cache_dir, device)
        self.batches = _endless(self.loader)
        self.fast_paths = apply_fast_paths(self.model, settings.precision, device, enabled=settings.fast_paths)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = trainable
        self.optimizer = build_optimizer(trainable, cfg.train.lr, cfg.train.weight_decay,
                                         fused=self.fast_paths.fused_optimizer)
        self.scaler = torch.amp.GradScaler(device) if settings.precision == "fp16" else None
        counts = count_classes([s.label for s in data.splits["train"]], len(cfg.labels))
        self.weights = training_class_weights(cfg.train, counts, cfg.labels, device)
        self.times: list[float] = []
        self.samples: list[int] = []
        self.text_tokens: list[int] = []
        self.phases: dict[str, list[float]] = {"fetch_s": [], "forward_s": [], "backward_s": [], "optimizer_s": []}
        self.losses: list[float] = []  # every step's loss, warm-up included
        self.peak_mb = 0.0

    def step(self, record: bool) -> float:
        _sync(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        marks = [started]  # the phases' end times (on a GPU without a sync each: only the total is exact there)
        batch = next(self.batches)
        inputs = {key: batch[key].to(self.device, non_blocking=True) for key in MODEL_INPUTS}
        labels = batch["labels"].to(self.device, non_blocking=True)
        marks.append(time.perf_counter())
        with autocast(self.settings.precision, self.device):
            out = self.model(**inputs)
            loss, _ = clara_loss(out, labels, self.weights, self.cfg.train)
        marks.append(time.perf_counter())
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            marks.append(time.perf_counter())
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.train.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            marks.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.train.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        marks.append(time.perf_counter())
        elapsed = marks[-1] - started
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"{self.settings.name}: the loss became {loss_value} in the benchmark")
        self.losses.append(loss_value)
        if record:
            self.times.append(elapsed)
            self.samples.append(len(labels))
            self.text_tokens.append(int(inputs["input_ids"].shape[1]))
            for key, begin, end in zip(self.phases, marks, marks[1:]):
                self.phases[key].append(end - begin)
            self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))
        return elapsed

    def summary(self) -> dict[str, Any]:
        total = sum(self.times)
        result = {
            "samples_per_s": sum(self.samples) / total if total else float("nan"),
            "step_s": [round(t, 3) for t in self.times],
            "best_step_s": min(self.times) if self.times else None,  # the least disturbed on a shared machine
            "mean_padded_text_tokens": statistics.fmean(self.text_tokens) if self.text_tokens else None,
            "phases_mean_s": {key: statistics.fmean(v) for key, v in self.phases.items() if v},
            "settings": dataclasses.asdict(self.settings),
            "fast_paths": self.fast_paths.to_dict(),
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
    loader = settings_train_loader(settings, cfg, data, tokenizer, transform, cache_dir, device)
    seen = 0
    started = time.perf_counter()
    for batch in loader:
        seen += len(batch["ids"])
        if seen >= max_images:
            break
    elapsed = time.perf_counter() - started
    return {"images_per_s": seen / elapsed, "images": seen}


def run_benchmark(options: BenchmarkOptions, log: Any = print) -> dict[str, Any]:
    """All measurements of the module docstring; returns the JSON-ready report."""
    device = options.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    if options.threads:
        torch.set_num_threads(options.threads)
    cfg = base_config(options)
    data = load_benchmark_data(cfg)
    cache_dir = options.cache_dir or str(Path(tempfile.gettempdir()) / "clara_benchmark_cache")
    width = configured_encoder_width(cfg.model)
    published, ours = published_settings(device), our_settings(device, width)
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "machine": machine_description(device),
                              "dataset": options.dataset, "data_dir": str(options.data_dir),
                              "encoders": options.encoders, "batch_size": options.batch_size,
                              "steps": options.steps, "warmup_steps": options.warmup_steps,
                              "train_posts": len(data.splits["train"])}

    if options.train:
        compared = [published, ours]
        if device == "cpu" and ours.precision == "bf16":  # what bf16 adds: ours in fp32 beside it
            compared.append(dataclasses.replace(ours, name="ours_fp32", precision="fp32"))
        log(f"training: {options.warmup_steps} warm-up + {options.steps} measured steps of "
            f"{', '.join(s.name for s in compared)}, interleaved")
        runs = measure_training(cfg, data, compared, options.steps, options.warmup_steps, device, cache_dir, log)
        speedup = runs["ours"]["samples_per_s"] / runs["published_settings"]["samples_per_s"]
        mixed, reason = resolve_training_precision("auto", device, width)
        report["train"] = {**runs, "speedup": speedup,
                           "precision": {"auto": mixed, "reason": reason, "encoder_width": width}}
        if "ours_fp32" in runs:
            report["train"]["speedup_fp32"] = runs["ours_fp32"]["samples_per_s"] / runs["published_settings"]["samples_per_s"]
        if options.train_memory and device == "cpu":
            log("peak memory of one training run (ours, its own process: build, 2 steps)")
            report["train_peak_memory_mb"] = _child_process(
                "_train_memory_child", dataclasses.replace(options, cache_dir=cache_dir), "", "")

    # Data loading alone needs the tokenizer and preprocessing only; the predictors (built anyway
    # for the prediction timings) supply both.
    paths, default = prediction_paths(cfg, data, device, options.quantize_check)
    predictor = paths[default]
    report["precision_probe"] = cpu_precision_probe().to_dict() if device == "cpu" else None
    report["default_path"] = default
    transform = predictor.image_transform
    loading = {item.name: measure_data_loading(cfg, data, predictor.tokenizer, transform, item, device, cache_dir)
               for item in (published, ours)}
    report["data_loading"] = loading
    report["data_images_per_s"] = loading["ours"]["images_per_s"]

    posts = data.splits.get("test") or data.splits["train"]
    image_paths = [s.image_path for s in posts[:16]]
    texts = [s.text for s in posts[:16]]
    if options.predict:
        log(f"prediction: {', '.join(paths)} interleaved, {options.predict_runs} single-post calls each and one "
            f"batch of {options.batch_size}; default here: {default}")
        timings = measure_predict_paths(paths, image_paths, texts, options.predict_runs, options.batch_size)
        reference = paths["fp32_adapters"]
        report["predict_paths"] = {
            name: {**timings[name], "path": item.path.to_dict(),
                   **(prediction_agreement(reference, item, image_paths, texts) if item is not reference else {})}
            for name, item in paths.items()}
        report["predict"] = report["predict_paths"][default]
        if "int8" in paths:
            report["predict_int8"] = report["predict_paths"]["int8"]
        log("prediction breakdown: per-encoder time of each path")
        report["predict_breakdown"] = measure_breakdown(paths, image_paths[0], texts[0])
    for name in [name for name in paths if name != default]:
        del paths[name]  # only the default path is needed from here on
    gc.collect()
    if options.explain:
        log(f"explanation: text + image integrated gradients at the library's defaults ({default})")
        report["explain"] = measure_explain(predictor, image_paths[0], texts[0])
        report["explain_s"] = report["explain"]["explain_s"]
    if options.predictor_memory and device == "cpu":
        log("peak memory of one Predictor (its own process: build, predictions, one explanation)")
        report["predictor_peak_memory_mb"] = predictor_peak_memory(options, image_paths[0], texts[0])
    report["peak_memory_mb"] = peak_memory_mb(device)
    report["peak_memory_kind"] = "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS"
    return report


def predictor_peak_memory(options: BenchmarkOptions, image_path: Path, text: str) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process holding one default-path Predictor: after building it, after
    20 predictions and after one explanation at the defaults (`_predictor_memory_child`)."""
    return _child_process("_predictor_memory_child", options, str(image_path), text)


def _child_process(child: str, options: BenchmarkOptions, image_path: str, text: str) -> dict[str, Any]:
    """Run this module's `child` in a fresh Python process (its own peak RSS); its last stdout line as JSON."""
    arguments = json.dumps({"options": dataclasses.asdict(options), "image": image_path, "text": text})
    done = subprocess.run([sys.executable, "-c", f"from clara.train.benchmark import {child} as run; run()",
                           arguments], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {child} process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train_memory_child() -> None:
    """Peak RSS of one training run with our settings at the options' batch size: model built, 2 steps."""
    options = BenchmarkOptions(**json.loads(sys.argv[1])["options"])
    if options.threads:
        torch.set_num_threads(options.threads)
    cfg = base_config(options)
    data = load_benchmark_data(cfg)
    settings = our_settings(options.device, configured_encoder_width(cfg.model))
    runner = TrainRunner(settings, cfg, data, None, options.device, options.cache_dir)
    result: dict[str, Any] = {"built": peak_memory_mb(options.device)}
    for _ in range(2):
        runner.step(record=True)
    result.update({"training": peak_memory_mb(options.device), "precision": settings.precision,
                   "batch_size": options.batch_size})
    print(json.dumps(result))


def _predictor_memory_child() -> None:
    arguments = json.loads(sys.argv[1])
    options = BenchmarkOptions(**arguments["options"])
    if options.threads:
        torch.set_num_threads(options.threads)
    cfg = base_config(options)
    data = load_benchmark_data(cfg)
    predictor = _predictor(cfg, data, options.device, prepare=True)
    result = {"built": peak_memory_mb(options.device)}
    for _ in range(20):
        predictor.predict([arguments["image"]], [arguments["text"]])
    result["predicting"] = peak_memory_mb(options.device)
    if options.explain:
        Explainer(predictor).explain(arguments["image"], arguments["text"], methods=["text_ig", "image_ig"])
        result["explaining"] = peak_memory_mb(options.device)
    result["path"] = predictor.path.precision
    print(json.dumps(result))


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a `run_benchmark` report."""
    lines = [f"device {report['device']} ({report['machine'].get('gpu') or report['machine']['cpu']}, "
             f"{report['machine']['cores']} threads), torch {report['torch']}, encoders {report['encoders']}, "
             f"batch {report['batch_size']}"]
    train = report.get("train")
    if train:
        lines.append(f"{'training':<28}{'samples/s':>12}{'mean text tokens':>18}")
        for name in [key for key, run in train.items() if isinstance(run, dict) and "samples_per_s" in run]:
            run = train[name]
            tokens = run["mean_padded_text_tokens"]
            shown = f"{tokens:.1f}" if tokens is not None else "-"
            phases = ", ".join(f"{key[:-2]} {value:.2f}" for key, value in run.get("phases_mean_s", {}).items())
            lines.append(f"  {name:<26}{run['samples_per_s']:>12.3f}{shown:>18}   {run['settings']['precision']}"
                         f" (mean s: {phases})")
        lines.append(f"  {'speedup (ours / published)':<26}{train['speedup']:>12.2f}x")
        if "speedup_fp32" in train:
            lines.append(f"  {'speedup (ours_fp32 / published)':<26}{train['speedup_fp32']:>7.2f}x")
        if "precision" in train:
            lines.append(f"  train.mixed_precision=auto -> {train['precision']['auto']}: {train['precision']['reason']}")
    if "train_peak_memory_mb" in report:
        m = report["train_peak_memory_mb"]
        lines.append(f"{'one training run, peak RSS':<28} built {m['built']:.0f} MiB, training {m['training']:.0f} MiB "
                     f"(batch {m['batch_size']}, {m['precision']})")
    loading = report.get("data_loading", {})
    for name, run in loading.items():
        lines.append(f"{'data loading ' + name:<40}{run['images_per_s']:>10.1f} images/s")
    probe = report.get("precision_probe")
    if probe:
        lines.append(f"{'precision probe':<28} {probe['precision']}: {probe['reason']} "
                     f"(fp32 {probe['fp32_ms']:.2f} ms, bf16 {probe['bf16_ms']:.2f} ms)")
    for name, p in report.get("predict_paths", {}).items():
        extra = (f", labels agree {p['label_agreement']:.0%}, max prob change {p['max_prob_change']:.3f}"
                 if "label_agreement" in p else "")
        default = " (default)" if name == report.get("default_path") else ""
        lines.append(f"{'prediction ' + name + default:<38} p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms, "
                     f"batch {p['batch_samples_per_s']:.1f} samples/s{extra}")
    for name, b in report.get("predict_breakdown", {}).items():
        lines.append(f"{'  where ' + name:<38} vision {b['vision_ms']:.0f} ms, text {b['text_ms']:.0f} ms "
                     f"({b['text_tokens']} tokens), fusion+heads {b['decide_ms']:.1f} ms, predict {b['predict_ms']:.0f} ms")
    if "explain" in report:
        e = report["explain"]
        steps = ", ".join(f"{name} {c['steps']} steps, delta {c['delta']:+.4f} of {c['output_change']:+.4f}"
                          f"{'' if c['converged'] else ' NOT converged'}" for name, c in e["convergence"].items())
        lines.append(f"{'explanation (text + image IG)':<28} {e['explain_s']:.1f} s ({steps}) vs "
                     f"plain prediction {e['predict_s'] * 1000:.0f} ms")
    if "predictor_peak_memory_mb" in report:
        m = report["predictor_peak_memory_mb"]
        lines.append(f"{'one Predictor, peak RSS':<28} built {m['built']:.0f} MiB, predicting {m['predicting']:.0f} MiB"
                     + (f", explaining {m['explaining']:.0f} MiB" if "explaining" in m else ""))
    lines.append(f"{'peak memory (this process)':<28} {report['peak_memory_mb']:.0f} MiB ({report['peak_memory_kind']})")
    return "\n".join(lines)
