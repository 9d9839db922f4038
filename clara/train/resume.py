"""What `scripts/train.py --resume` needs: the training state stored in a run's `last`
checkpoint (optimizer tensors in training_state.safetensors; epoch, early-stopping state,
scheduler and param groups in training_state.json, swapped in with the weights), the check that
a resumed config fits it, and the per-epoch seeding from (seed, epoch[, process]) that makes a
resumed run repeat an uninterrupted one. Why not Accelerate's save_state (it pickles), and what
is stored: docs/RELIABILITY.md, "Resuming a run".
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from clara.checkpoint import METRICS_FILE, OLD_MARK, CheckpointError, read_checkpoint_info, read_training_state
from clara.config import Config
from clara.model.encoders import resolved_model_config

STATE_VERSION = 1
OPTIMIZER_PREFIX = "optimizer.state."
# Fields that may differ between the interrupted run and the resumed one: they change neither
# what is trained nor the numbers training produces. Everything else must match (a different
# dataset, split, encoder, fusion, model shape, loss, sampler, batch size, lr, epochs, ... would
# silently continue another experiment). train.fast_paths changes them by rounding and dropout draws only.
FREE_FIELDS = frozenset({"data.check_images", "data.image_cache", "data.image_cache_dir", "train.fast_paths",
                         "train.num_workers", "train.eval_batch_size",
                         "train.calibrate", "train.posthoc_logit_bias", "train.output_dir", "train.report_to"})


class ResumeError(ValueError):
    """--resume cannot continue this run; the message says why and what to do."""


class RunAlreadyFinished(ResumeError):
    """--resume on a run whose training and test evaluation are complete."""


@dataclass
class ResumeState:
    """Where an interrupted run stands after its last completed epoch."""

    epochs_done: int
    best_value: float
    best_epoch: int
    stale_epochs: int
    training_done: bool  # the last epoch or an early stop was reached; only the test evaluation may be left
    num_processes: int
    accelerator_step: int
    history: list[dict[str, Any]]
    optimizer: dict[str, Any]  # an optimizer state dict
    scheduler: dict[str, Any]  # a scheduler state dict


# --------------------------------------------------------------------------- per-epoch seeding

def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 32-bit seed for (run seed, epoch, stream), well mixed (numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def sampler_generators(sampler: Any) -> list[torch.Generator]:
    """The generators of `sampler` and of the samplers it wraps (`.base`, e.g. LengthGroupedSampler)."""
    generators = []
    while sampler is not None:
        if isinstance(getattr(sampler, "generator", None), torch.Generator):
            generators.append(sampler.generator)
        sampler = getattr(sampler, "base", None)
    return generators


def seed_epoch(seed: int, epoch: int, process_index: int, sampler: Any, mixup: Any | None) -> None:
    """Re-seed everything random in one training epoch, from the run seed and the epoch only.

    The sampler's generators get the same seeds on every process (they must agree on the order);
    the global RNGs (dropout) and the mixup draws get one stream per process.
    """
    # Streams: 1 + process for Python/numpy/torch/CUDA, 1_000_000 + process for the mixup,
    # 2_000_000 + depth for the sampler generators (0: the DataLoader's sampler, 1: the one it wraps).
    set_seed(epoch_seed(seed, epoch, 1 + process_index))
    for depth, generator in enumerate(sampler_generators(sampler)):
        generator.manual_seed(epoch_seed(seed, epoch, 2_000_000 + depth))
    if mixup is not None:
        mixup.rng = np.random.default_rng(epoch_seed(seed, epoch, 1_000_000 + process_index))


# --------------------------------------------------------------------------- packing

def pack_training_state(state: ResumeState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON payload) for clara.checkpoint.save_checkpoint's `training_state`.

    The history is not packed: the checkpoint's history.json holds it.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalar_slots: dict[str, dict[str, Any]] = {}
    for index, slots in state.optimizer["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
            else:
                scalar_slots.setdefault(str(index), {})[name] = value
    payload = {
        "state_version": STATE_VERSION,
        "epochs_done": state.epochs_done,
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "stale_epochs": state.stale_epochs,
        "training_done": state.training_done,
        "num_processes": state.num_processes,
        "accelerator_step": state.accelerator_step,
        "optimizer": {"param_groups": state.optimizer["param_groups"], "scalar_state": scalar_slots},
        "scheduler": state.scheduler,
    }
    return tensors, payload


def unpack_training_state(tensors: Mapping[str, torch.Tensor], payload: Mapping[str, Any],
                          history: list[dict[str, Any]], where: str) -> ResumeState:
    """Inverse of pack_training_state; ResumeError naming `where` for a payload this code cannot use."""
    if payload.get("state_version") != STATE_VERSION:
        raise ResumeError(f"{where}: training state version {payload.get('state_version')!r} is not supported "
                          f"(this code reads version {STATE_VERSION}); train from scratch")
    try:
        optimizer_state: dict[int, dict[str, Any]] = {}
        for index, slots in payload["optimizer"]["scalar_state"].items():
            optimizer_state.setdefault(int(index), {}).update(slots)
        for key, tensor in tensors.items():
            if not key.startswith(OPTIMIZER_PREFIX):
                raise ResumeError(f"{where}: unexpected tensor {key!r} in the training state")
            index, _, name = key[len(OPTIMIZER_PREFIX):].partition(".")
            optimizer_state.setdefault(int(index), {})[name] = tensor
        param_groups = [{**group, **({"betas": tuple(group["betas"])} if "betas" in group else {})}
                        for group in payload["optimizer"]["param_groups"]]
        state = ResumeState(
            epochs_done=int(payload["epochs_done"]), best_value=float(payload["best_value"]),
            best_epoch=int(payload["best_epoch"]), stale_epochs=int(payload["stale_epochs"]),
            training_done=bool(payload["training_done"]), num_processes=int(payload["num_processes"]),
            accelerator_step=int(payload["accelerator_step"]), history=list(history),
            optimizer={"state": dict(sorted(optimizer_state.items())), "param_groups": param_groups},
            scheduler=dict(payload["scheduler"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ResumeError):
            raise
        raise ResumeError(f"{where}: the training state is incomplete or damaged ({type(exc).__name__}: {exc}); "
                          "train from scratch") from None
    if len(state.history) != state.epochs_done or math.isnan(state.best_value):
        raise ResumeError(f"{where}: history.json has {len(state.history)} epochs but the training state says "
                          f"{state.epochs_done} were done; the checkpoint is inconsistent, train from scratch")
    return state


# --------------------------------------------------------------------------- reading and checking

def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`section.field (checkpoint: A, now: B)` for every field outside FREE_FIELDS that differs."""
    differences = []
    for section in sorted(set(saved) | set(current)):
        saved_fields, current_fields = dict(saved.get(section) or {}), dict(current.get(section) or {})
        for name in sorted(set(saved_fields) | set(current_fields)):
            key = f"{section}.{name}"
            before, now = saved_fields.get(name), current_fields.get(name)
            if key in FREE_FIELDS or _same_value(before, now) or (key == "data.data_dir" and _same_folder(before, now)):
                continue
            differences.append(f"{key} (checkpoint: {before!r}, now: {now!r})")
    return differences


