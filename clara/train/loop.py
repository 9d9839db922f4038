"""The training loop, on Hugging Face Accelerate (device placement, bf16 autocast on GPU,
gradient accumulation and multi-process data parallelism without hand-written AMP/DDP).

    result = train(get_preset("mvsa_single").override({"data.data_dir": "data/mvsa_single"}))

Flow: load the dataset (skip report printed) -> build the tokenizer from the training texts and
the model -> AdamW over the trainable parameters with linear warmup -> per epoch: train, then
score the val split; keep the best epoch by `cfg.train.selection_metric`, stop after `patience`
epochs without improvement -> reload the best checkpoint and evaluate it on the test split
(inference-time ablations, calibration fitted on val) -> write the results folder.

Outputs, with OUT = `cfg.train.output_dir` standing for the repo root and NAME = the dataset
(plus `_<ablation>` for a train-time ablation, so ablation runs never overwrite the full model):
`OUT/checkpoints/clara_NAME_best/`, `OUT/checkpoints/clara_NAME_last/`, `OUT/results/NAME/`.
Only the main process writes files. `last` also holds the training state (optimizer, scheduler,
early-stopping state; clara/train/resume.py), so `train(cfg, resume=True)` continues an
interrupted run from its last completed epoch; every epoch re-seeds its RNGs from (seed, epoch),
so the resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from clara.config import Config
from clara.data import CLARADataset, Collator, LoadedDataset, load_dataset
from clara.data.dataset import MODEL_INPUTS
from clara.data.images import model_image_transform
from clara.train.losses import class_weights, clara_loss, weighted_cross_entropy
from clara.train.resume import (ResumeState, interrupted_best_note, pack_training_state, read_resume_state,
                                seed_epoch)
from clara.train.samplers import (LengthGroupedSampler, NegativeMixup, build_sampler, count_classes,
                                  token_lengths)

NEGATIVE_LABEL = "negative"


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what to do."""


class OutputDirError(TrainingError):
    """The output folder cannot be written (checked before any training)."""


@dataclass
class TrainResult:
    best_dir: Path
    last_dir: Path
    results_dir: Path
    metrics: dict[str, Any]  # test metrics of the best checkpoint, as written to metrics.json
    history: list[dict[str, Any]]  # one entry per epoch


@dataclass(frozen=True)
class RunPaths:
    best_dir: Path
    last_dir: Path
    results_dir: Path


def run_name(cfg: Config) -> str:
    """`<dataset>` or `<dataset>_<ablation>` for a train-time ablation."""
    return cfg.data.dataset + (f"_{cfg.model.ablation}" if cfg.model.ablation else "")


def run_paths(cfg: Config) -> RunPaths:
    root = Path(cfg.train.output_dir).expanduser()
    name = run_name(cfg)
    return RunPaths(best_dir=root / "checkpoints" / f"clara_{name}_best",
                    last_dir=root / "checkpoints" / f"clara_{name}_last",
                    results_dir=root / "results" / name)


def check_writable(paths: RunPaths) -> None:
    """Create the output folders and write a probe file in each, so a bad --output-dir fails
    now rather than after hours of training."""
    for folder in (paths.best_dir.parent, paths.results_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".clara_write_test_"):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OutputDirError(f"cannot write to output folder {folder}: {reason}; "
                                "choose a writable --output-dir") from None


