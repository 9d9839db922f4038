"""The training loop on Hugging Face Accelerate (device placement, mixed precision, gradient
accumulation, data parallelism): orchestration only, over clara.train.data (loaders),
clara.train.losses, clara.train.resume and the library's checkpoint and evaluation modules.

    result = train(get_preset("mvsa_single").override({"data.data_dir": "data/mvsa_single"}))

Per epoch: train, score val, keep the best epoch by train.selection_metric (early stopping after
`patience`); then the best checkpoint is evaluated on test and the results folder written. From
train.full_finetune_from_epoch (MVSA-Multiple: 3) every encoder weight trains, not only LoRA.
Outputs: OUT/checkpoints/clara_NAME_{best,last}/, OUT/results/NAME/ and, per train.report_to, an
Accelerate tracker's run (TensorBoard: OUT/tracking/NAME/; loss and lr per step, history per epoch).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from clara.checkpoint import METRICS_FILE, load_checkpoint, save_checkpoint
from clara.config import Config
from clara.data import LoadedDataset, load_configured_dataset
from clara.data.dataset import MODEL_INPUTS, truncated_texts
from clara.data.images import model_image_transform
from clara.evaluate import SUMMARY_METRICS, compute_metrics, prediction_rows, score_split, write_results
from clara.locks import FolderBusyError, training_lock
from clara.model import CLARAOutput, create_model
from clara.outputs import write_problem
from clara.model.encoders import configured_encoder_width
from clara.precision import default_device, resolve_training_precision
from clara.train.data import (NEGATIVE_LABEL, build_image_cache, build_train_loader, build_val_loader,
                              negative_index, resolve_loader_settings)
from clara.train.fast_paths import apply_fast_paths, build_optimizer, release_frozen_weight_casts
from clara.train.losses import clara_loss, training_class_weights
from clara.train.resume import (ResumeState, interrupted_best_note, pack_training_state, read_resume_state,
                                seed_epoch)
from clara.train.samplers import NEGATIVE_SAMPLERS, NegativeMixup, count_classes


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what to do."""


class OutputDirError(TrainingError):
    """The output folder cannot be written (checked before any training)."""


class TrackerError(TrainingError):
    """The tracker train.report_to names is not installed (checked before any training)."""


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
    tracking_dir: Path  # Accelerator's project_dir: trackers that write files put the run's under it


def run_name(cfg: Config) -> str:
    """`<dataset>` or `<dataset>_<ablation>` for a train-time ablation."""
    return cfg.data.dataset + (f"_{cfg.model.ablation}" if cfg.model.ablation else "")


def run_paths(cfg: Config) -> RunPaths:
    root = Path(cfg.train.output_dir).expanduser()
    name = run_name(cfg)
    return RunPaths(best_dir=root / "checkpoints" / f"clara_{name}_best",
                    last_dir=root / "checkpoints" / f"clara_{name}_last",
                    results_dir=root / "results" / name, tracking_dir=root / "tracking")


def check_writable(paths: RunPaths) -> None:
    """Probe the output folders (clara.outputs), so a bad --output-dir fails now rather than
    after hours of training."""
    for folder in (paths.best_dir.parent, paths.results_dir):
        problem = write_problem(folder)
        if problem:
            raise OutputDirError(f"cannot write to output folder {folder}: {problem}; "
                                 "choose a writable --output-dir")


def format_param_counts(counts: dict[str, int]) -> str:
    """The notebooks' (peft's) wording: `trainable params: X || all params: Y || trainable%: Z`."""
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    return (f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} "
            f"|| trainable%: {share:.4f}")


def resolve_trackers(report_to: str) -> tuple[list[str], str]:
    """(Accelerate's `log_with`, the words of the run's log line) for train.report_to; TrackerError
    naming what to install when the tracker asked for is not installed."""
    available = {str(tracker) for tracker in get_available_trackers()}
    if report_to == "auto":
        if "tensorboard" in available:
            return ["tensorboard"], "tensorboard (the default, as it is installed)"
        return [], f'none (the default, as tensorboard is not installed: {TRACKER_INSTALL["tensorboard"]})'
    if report_to == "none":
        return [], "none (train.report_to=none)"
    if report_to not in available:
        install = TRACKER_INSTALL.get(report_to, f"pip install {report_to}")
        raise TrackerError(f"train.report_to={report_to} (--report-to): the {report_to} package is not installed; "
                           f"{install}, or report to none")
    return [report_to], report_to


