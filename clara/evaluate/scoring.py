"""Scoring a model on a split: logits, metrics, inference-time ablations and calibration.

    result = evaluate_model(model, loader, labels)          # metrics + logits of one split
    metrics = evaluate_checkpoint("checkpoints/clara_mvsa_single_best", "mvsa_single", "data/MVSA_Single")

`metrics.json` holds accuracy, f1_weighted, f1_macro (HFM: also f1_sarcastic), per_class,
confusion_matrix (rows: true, columns: predicted), labels, ablations (the model's own ablation
readings), ablations_notebook (the dataset notebook's ablation table), posthoc_bias (a preset's
fixed logit offsets), calibration and reliability (fitted on val) and, from the training loop,
best_epoch, history and params.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from clara.checkpoint import load_checkpoint, read_checkpoint_info
from clara.config import ABLATIONS
from clara.data import load_configured_dataset
from clara.data.dataset import MODEL_INPUTS, build_collator, build_eval_loader, truncated_texts
from clara.data.images import model_image_transform
from clara.data.types import SPLITS
from clara.datasets import REGISTRY, AblationMethod
from clara.evaluate import calibration
from clara.evaluate.metrics import compute_metrics, summary_metrics
from clara.evaluate.results import write_results
from clara.inference import encoder_width
from clara.precision import autocast as precision_autocast
from clara.precision import default_device, resolve_mixed_precision


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (e.g. a dataset the checkpoint was not trained on)."""


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    logits: np.ndarray  # [N, C] float32, final logits
    probs: np.ndarray  # [N, C] softmax of logits
    y_true: np.ndarray  # [N] int64
    y_pred: np.ndarray  # [N] int64
    ids: list[str]
    notebook_ablation_logits: dict[str, np.ndarray] = field(default_factory=dict)  # row -> [N, C] float32


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def notebook_ablation_logits(model: torch.nn.Module, vision_tokens: torch.Tensor, text_tokens: torch.Tensor,
                             attention_mask: torch.Tensor, method: AblationMethod) -> dict[str, torch.Tensor]:
    """The final logits of each row of a notebook's ablation table (clara.datasets.AblationMethod)
    on one batch of encoder outputs: "full" and every name in ABLATIONS."""
    gate = method.feedback_gate
    rows = {"full": model.decide(vision_tokens, text_tokens, attention_mask, feedback_gate=gate).logits}
    for name in ABLATIONS:
        through_feedback = name in method.through_feedback
        out = model.decide(vision_tokens, text_tokens, attention_mask, ablation=name,
                           feedback_gate=gate if through_feedback else None)
        rows[name] = out.logits if through_feedback else out.pred_logits  # else: the prediction head alone
    return rows


