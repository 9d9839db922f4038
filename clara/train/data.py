"""The training DataLoaders, built in one place for the training loop and the benchmark (as
open_clip_train/data.py is for open_clip): the train loader with its sampler, the val loader,
and the decoded-image cache both read when `data.image_cache` is on."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader

from clara.config import Config
from clara.data import CLARADataset, Sample
from clara.data.dataset import build_collator, build_eval_loader
from clara.data.image_cache import ImageCache
from clara.data.images import ImageTransform
from clara.train.samplers import LengthGroupedSampler, build_sampler, token_lengths

NEGATIVE_LABEL = "negative"  # the class the negative samplers and negative mixup favour
# DataLoader workers on a GPU when train.num_workers is not set: decoding and collating keep up with
# the steps there; on CPU a worker competes with the compute for the cores (docs/BENCHMARKS.md).
GPU_LOADER_WORKERS = 4


def resolve_loader_settings(cfg: Config, device_type: str) -> Config:
    """`cfg` with train.num_workers and data.image_cache decided where unset (None): on a GPU 4
    workers and the decoded-image cache, on CPU no workers and no cache."""
    on_gpu = device_type == "cuda"
    resolved: dict[str, Any] = {}
    if cfg.train.num_workers is None:
        resolved["train.num_workers"] = min(GPU_LOADER_WORKERS, os.cpu_count() or 1) if on_gpu else 0
    if cfg.data.image_cache is None:
        resolved["data.image_cache"] = on_gpu
    return cfg.override(resolved) if resolved else cfg


def negative_index(labels: Sequence[str]) -> int | None:
    """Index of the negative class, None for a dataset without one (HFM)."""
    return list(labels).index(NEGATIVE_LABEL) if NEGATIVE_LABEL in labels else None


def build_image_cache(cfg: Config, samples: Sequence[Sample], transform: ImageTransform,
                      progress: bool = False) -> ImageCache | None:
    """The decoded-image cache of `samples` under data.image_cache_dir, or None when data.image_cache is off."""
    if not cfg.data.image_cache:
        return None
    return ImageCache.build([s.image_path for s in samples], transform, cfg.data.image_cache_dir, progress=progress)


def build_train_loader(cfg: Config, samples: Sequence[Sample], tokenizer: Any, transform: ImageTransform,
                       image_cache: ImageCache | None = None, pin_memory: bool = False,
                       persistent_workers: bool = False) -> DataLoader:
    """The train split as cfg says: train.sampler (seeded; `loader.sampler` is what re-seeding
    each epoch reaches), train.length_grouped, data.pad_to_max_length, train.batch_size and
    train.num_workers (unset: 0; the loop resolves it first, resolve_loader_settings). `image_cache`:
    crops instead of per-sample decoding (build_image_cache)."""
    tcfg = cfg.train
    sampler = build_sampler(tcfg.sampler, [s.label for s in samples], len(cfg.labels), seed=tcfg.seed,
                            negative_index=negative_index(cfg.labels),
                            negative_min_fraction=tcfg.negative_min_fraction, negative_boost=tcfg.negative_boost)
    if tcfg.length_grouped:
        lengths = token_lengths(tokenizer, [s.text for s in samples], cfg.data.max_text_length)
        sampler = LengthGroupedSampler(sampler, lengths, tcfg.batch_size, seed=tcfg.seed)
    return DataLoader(CLARADataset(samples, transform, image_cache), batch_size=tcfg.batch_size, sampler=sampler,
                      collate_fn=build_collator(cfg.data, tokenizer, normalize=transform),
                      num_workers=tcfg.num_workers or 0, pin_memory=pin_memory,
                      persistent_workers=persistent_workers and bool(tcfg.num_workers))


def build_val_loader(cfg: Config, samples: Sequence[Sample], tokenizer: Any, transform: ImageTransform,
                     image_cache: ImageCache | None = None, pin_memory: bool = False) -> DataLoader:
    """The val split in order, at train.eval_batch_size, collated as for training."""
    return build_eval_loader(samples, transform, build_collator(cfg.data, tokenizer, normalize=transform),
                             cfg.train.eval_batch_size, image_cache=image_cache,
                             num_workers=cfg.train.num_workers or 0, pin_memory=pin_memory)