# The tracker packages are named as the trackers; TensorBoard comes with clara's `track` extra.
TRACKER_INSTALL = {"tensorboard": 'pip install "clara[track]"'}


def tracked_config(cfg: Config) -> dict[str, str | int | float | bool | None]:
    """The resolved config as trackers take it: `section.field` -> a scalar (lists comma-joined,
    objects as JSON)."""
    flat: dict[str, str | int | float | bool | None] = {}
    for section, fields in cfg.to_dict().items():
        for name, value in fields.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(str(item) for item in value)
            elif isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            flat[f"{section}.{name}"] = value
    return flat


def epoch_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """A history entry as tracker scalars: `val_X` as `val/X`, every other number as `epoch/KEY`."""
    return {(f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"): value for key, value in entry.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def steps_done(history: list[dict[str, Any]]) -> int:
    """Optimizer steps of the epochs in `history`: the tracker's step before the next epoch."""
    return sum(int(entry.get("steps") or 0) for entry in history)


def agreed_training_precision(cfg: Config) -> tuple[str, str]:
    """(Accelerate's mixed_precision, why) for `cfg`, the first process's decision on every process:
    `auto` is bf16 where this machine's probe finds it faster at these encoders' width (clara.precision),
    and a timed probe could decide differently in two processes of one run under load."""
    device = default_device()
    state = PartialState(cpu=device.type == "cpu")  # the process group the Accelerator then joins
    decision = [resolve_training_precision(cfg.train.mixed_precision, device, configured_encoder_width(cfg.model))
                if state.is_main_process else None]
    if state.num_processes > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    return decision[0]


def train(cfg: Config, progress: bool = True, resume: bool = False) -> TrainResult:
    """Train CLARA as `cfg` says and evaluate the best epoch on the test split (module docstring).

    `resume`: continue from the run's `last` checkpoint (weights, optimizer, scheduler, epoch,
    early-stopping state, history); clara.train.resume.ResumeError when there is none or it was
    trained with other settings, RunAlreadyFinished when the run is complete.
    Raises OutputDirError for an output folder that cannot be written or that another run
    holds (clara.locks), TrainingError for an unusable split or sampler setting,
    and a loss or gradient norm that becomes NaN/inf (the checkpoints of the last good epoch
    are kept); clara.data.DatasetError for a data folder that cannot be loaded.
    """
    cfg.validate()
    check_writable(run_paths(cfg))  # a bad --output-dir gets its own message before a lock file is made there
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(training_lock(cfg.train.output_dir))
        except FolderBusyError as exc:
            raise OutputDirError(str(exc)) from None
        return _train(cfg, progress, resume)


def _train(cfg: Config, progress: bool, resume: bool) -> TrainResult:
    """train(), while the output folder's lock is held."""
    cfg.validate()
    tcfg = cfg.train
    log_with, tracking_note = resolve_trackers(tcfg.report_to)
    paths = run_paths(cfg)
    # cpu=True on a machine without a GPU is what makes several processes (torchrun, or
    # `accelerate launch --multi_gpu`) form a gloo group instead of each training alone.
    # find_unused_parameters: train-time ablations skip an encoder or a head, and a preset whose
    # loss weights are overridden to 0 may leave a head without gradient (DDP would hang on it).
    mixed_precision, precision_reason = agreed_training_precision(cfg)
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != mixed_precision and PartialState().num_processes == 1:
        # An earlier train() in this process ran at another precision; Accelerate keeps the first
        # one process-wide and would refuse this run (its state is reset here, the process group kept).
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision,
                              gradient_accumulation_steps=tcfg.grad_accum_steps,
                              cpu=default_device().type == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              log_with=log_with or None, project_dir=str(paths.tracking_dir))
    log = accelerator.print
    log(f"accelerate: {accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
        f"device {accelerator.device}, mixed precision {accelerator.mixed_precision} ({precision_reason})")
    log(f"tracking: {tracking_note}" + (f"; files under {paths.tracking_dir / run_name(cfg)}"
                                        if "tensorboard" in log_with else ""))
    try:
        return _train_run(cfg, accelerator, progress, resume, precision_reason)
    finally:
        accelerator.end_training()  # the trackers' files closed, also after a failure or Ctrl-C


def _train_run(cfg: Config, accelerator: Accelerator, progress: bool, resume: bool,
               precision_reason: str) -> TrainResult:
    """_train() once the Accelerator is made (at the precision `precision_reason` explains)."""
    is_main = accelerator.is_main_process
    log = accelerator.print
    paths = run_paths(cfg)
    # Every process checks, so that all of them stop together instead of waiting on the main one.
    check_writable(paths)
    cfg = resolve_loader_settings(cfg, accelerator.device.type)  # workers and image cache, where unset
    tcfg = cfg.train
    set_seed(tcfg.seed)
    if cfg.data.data_dir is None:
        raise TrainingError("no data folder: set data.data_dir (--data-dir)")
    data: LoadedDataset | None = None
    if not cfg.labels:  # a custom table without --labels: its own labels, recorded before the resume check
        data = load_configured_dataset(cfg.data, progress=progress and is_main)
        cfg = cfg.override({"data.class_names": tuple(data.labels)})
        tcfg = cfg.train
    labels = list(cfg.labels)
    resume_state: ResumeState | None = None
    if resume:
        resume_state = read_resume_state(paths.last_dir, cfg, accelerator.num_processes,
                                         paths.results_dir / METRICS_FILE)
        log(f"resuming from {paths.last_dir}: {resume_state.epochs_done} epoch(s) done, best epoch "
            f"{resume_state.best_epoch}" + ("; training had ended, evaluating the best epoch on test"
                                            if resume_state.training_done else ""))
        note = interrupted_best_note(paths.best_dir, resume_state)
        if note:
            log(note)
    resumed_steps = steps_done(resume_state.history) if resume_state is not None else 0
    # A resumed run's step counter continues; TensorBoard hides what the interrupted run logged
    # after its last completed epoch (purge_step), so a repeated epoch is drawn once.
    accelerator.init_trackers(run_name(cfg), config=tracked_config(cfg),
                              init_kwargs={"tensorboard": {"purge_step": resumed_steps + 1}} if resumed_steps else None)

    if data is None:
        data = load_configured_dataset(cfg.data, progress=progress and is_main)
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

    if resume_state is None:
        model, tokenizer = create_model(cfg, tokenizer_texts=[s.text for s in train_samples])
    else:
        # The interrupted run's weights and tokenizer (its config was checked to match cfg).
        interrupted = load_checkpoint(paths.last_dir)
        model, tokenizer = interrupted.model, interrupted.tokenizer
    param_counts = model.param_counts()
    log(format_param_counts(param_counts))
    n_truncated = sum(truncated_texts(tokenizer, [s.text for s in train_samples], cfg.data.max_text_length))
    if n_truncated:  # said, not hidden: the model only reads the first max_text_length tokens
        log(f"{n_truncated} of {len(train_samples)} train texts are longer than data.max_text_length="
            f"{cfg.data.max_text_length} tokens and are truncated, as in the published method")

    transform = model_image_transform(model)
    negative = negative_index(labels)
    if negative is None and (tcfg.sampler in NEGATIVE_SAMPLERS or tcfg.negative_mixup_prob > 0):
        raise TrainingError(f"train.sampler={tcfg.sampler} and train.negative_mixup_prob need a "
                            f"'{NEGATIVE_LABEL}' class; {cfg.data.dataset} has {labels}")
    # The main process decodes; the others then find the cache complete (no concurrent writers).
    with accelerator.main_process_first():
        image_cache = build_image_cache(cfg, train_samples + data.splits["val"], transform,
                                        progress=progress and is_main)
    pin_memory = accelerator.device.type == "cuda"
    train_loader = build_train_loader(cfg, train_samples, tokenizer, transform, image_cache, pin_memory=pin_memory,
                                      persistent_workers=True)
    sampler = train_loader.sampler  # re-seeded each epoch (seed_epoch), also after accelerator.prepare
    val_loader = build_val_loader(cfg, data.splits["val"], tokenizer, transform, image_cache, pin_memory=pin_memory)
    mixup = None
    if tcfg.negative_mixup_prob > 0:
        # Each process mixes its own shard of the batch, with its own stream of draws.
        mixup = NegativeMixup(negative, tcfg.negative_mixup_prob, tcfg.negative_mixup_alpha,
                              seed=tcfg.seed + accelerator.process_index)

    full_finetune = tcfg.full_finetune_from_epoch is not None
    # With the full fine-tuning switch, AdamW covers every parameter from the start, as MVSA-Multiple's
    # Trainer (cell 14); the frozen ones get no gradient, hence no update and no state, until they train.
    fast = apply_fast_paths(model, accelerator.mixed_precision, accelerator.device, enabled=tcfg.fast_paths)
    log(f"fast paths: {fast.describe()}")
    optimizer = build_optimizer(list(model.parameters()) if full_finetune else
                                [p for p in model.parameters() if p.requires_grad],
                                tcfg.lr, tcfg.weight_decay, fused=fast.fused_optimizer)
    frozen = [p for p in model.parameters() if not p.requires_grad] if full_finetune else []
    for param in frozen:
        param.requires_grad_(True)  # DDP all-reduces only what is trainable when it wraps the model...
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    for param in frozen:
        param.requires_grad_(False)  # ...and frozen again until the switch (no gradient: DDP leaves it None)
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.grad_accum_steps)
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    # A prepared scheduler steps once per process for every optimizer step.
    total_steps = tcfg.epochs * steps_per_epoch * accelerator.num_processes
    scheduler = accelerator.prepare(get_scheduler(  # train.lr_scheduler, by transformers' name (preset: linear)
        tcfg.lr_scheduler, optimizer, num_warmup_steps=int(tcfg.warmup_ratio * total_steps),
        num_training_steps=total_steps))
    weights = training_class_weights(tcfg, train_counts, labels, accelerator.device)
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
        if full_finetune and epoch >= tcfg.full_finetune_from_epoch:
            # Idempotent, so a run resumed after the switch trains the same parameters.
            unwrapped = accelerator.unwrap_model(model)
            if unwrapped.unfreeze_encoders():
                release_frozen_weight_casts(unwrapped)  # the fp32 parameters train from now on
                log(f"epoch {epoch}: every encoder weight trainable from now on (train.full_finetune_from_epoch="
                    f"{tcfg.full_finetune_from_epoch}): {format_param_counts(unwrapped.param_counts())}")
        best_note = f" (best val {metric_name} {best_value:.4f})" if best_epoch else ""
        bar = _progress_bar(steps_per_epoch, f"epoch {epoch}/{tcfg.epochs}{best_note}",
                            progress and accelerator.is_local_main_process)

        def check_finite(value: torch.Tensor, what: str, step: int) -> None:
            _stop_if_not_finite(accelerator, value, what, epoch, step, paths, best_epoch)

        steps_before = steps_done(history)

        def log_step(step: int, loss: torch.Tensor, lr: float) -> None:
            # log_with is the same on every process (all take part in the reduce); only the main one has trackers.
            if accelerator.log_with:
                accelerator.log({"train/loss": float(accelerator.reduce(loss, "mean")), "train/lr": lr},
                                step=steps_before + step)

        train_parts, optimizer_steps, samples_seen = _train_epoch(
            accelerator, model, optimizer, scheduler, train_loader, weights, tcfg, mixup, steps_per_epoch,
            bar, check_finite, log_step)
        bar.close()
        train_time = time.perf_counter() - started

        val_out, val_true = _gather_outputs(model, val_loader, accelerator)
        val_metrics = compute_metrics(val_true.tolist(), val_out.logits.argmax(-1).tolist(), labels)
        # The training loss (its terms and weights) over the whole split, without sampler or mixup.
        val_loss = float(clara_loss(val_out, val_true, weights.cpu() if weights is not None else None, tcfg)[0])
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
        accelerator.log(epoch_scalars(entry), step=steps_before + optimizer_steps)

        training_done = epoch == tcfg.epochs or stale_epochs >= tcfg.patience
        if is_main:
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
        how = {"mixed_precision": accelerator.mixed_precision, "precision_reason": precision_reason,
               "processes": accelerator.num_processes, "fast_paths": fast.to_dict()}
        metrics = _evaluate_best(cfg, data, paths, accelerator, labels, history, best_epoch, param_counts, how)
        log(f"test ({paths.best_dir.name}, epoch {best_epoch}): accuracy {metrics['accuracy']:.4f}, "
            f"f1_weighted {metrics['f1_weighted']:.4f}, f1_macro {metrics['f1_macro']:.4f}; "
            f"results in {paths.results_dir}")
        accelerator.log({f"test/{name}": float(metrics[name]) for name in SUMMARY_METRICS}, step=steps_done(history))
    accelerator.wait_for_everyone()
    if not is_main:
        metrics = json.loads((paths.results_dir / METRICS_FILE).read_text(encoding="utf-8"))
    return TrainResult(best_dir=paths.best_dir, last_dir=paths.last_dir, results_dir=paths.results_dir,
                       metrics=metrics, history=history)


