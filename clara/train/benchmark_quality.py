"""`scripts/benchmark.py --quality`: does an optimisation change what is learned? Short tiny-encoder
trainings per variant (each kept optimisation alone, then all together) and seed, compared on
validation and test metrics (docs/BENCHMARKS.md, "Quality")."""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clara.config import get_preset
from clara.train.loop import train
from clara.train.tiny import TINY_MODEL

_OFF = {"train.fast_paths": False}  # the single options are compared without the training fast paths
QUALITY_VARIANTS: dict[str, dict[str, Any]] = {
    # Each kept optimisation alone against the published-settings baseline, then all together.
    "published_settings": {"data.pad_to_max_length": True, "model.gradient_checkpointing": True, **_OFF},
    "dynamic_padding": {"data.pad_to_max_length": False, "model.gradient_checkpointing": True, **_OFF},
    "no_gradient_checkpointing": {"data.pad_to_max_length": True, "model.gradient_checkpointing": False, **_OFF},
    "image_cache": {"data.pad_to_max_length": True, "model.gradient_checkpointing": True, "data.image_cache": True,
                    **_OFF},
    "length_grouped": {"data.pad_to_max_length": False, "model.gradient_checkpointing": True,
                       "train.length_grouped": True, **_OFF},
    "fast_paths": {"data.pad_to_max_length": True, "model.gradient_checkpointing": True,
                   "train.fast_paths": True},
    "ours_without_fast_paths": {"data.pad_to_max_length": False, "model.gradient_checkpointing": False,
                                "data.image_cache": True, **_OFF},
    "ours": {"data.pad_to_max_length": False, "model.gradient_checkpointing": False, "data.image_cache": True,
             "train.fast_paths": True},
    # bf16 autocast forced (at tiny width `auto` is fp32): Accelerate holds one precision per process,
    # so it runs in an invocation of its own (`--quality-variants ours_bf16`), not by default.
    "ours_bf16": {"data.pad_to_max_length": False, "model.gradient_checkpointing": False, "data.image_cache": True,
                  "train.fast_paths": True, "train.mixed_precision": "bf16"},
}
DEFAULT_QUALITY_VARIANTS = tuple(name for name, v in QUALITY_VARIANTS.items() if "train.mixed_precision" not in v)


# A tiny-encoder recipe that learns the synthetic task (which needs both modalities) within a few
# epochs (tests/test_train.py uses the same), so metrics differ from chance and can be compared.
QUALITY_RECIPE: dict[str, Any] = {
    **TINY_MODEL, "model.fusion_dropout": 0.0,
    "model.head_dropout": 0.0, "train.lr": 2e-3, "train.eval_batch_size": 128, "train.mixed_precision": "no",
    "data.check_images": False, "train.calibrate": False,
}


def compare_quality(dataset: str, data_dir: str, output_dir: str, epochs: int = 6, seeds: Sequence[int] = (1, 2),
                    batch_size: int = 16, variants: Sequence[str] | None = None,
                    log: Any = print) -> list[dict[str, Any]]:
    """Short tiny-encoder trainings (clara.train.loop.train, QUALITY_RECIPE) per variant of
    QUALITY_VARIANTS (default: DEFAULT_QUALITY_VARIANTS; all at one precision, ValueError otherwise)
    and seed; returns one row per run with the best val metrics and the test metrics."""
    rows = []
    variants = list(variants or DEFAULT_QUALITY_VARIANTS)
    precisions = {QUALITY_VARIANTS[name].get("train.mixed_precision", QUALITY_RECIPE["train.mixed_precision"])
                  for name in variants}
    if len(precisions) > 1:
        raise ValueError(f"variants {variants} train at different precisions {sorted(precisions)}: Accelerate "
                         "holds one per process, so run them in separate invocations")
    for name in variants:
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