def evaluate_model(model: torch.nn.Module, loader: Iterable[Mapping[str, Any]], labels: Sequence[str],
                   device: str | torch.device | None = None, ablations: bool = True,
                   dataset: str | None = None) -> EvalResult:
    """Score `model` on every batch of `loader` (batches as clara.data.Collator makes them).

    With `ablations`, each batch is also read by the fusion and heads once per inference-time
    ablation (no_verification, no_feedback, no_coattention, text_only, image_only; the encoders
    run once per batch), reported in `metrics["ablations"]`; with a `dataset` too, its notebook's
    ablation table (`notebook_ablation_logits`) in `metrics["ablations_notebook"]`. Runs under
    torch.inference_mode with the model in eval mode (its previous mode is restored). Autocast set
    by the caller (e.g. accelerator.autocast()) applies.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    names = list(ABLATIONS) if ablations else []
    method = REGISTRY[dataset].ablation_method if ablations and dataset is not None else None
    logits_parts: list[torch.Tensor] = []
    ablation_parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    notebook_parts: dict[str, list[torch.Tensor]] = {}
    true_parts: list[torch.Tensor] = []
    ids: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                if "labels" not in batch:
                    raise ValueError("evaluation batches need labels: the samples carry no label")
                inputs = {key: batch[key].to(device) for key in MODEL_INPUTS}
                # The encoders (nearly all the cost) run once; fusion and heads once per reading.
                vision_tokens, text_tokens = model.encode(**inputs)
                mask = inputs["attention_mask"]
                logits_parts.append(model.decide(vision_tokens, text_tokens, mask).logits.float().cpu())
                for name in names:
                    ablation_parts[name].append(
                        model.decide(vision_tokens, text_tokens, mask, ablation=name).logits.float().cpu())
                if method is not None:
                    for name, row in notebook_ablation_logits(model, vision_tokens, text_tokens, mask, method).items():
                        notebook_parts.setdefault(name, []).append(row.float().cpu())
                true_parts.append(torch.as_tensor(batch["labels"]).cpu())
                ids.extend(str(i) for i in batch.get("ids", range(len(ids), len(ids) + len(batch["labels"]))))
    finally:
        model.train(was_training)
    if not logits_parts:
        raise ValueError("the loader gave no batch: nothing to evaluate")
    logits = torch.cat(logits_parts)
    y_true = torch.cat(true_parts).numpy().astype(np.int64)
    y_pred = logits.argmax(-1).numpy().astype(np.int64)
    metrics = compute_metrics(y_true, y_pred, labels)
    if names:
        metrics["ablations"] = {
            name: summary_metrics(compute_metrics(y_true, torch.cat(parts).argmax(-1).numpy(), labels))
            for name, parts in ablation_parts.items()}
    notebook_logits = {name: torch.cat(parts).numpy() for name, parts in notebook_parts.items()}
    if method is not None:
        metrics["ablations_notebook"] = {
            "source": method.source, "feedback_gate": method.feedback_gate,
            "through_feedback": list(method.through_feedback),
            "variants": {name: summary_metrics(compute_metrics(y_true, row.argmax(-1), labels))
                         for name, row in notebook_logits.items()}}
    return EvalResult(metrics=metrics, logits=logits.numpy(), probs=logits.softmax(-1).numpy(), y_true=y_true,
                      y_pred=y_pred, ids=ids, notebook_ablation_logits=notebook_logits)


def default_calibration_metric(labels: Sequence[str], dataset: str | None = None) -> str:
    """The metric the dataset's notebook maximises on val when calibrating (weighted F1 for
    MVSA-Single, macro F1 for MVSA-Multiple and HFM); `dataset` defaults to the first with these labels."""
    return calibration.calibration_grids(labels, dataset).metric


def calibration_report(val: EvalResult, test: EvalResult, metric: str | None = None,
                       dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """The notebook's post-hoc calibration variants fitted on `val`'s logits and applied to
    `test`'s (clara.evaluate.calibration); `metric` defaults to that notebook's."""
    return calibration.calibration_report(val.logits, val.y_true, test.logits, test.y_true, test.metrics["labels"],
                                          metric, dataset)


def posthoc_metrics(val: EvalResult | None, test: EvalResult, dataset: str,
                    logit_bias: Mapping[str, float] | None = None) -> dict[str, Any]:
    """What is scored on test after the model has run, as metrics.json entries.

    `posthoc_bias` with `logit_bias` (fixed offsets, nothing fitted: MVSA-Multiple cell 18); with
    `val`: `calibration` and `reliability` (fitted on val), and, where the notebook's ablation
    table has it, its "full_bias_temperature" row added to `ablations_notebook` (MVSA-Single cell 23).
    """
    labels = test.metrics["labels"]
    entries: dict[str, Any] = {}
    if logit_bias:
        biased = compute_metrics(test.y_true, calibration.apply_logit_bias(test.logits, labels, logit_bias).argmax(1),
                                 labels)
        entries["posthoc_bias"] = {"bias": dict(logit_bias),
                                   **{k: v for k, v in biased.items() if k not in ("labels", "n")}}
    if val is None:
        return entries
    report = calibration_report(val, test, dataset=dataset)
    entries["calibration"] = report
    entries["reliability"] = calibration.reliability_report(val.logits, val.y_true, test.logits, test.y_true)
    notebook_table = test.metrics.get("ablations_notebook")
    if notebook_table and REGISTRY[dataset].ablation_method.bias_temperature_row:
        params = report["bias_temperature"]["params"]
        preds = calibration.apply_bias_temperature(test.notebook_ablation_logits["full"],
                                                   labels.index(params["target"]), params["temperature"],
                                                   params["bias"]).argmax(1)
        entries["ablations_notebook"] = {**notebook_table, "variants": {
            **notebook_table["variants"],
            "full_bias_temperature": summary_metrics(compute_metrics(test.y_true, preds, labels))}}
    return entries


def prediction_rows(result: EvalResult, samples: Sequence[Any], labels: Sequence[str]) -> list[dict[str, Any]]:
    """predictions.csv rows of an EvalResult, with text and image path from the split's samples."""
    by_id = {str(s.id): s for s in samples}
    rows = []
    for post_id, true, pred, probs in zip(result.ids, result.y_true, result.y_pred, result.probs):
        sample = by_id.get(str(post_id))
        rows.append({"id": post_id, "text": sample.text if sample else "",
                     "image_path": str(sample.image_path) if sample else "",
                     "label": labels[int(true)], "predicted": labels[int(pred)],
                     **{f"prob_{name}": float(p) for name, p in zip(labels, probs)}})
    return rows