def resolve_mixed_precision(setting: str) -> str:
    """`auto` -> bf16 on a GPU, no (fp32) on CPU; other settings pass through."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return setting


def format_param_counts(counts: dict[str, int]) -> str:
    """The notebooks' (peft's) wording: `trainable params: X || all params: Y || trainable%: Z`."""
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    return (f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} "
            f"|| trainable%: {share:.4f}")


def train(cfg: Config, progress: bool = True, resume: bool = False) -> TrainResult:
    """Train CLARA as `cfg` says and evaluate the best epoch on the test split (module docstring).

    `resume`: continue from the run's `last` checkpoint (weights, optimizer, scheduler, epoch,
    early-stopping state, history); clara.train.resume.ResumeError when there is none or it was
    trained with other settings, RunAlreadyFinished when the run is complete.
    Raises TrainingError for an unwritable output folder, an unusable split or sampler setting,
    and a loss or gradient norm that becomes NaN/inf (the checkpoints of the last good epoch
    are kept); clara.data.DatasetError for a data folder that cannot be loaded.
    """
    # clara.model, clara.checkpoint and clara.evaluate are imported where used: clara.evaluate
    # imports clara.train.calibration, so a module-level import here would be circular.
    from clara.model import create_model

    cfg.validate()
    tcfg = cfg.train
    labels = list(cfg.labels)
    # cpu=True on a machine without a GPU is what makes several processes (torchrun, or
    # `accelerate launch --multi_gpu`) form a gloo group instead of each training alone.
    # find_unused_parameters: train-time ablations skip an encoder or a head, and a preset whose
    # loss weights are overridden to 0 may leave a head without gradient (DDP would hang on it).
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(tcfg.mixed_precision),
                              gradient_accumulation_steps=tcfg.grad_accum_steps,
                              cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    is_main = accelerator.is_main_process
    log = accelerator.print
    log(f"accelerate: {accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
        f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}")
    paths = run_paths(cfg)
    # Every process checks, so that all of them stop together instead of waiting on the main one.
    check_writable(paths)
    set_seed(tcfg.seed)
    resume_state: ResumeState | None = None
    if resume:
        resume_state = read_resume_state(paths.last_dir, cfg, accelerator.num_processes,
                                         paths.results_dir / "metrics.json")
        log(f"resuming from {paths.last_dir}: {resume_state.epochs_done} epoch(s) done, best epoch "
            f"{resume_state.best_epoch}" + ("; training had ended, evaluating the best epoch on test"
                                            if resume_state.training_done else ""))
        note = interrupted_best_note(paths.best_dir, resume_state)
        if note:
            log(note)

    if cfg.data.data_dir is None:
        raise TrainingError("no data folder: set data.data_dir (--data-dir)")
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir, protocol=cfg.data.protocol,
                        hfm_label=cfg.data.hfm_label, splits_file=cfg.data.splits_file,
                        seed=cfg.data.split_seed, check_images=cfg.data.check_images,
                        progress=progress and is_main)
    split_sizes = {name: len(samples) for name, samples in data.splits.items()}
    log(f"{data.name} ({data.layout} layout, {data.protocol} protocol): {split_sizes}; "
        f"skipped {data.skipped.total}:\n{data.skipped.summary()}")
    for split in ("train", "val", "test"):
        if not data.splits.get(split):
            raise TrainingError(f"the {split} split of {cfg.data.data_dir} is empty (splits: {split_sizes}); "
                                "training needs posts in train, val and test")
    train_samples = data.splits["train"]
    train_labels = [s.label for s in train_samples]
    train_counts = count_classes(train_labels, len(labels))
    log("train class counts: " + ", ".join(f"{name} {n}" for name, n in zip(labels, train_counts)))

    from clara.evaluate import compute_metrics

    if resume_state is None:
        model, tokenizer = create_model(cfg, tokenizer_texts=[s.text for s in train_samples])
    else:
        from clara.checkpoint import load_checkpoint
        # The interrupted run's weights and tokenizer (its config was checked to match cfg).
        interrupted = load_checkpoint(paths.last_dir)
        model, tokenizer = interrupted.model, interrupted.tokenizer
    param_counts = model.param_counts()
    log(format_param_counts(param_counts))
    from clara.inference import truncated_texts

    n_truncated = sum(truncated_texts(tokenizer, [s.text for s in train_samples], cfg.data.max_text_length))
    if n_truncated:  # said, not hidden: the model only reads the first max_text_length tokens
        log(f"{n_truncated} of {len(train_samples)} train texts are longer than data.max_text_length="
            f"{cfg.data.max_text_length} tokens and are truncated, as in the published method")

    transform = model_image_transform(model)
    collator = Collator(tokenizer, max_length=cfg.data.max_text_length,
                        pad_to_max_length=cfg.data.pad_to_max_length, normalize=transform)
    image_cache = None
    if cfg.data.image_cache:
        from clara.data.image_cache import ImageCache
        # The main process decodes; the others then find the cache complete (no concurrent writers).
        with accelerator.main_process_first():
            image_cache = ImageCache.build([s.image_path for s in train_samples + data.splits["val"]], transform,
                                           cfg.data.image_cache_dir, progress=progress and is_main)
    negative_index = labels.index(NEGATIVE_LABEL) if NEGATIVE_LABEL in labels else None
    if negative_index is None and (tcfg.sampler == "boost_negative" or tcfg.negative_mixup_prob > 0):
        raise TrainingError(f"train.sampler=boost_negative and train.negative_mixup_prob need a "
                            f"'{NEGATIVE_LABEL}' class; {cfg.data.dataset} has {labels}")
    sampler = build_sampler(tcfg.sampler, train_labels, len(labels), seed=tcfg.seed,
                            negative_index=negative_index, negative_min_fraction=tcfg.negative_min_fraction)
    if tcfg.length_grouped:
        lengths = token_lengths(tokenizer, [s.text for s in train_samples], cfg.data.max_text_length)
        sampler = LengthGroupedSampler(sampler, lengths, tcfg.batch_size, seed=tcfg.seed)
    pin_memory = accelerator.device.type == "cuda"
    train_loader = DataLoader(CLARADataset(train_samples, transform, image_cache), batch_size=tcfg.batch_size,
                              sampler=sampler, collate_fn=collator, num_workers=tcfg.num_workers,
                              pin_memory=pin_memory)
    val_loader = DataLoader(CLARADataset(data.splits["val"], transform, image_cache), batch_size=tcfg.eval_batch_size,
                            shuffle=False, collate_fn=collator, num_workers=tcfg.num_workers, pin_memory=pin_memory)
    mixup = None
    if tcfg.negative_mixup_prob > 0:
        # Each process mixes its own shard of the batch, with its own stream of draws.
        mixup = NegativeMixup(negative_index, tcfg.negative_mixup_prob, tcfg.negative_mixup_alpha,
                              seed=tcfg.seed + accelerator.process_index)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.grad_accum_steps)
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    # A prepared scheduler steps once per process for every optimizer step.
    total_steps = tcfg.epochs * steps_per_epoch * accelerator.num_processes
    scheduler = accelerator.prepare(get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(tcfg.warmup_ratio * total_steps), num_training_steps=total_steps))
    weights = class_weights(train_counts, labels, tcfg.class_weight_boost).to(accelerator.device)
    if resume_state is not None:
        optimizer.load_state_dict(resume_state.optimizer)
        scheduler.load_state_dict(resume_state.scheduler)
        accelerator.step = resume_state.accelerator_step  # gradient-accumulation position

    history: list[dict[str, Any]] = []
    best_value, best_epoch, stale_epochs = -math.inf, 0, 0
    first_epoch = 1
    if resume_state is not None:
        history = list(resume_state.history)
        best_value, best_epoch, stale_epochs = resume_state.best_value, resume_state.best_epoch, resume_state.stale_epochs
        first_epoch = tcfg.epochs + 1 if resume_state.training_done else resume_state.epochs_done + 1
    metric_name = tcfg.selection_metric
    for epoch in range(first_epoch, tcfg.epochs + 1):
        started = time.perf_counter()
        # Sample order, dropout and mixup draws depend on (seed, epoch) only: what makes resuming exact.
        seed_epoch(tcfg.seed, epoch, accelerator.process_index, sampler, mixup)
        best_note = f" (best val {metric_name} {best_value:.4f})" if best_epoch else ""
        bar = _progress_bar(steps_per_epoch, f"epoch {epoch}/{tcfg.epochs}{best_note}",
                            progress and accelerator.is_local_main_process)

        def check_finite(value: torch.Tensor, what: str, step: int) -> None:
            _stop_if_not_finite(accelerator, value, what, epoch, step, paths, best_epoch)

        train_parts, optimizer_steps, samples_seen = _train_epoch(
            accelerator, model, optimizer, scheduler, train_loader, weights, tcfg, mixup, steps_per_epoch,
            bar, check_finite)
        bar.close()
        train_time = time.perf_counter() - started

        val_logits, val_true = _gather_logits(model, val_loader, accelerator)
        val_metrics = compute_metrics(val_true.tolist(), val_logits.argmax(-1).tolist(), labels)
        val_loss = float(weighted_cross_entropy(val_logits, val_true, weights.cpu(), tcfg.label_smoothing))
        entry: dict[str, Any] = {
            "epoch": epoch,
            "lr": scheduler.get_last_lr()[0],
            **{f"train_{name}": value for name, value in train_parts.items()},
            "val_loss": val_loss,
            **{f"val_{key}": value for key, value in val_metrics.items() if isinstance(value, (int, float))},
            "steps": optimizer_steps,
            "train_samples": samples_seen * accelerator.num_processes,
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - started,
        }
        value = float(val_metrics[metric_name])
        improved = value > best_value
        if improved:
            best_value, best_epoch, stale_epochs = value, epoch, 0
        else:
            stale_epochs += 1
        entry["best_epoch"] = best_epoch
        history.append(entry)
        log(f"epoch {epoch}: train loss {entry['train_loss']:.4f}, val {metric_name} {value:.4f}, "
            f"val accuracy {val_metrics['accuracy']:.4f}{' (best)' if improved else ''}, "
            f"{entry['epoch_time_s']:.1f} s")

        training_done = epoch == tcfg.epochs or stale_epochs >= tcfg.patience
        if is_main:
            from clara.checkpoint import save_checkpoint
            unwrapped = accelerator.unwrap_model(model)
            epoch_metrics = {"epoch": epoch, "val": val_metrics}
            # best before last: a kill between the two leaves `last` one epoch behind, and the
            # resumed run repeats that epoch (rewriting `best` the same way).
            if improved:
                save_checkpoint(paths.best_dir, unwrapped, tokenizer, cfg, metrics=epoch_metrics,
                                history=history, extra={"best_epoch": best_epoch})
            resume_from = ResumeState(
                epochs_done=epoch, best_value=best_value, best_epoch=best_epoch, stale_epochs=stale_epochs,
                training_done=training_done, num_processes=accelerator.num_processes,
                accelerator_step=accelerator.step, history=history, optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict())
            save_checkpoint(paths.last_dir, unwrapped, tokenizer, cfg, metrics=epoch_metrics,
                            history=history, extra={"best_epoch": best_epoch},
                            training_state=pack_training_state(resume_from))
        accelerator.wait_for_everyone()
        if stale_epochs >= tcfg.patience:
            log(f"early stop: val {metric_name} did not improve for {tcfg.patience} epochs "
                f"(best {best_value:.4f} at epoch {best_epoch})")
            break

    # Free the training copies before loading the best checkpoint for the test evaluation.
    del model, optimizer, scheduler
    accelerator.free_memory()
    metrics: dict[str, Any] = {}
    if is_main:
        metrics = _evaluate_best(cfg, data, paths, accelerator, labels, history, best_epoch, param_counts)
        log(f"test ({paths.best_dir.name}, epoch {best_epoch}): accuracy {metrics['accuracy']:.4f}, "
            f"f1_weighted {metrics['f1_weighted']:.4f}, f1_macro {metrics['f1_macro']:.4f}; "
            f"results in {paths.results_dir}")
    accelerator.wait_for_everyone()
    if not is_main:
        metrics = json.loads((paths.results_dir / "metrics.json").read_text(encoding="utf-8"))
    return TrainResult(best_dir=paths.best_dir, last_dir=paths.last_dir, results_dir=paths.results_dir,
                       metrics=metrics, history=history)


def _evaluate_best(cfg: Config, data: LoadedDataset, paths: RunPaths, accelerator: Accelerator, labels: list[str],
                   history: list[dict[str, Any]], best_epoch: int, param_counts: dict[str, int]) -> dict[str, Any]:
    """Reload the best checkpoint, score test (with the inference-time ablations) and val (for
    calibration), write the results folder; main process only."""
    from clara.checkpoint import load_checkpoint
    from clara.evaluate import prediction_rows, score_split, write_results

    loaded = load_checkpoint(paths.best_dir, device=accelerator.device)
    metrics, test = score_split(loaded, data, "test", accelerator.device, cfg.train.eval_batch_size,
                                autocast=accelerator.autocast(), ablations=True, calibrate=cfg.train.calibrate,
                                num_workers=cfg.train.num_workers)
    metrics.update({"dataset": cfg.data.dataset, "split": "test", "protocol": data.protocol,
                    "checkpoint": str(paths.best_dir), "params": param_counts, "best_epoch": best_epoch,
                    "ablation": cfg.model.ablation, "history": history})
    write_results(paths.results_dir, metrics, history, labels,
                  predictions=prediction_rows(test, data.splits["test"], labels))
    return metrics


def _train_epoch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                 loader: Iterable[dict[str, Any]], weights: torch.Tensor, tcfg: Any, mixup: NegativeMixup | None,
                 max_steps: int, bar: Any, check_finite: Any) -> tuple[dict[str, float], int, int]:
    """One pass over the training loader (at most `max_steps` optimizer steps).

    Returns the mean of each loss part over the micro-batches, the optimizer steps taken and the
    posts this process saw.
    """
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    micro_batches, optimizer_steps, samples_seen = 0, 0, 0
    for batch in loader:
        if mixup is not None:
            batch = mixup(batch)
        with accelerator.accumulate(model):
            out = model(**{key: batch[key] for key in MODEL_INPUTS})
            loss, parts = clara_loss(out, batch["labels"], weights, tcfg)
            if accelerator.num_processes > 1 and out.uncertainty is not None:
                # DDP (find_unused_parameters) counts every parameter that reaches an output as
                # used, and waits for its gradient; the uncertainty head is reported, not trained,
                # so it gets an explicit zero-weight term.
                loss = loss + 0.0 * out.uncertainty.float().sum()
            # Checked before backward, so a bad value never reaches the weights.
            check_finite(loss.detach(), "loss", optimizer_steps + 1)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(trainable, tcfg.max_grad_norm)
                check_finite(torch.as_tensor(grad_norm), "gradient norm", optimizer_steps + 1)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for name, value in parts.items():
            sums[name] += value
        micro_batches += 1
        samples_seen += len(batch["labels"])
        if accelerator.sync_gradients:
            optimizer_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(parts['loss']):.4f}")
            if optimizer_steps >= max_steps:
                break
    if hasattr(loader, "end"):
        # Leaving the loader early (max_steps_per_epoch) skips its own end-of-epoch bookkeeping.
        loader.end()
    return {name: float(value) / max(micro_batches, 1) for name, value in sums.items()}, optimizer_steps, samples_seen


@torch.no_grad()
def _gather_logits(model: torch.nn.Module, loader: Iterable[dict[str, Any]], accelerator: Accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Final logits and labels of a whole (sharded) split, gathered from every process."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        out = model(**{key: batch[key] for key in MODEL_INPUTS})
        logits, batch_labels = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
        all_logits.append(logits.cpu())
        all_labels.append(batch_labels.cpu())
    model.train()
    return torch.cat(all_logits), torch.cat(all_labels)


def _stop_if_not_finite(accelerator: Accelerator, value: torch.Tensor, what: str, epoch: int, step: int,
                        paths: RunPaths, best_epoch: int) -> None:
    """Stop every process together (before the bad value reaches the weights) when `value` is NaN/inf."""
    finite = torch.isfinite(value.float()).all().reshape(1).float()
    if accelerator.num_processes > 1:
        finite = accelerator.gather(finite.to(accelerator.device)).min()
    if bool(finite.item()):
        return
    kept = (f"the checkpoints of the last good epoch are kept: {paths.best_dir} (best, epoch {best_epoch}) "
            f"and {paths.last_dir}" if best_epoch else "no checkpoint had been written yet")
    raise TrainingError(f"training stopped: the {what} became {float(value):.4g} at epoch {epoch}, step {step}; "
                        f"{kept}. Try a lower learning rate (--lr) or mixed_precision=no.")


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