def _same_value(a: Any, b: Any) -> bool:
    # JSON turns tuples into lists; compare through the same encoding.
    normal = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return normal(a) == normal(b)


def _same_folder(a: Any, b: Any) -> bool:
    # The same data folder given once relative and once absolute (from the same working folder).
    return isinstance(a, str) and isinstance(b, str) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def read_resume_state(last_dir: Path, cfg: Config, num_processes: int, results_file: Path) -> ResumeState:
    """The state to continue `cfg`'s run from, read from its `last` checkpoint folder.

    Raises ResumeError when there is no `last` checkpoint, it holds no training state, its config
    differs from `cfg` in a field that matters (each difference named), or it was written with
    another process count; RunAlreadyFinished when training ended and `results_file` (the test
    metrics) was written after it.
    """
    if not last_dir.exists() and not any(last_dir.parent.glob(f".{last_dir.name}{OLD_MARK}*")):
        raise ResumeError(f"--resume: no checkpoint to resume from at {last_dir} (has this run written an epoch "
                          "yet?); run without --resume to train from scratch")
    try:
        info = read_checkpoint_info(last_dir)
        tensors, payload = read_training_state(last_dir)
    except CheckpointError as exc:
        raise ResumeError(f"--resume: {exc}") from None
    # The checkpoint records the LoRA targets its encoders' architectures resolved to (backbones.py).
    differences = config_differences(info["config"], replace(cfg, model=resolved_model_config(cfg.model)).to_dict())
    if differences:
        raise ResumeError(f"--resume: the settings differ from those {last_dir} was trained with: "
                          + "; ".join(differences) + ". Resume with the same settings, or train from scratch "
                          "into another --output-dir")
    folder = Path(info["path"])
    history_file = folder / "history.json"
    try:
        history = json.loads(history_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(f"--resume: cannot read {history_file}: {exc}") from None
    state = unpack_training_state(tensors, payload, history, str(folder))
    if state.num_processes != num_processes:
        raise ResumeError(f"--resume: {folder} was trained on {state.num_processes} process(es), this run has "
                          f"{num_processes}; the per-process batches and the schedule would differ. Resume with "
                          f"{state.num_processes} process(es)")
    if state.training_done and _results_cover(results_file, state):
        raise RunAlreadyFinished(f"the run already finished: {state.epochs_done} epochs trained (best epoch "
                                 f"{state.best_epoch}) and test results written to {results_file}; nothing to resume")
    return state


def interrupted_best_note(best_dir: Path, state: ResumeState) -> str | None:
    """A note when `best` was written by the epoch the kill interrupted (saved before `last`).

    That epoch is repeated; on deterministic hardware it improves again and rewrites `best` the
    same way. Where it does not (nondeterministic GPU kernels), `best` keeps the interrupted
    epoch's weights, which the history no longer lists: the note says so.
    """
    try:
        best_epoch_on_disk = int(json.loads((best_dir / METRICS_FILE).read_text(encoding="utf-8"))["epoch"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if best_epoch_on_disk <= state.epochs_done:
        return None
    return (f"note: {best_dir} holds epoch {best_epoch_on_disk}, saved just before the kill, before the last "
            f"checkpoint; epoch {best_epoch_on_disk} is trained again and rewrites it if it improves on epoch "
            f"{state.best_epoch}")


def _results_cover(results_file: Path, state: ResumeState) -> bool:
    """Whether `results_file` is the test evaluation of this run's final state (not of an earlier run)."""
    try:
        metrics = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(metrics, dict) and metrics.get("best_epoch") == state.best_epoch
            and len(metrics.get("history") or []) == state.epochs_done)