def score_split(loaded: Any, data: Any, split: str, device: torch.device, batch_size: int,
                autocast: Any = None, ablations: bool = True, calibrate: bool = False,
                num_workers: int = 0) -> tuple[dict[str, Any], EvalResult]:
    """Score one split of a loaded dataset (clara.data.LoadedDataset) with a loaded checkpoint
    (clara.checkpoint.LoadedCheckpoint): (metrics, result).

    The metrics hold the inference-time ablations when `ablations`, the config's posthoc_bias,
    and with `calibrate` what is fitted on val (`posthoc_metrics`). One function for the end of
    training and for evaluate_checkpoint, so scripts/evaluate.py recomputes what training wrote.
    """
    cfg = loaded.config
    transform = model_image_transform(loaded.model)
    collator = build_collator(cfg.data, loaded.tokenizer)

    def loader(name: str) -> DataLoader:
        return build_eval_loader(data.splits[name], transform, collator, batch_size, num_workers=num_workers)

    with autocast if autocast is not None else contextlib.nullcontext():
        result = evaluate_model(loaded.model, loader(split), loaded.labels, device, ablations=ablations,
                                dataset=cfg.data.dataset)
        val = evaluate_model(loaded.model, loader("val"), loaded.labels, device, ablations=False) if calibrate else None
    metrics = {**result.metrics, **posthoc_metrics(val, result, cfg.data.dataset, cfg.train.posthoc_logit_bias)}
    return metrics, result


def evaluate_checkpoint(checkpoint_dir: str | Path, dataset: str, data_dir: str | Path, split: str = "test",
                        device: str | torch.device | None = None, batch_size: int | None = None,
                        ablations: bool = True, calibrate: bool | None = None,
                        results_dir: str | Path | None = None,
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recompute the metrics of a checkpoint on one split of `data_dir`, rebuilt exactly as in
    training (protocol, HFM label, split seed / split file, image check from the checkpoint config).

    `calibrate` (default: the config's train.calibrate, test split only) also scores val and adds
    the calibration report, as the training loop does. With `results_dir`, the results folder is
    written too. `overrides` ({"model.vision_encoder": DIR, ...}) is passed to load_checkpoint, e.g.
    to find published encoders in local folders on an offline machine. Raises CheckpointError (bad checkpoint), DatasetError (bad data folder) or
    EvaluationError (e.g. `dataset` is not the checkpoint's).
    """
    info = read_checkpoint_info(checkpoint_dir)
    if info.get("dataset") != dataset:
        raise EvaluationError(f"checkpoint {checkpoint_dir} was trained on {info.get('dataset')!r}, not {dataset!r}; "
                              f"use --dataset {info.get('dataset')}")
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    device = torch.device(device) if device is not None else default_device()
    loaded = load_checkpoint(checkpoint_dir, device=device, overrides=overrides)
    cfg = loaded.config
    data = load_configured_dataset(cfg.data, data_dir)  # the checkpoint's split and label order
    if not data.splits.get(split):
        raise EvaluationError(f"the {split} split of {data_dir} is empty")
    # The training loop evaluates under its mixed-precision autocast (auto: bf16 on a GPU, and on a CPU
    # whose probe prefers it at these encoders' width): do the same.
    autocast = precision_autocast(resolve_mixed_precision(cfg.train.mixed_precision, device,
                                                          encoder_width(loaded.model)), device)
    calibrate = (cfg.train.calibrate and split == "test") if calibrate is None else calibrate
    metrics, result = score_split(loaded, data, split, device, batch_size or cfg.train.eval_batch_size,
                                  autocast=autocast, ablations=ablations, calibrate=calibrate)
    labels = loaded.labels
    metrics.update({"dataset": dataset, "split": split, "protocol": data.protocol,
                    "checkpoint": str(checkpoint_dir), "params": info.get("params"),
                    # posts of the whole folder left out by the loader, per reason (never silently)
                    "skipped": data.skipped.as_dict(),
                    # texts of the split longer than the model reads (cut, as in training)
                    "truncated_texts": sum(truncated_texts(loaded.tokenizer, [s.text for s in data.splits[split]],
                                                           cfg.data.max_text_length))})
    if results_dir is not None:
        history = json.loads((Path(info["path"]) / "history.json").read_text(encoding="utf-8")) \
            if (Path(info["path"]) / "history.json").is_file() else []
        write_results(results_dir, metrics, history, labels,
                      predictions=prediction_rows(result, data.splits[split], labels))
    return metrics