def _evaluate_best(cfg: Config, data: LoadedDataset, paths: RunPaths, accelerator: Accelerator, labels: list[str],
                   history: list[dict[str, Any]], best_epoch: int, param_counts: dict[str, int],
                   how: dict[str, Any]) -> dict[str, Any]:
    """Reload the best checkpoint, score test (with the inference-time ablations) and val (for
    calibration), write the results folder; main process only. `how`: how training ran (precision
    and why, processes, fast paths), kept in metrics.json as `training`."""
    loaded = load_checkpoint(paths.best_dir, device=accelerator.device)
    metrics, test = score_split(loaded, data, "test", accelerator.device, cfg.train.eval_batch_size,
                                autocast=accelerator.autocast(), ablations=True, calibrate=cfg.train.calibrate,
                                num_workers=cfg.train.num_workers)
    metrics.update({"dataset": cfg.data.dataset, "split": "test", "protocol": data.protocol,
                    "checkpoint": str(paths.best_dir), "params": param_counts, "best_epoch": best_epoch,
                    "ablation": cfg.model.ablation, "training": how, "history": history})
    write_results(paths.results_dir, metrics, history, labels,
                  predictions=prediction_rows(test, data.splits["test"], labels))
    return metrics


def _train_epoch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                 loader: Iterable[dict[str, Any]], weights: torch.Tensor, tcfg: Any, mixup: NegativeMixup | None,
                 max_steps: int, bar: Any, check_finite: Any, log_step: Any) -> tuple[dict[str, float], int, int]:
    """One pass over the training loader (at most `max_steps` optimizer steps); `log_step(step,
    loss, lr)` after each optimizer step, with the mean loss of its micro-batches.

    Returns the mean of each loss part over the micro-batches, the optimizer steps taken and the
    posts this process saw.
    """
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    micro_batches, optimizer_steps, samples_seen = 0, 0, 0
    step_loss, step_batches = torch.zeros((), device=accelerator.device), 0
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
        step_loss, step_batches = step_loss + parts["loss"], step_batches + 1
        if accelerator.sync_gradients:
            optimizer_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(parts['loss']):.4f}")
            log_step(optimizer_steps, step_loss / step_batches, scheduler.get_last_lr()[0])
            step_loss, step_batches = torch.zeros((), device=accelerator.device), 0
            if optimizer_steps >= max_steps:
                break
    if hasattr(loader, "end"):
        # Leaving the loader early (max_steps_per_epoch) skips its own end-of-epoch bookkeeping.
        loader.end()
    return {name: float(value) / max(micro_batches, 1) for name, value in sums.items()}, optimizer_steps, samples_seen


@torch.no_grad()
def _gather_outputs(model: torch.nn.Module, loader: Iterable[dict[str, Any]],
                    accelerator: Accelerator) -> tuple[CLARAOutput, torch.Tensor]:
    """The logits the loss reads (final, prediction head, verification head when the model has
    one) and the labels of a whole (sharded) split, gathered from every process, on the CPU."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in loader:
        out = model(**{key: batch[key] for key in MODEL_INPUTS})
        tensors = {"logits": out.logits, "pred_logits": out.pred_logits, "verify_logits": out.verify_logits}
        tensors = {name: value.float() for name, value in tensors.items() if value is not None}
        gathered = accelerator.gather_for_metrics({**tensors, "labels": batch["labels"]})
        for name, value in gathered.items():
            parts[name].append(value.cpu())
    model.train()
    joined = {name: torch.cat(values) for name, values in parts.items()}
    logits = joined["logits"]
    probs = logits.softmax(-1)
    out = CLARAOutput(logits=logits, pred_logits=joined["pred_logits"], verify_logits=joined.get("verify_logits"),
                      probs=probs, uncertainty=torch.zeros(len(logits)))  # uncertainty: not read by the loss
    return out, joined["labels"]


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
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
