"""Evaluation: metrics (sklearn), inference-time ablations, calibration, result files and plots.

    result = evaluate_model(model, loader, labels)          # metrics + logits of one split
    write_results("results/mvsa_single", metrics, history, labels, predictions=rows)
    metrics = evaluate_checkpoint("checkpoints/clara_mvsa_single_best", "mvsa_single", "data/MVSA_Single")

`metrics.json` holds accuracy, f1_weighted, f1_macro (HFM: also f1_sarcastic, the binary F1 of
the sarcastic class), per_class, confusion_matrix (rows: true, columns: predicted), labels,
ablations and, from the training loop, best_epoch, history, params and calibration.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from clara.config import ABLATIONS, LABELS
from clara.data.dataset import MODEL_INPUTS

SARCASTIC = "sarcastic"
SUMMARY_METRICS = ("accuracy", "f1_weighted", "f1_macro")


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


# --------------------------------------------------------------------------- metrics

def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted/macro F1, per-class precision/recall/F1/support, confusion matrix.

    Every class in `labels` is reported (a class absent from both y_true and y_pred gets zeros).
    With the HFM labels, `f1_sarcastic` is the binary F1 of the sarcastic class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-d and of equal length")
    if not len(y_true):
        raise ValueError("cannot compute metrics of an empty split")
    classes = list(range(len(labels)))
    out_of_range = sorted({int(v) for v in np.concatenate([y_true, y_pred]) if not 0 <= v < len(labels)})
    if out_of_range:
        raise ValueError(f"class indices {out_of_range} are outside the {len(labels)} labels {list(labels)}")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                     zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }
    if SARCASTIC in labels and len(labels) == 2:
        metrics["f1_sarcastic"] = float(f1_score(y_true, y_pred, labels=classes, pos_label=list(labels).index(SARCASTIC),
                                                 average="binary", zero_division=0))
    metrics["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                   "f1": float(f1[i]), "support": int(support[i])}
                            for i, name in enumerate(labels)}
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
    metrics["labels"] = list(labels)
    metrics["n"] = int(len(y_true))
    return metrics


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """accuracy, f1_weighted, f1_macro (and f1_sarcastic when present) of a compute_metrics dict."""
    keys = (*SUMMARY_METRICS, "f1_sarcastic")
    return {key: metrics[key] for key in keys if key in metrics}


# --------------------------------------------------------------------------- model evaluation

def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate_model(model: torch.nn.Module, loader: Iterable[Mapping[str, Any]], labels: Sequence[str],
                   device: str | torch.device | None = None, ablations: bool = True) -> EvalResult:
    """Score `model` on every batch of `loader` (batches as clara.data.Collator makes them).

    With `ablations`, each batch is also read by the fusion and heads once per inference-time
    ablation (no_verification, no_feedback, no_coattention, text_only, image_only; the encoders
    run once per batch), reported in
    `metrics["ablations"]`. Runs under torch.inference_mode with the model in eval mode (its
    previous mode is restored). Autocast set by the caller (e.g. accelerator.autocast()) applies.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    names = list(ABLATIONS) if ablations else []
    logits_parts: list[torch.Tensor] = []
    ablation_parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
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
    return EvalResult(metrics=metrics, logits=logits.numpy(), probs=logits.softmax(-1).numpy(), y_true=y_true,
                      y_pred=y_pred, ids=ids)


def default_calibration_metric(labels: Sequence[str]) -> str:
    """The preset's selection metric for these labels: macro F1 for HFM, weighted F1 for MVSA."""
    return "f1_macro" if list(labels) == LABELS["hfm"] else "f1_weighted"


def calibration_report(val: EvalResult, test: EvalResult, metric: str | None = None) -> dict[str, dict[str, Any]]:
    """The post-hoc calibration variants fitted on `val`'s logits and applied to `test`'s
    (clara.train.calibration); `metric` defaults to the preset's selection metric."""
    from clara.train.calibration import calibration_report as report

    labels = test.metrics["labels"]
    return report(val.logits, val.y_true, test.logits, test.y_true, labels,
                  metric or default_calibration_metric(labels))


# --------------------------------------------------------------------------- result files

def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        return _to_json(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_results(results_dir: str | Path, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None,
                  labels: Sequence[str], predictions: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write metrics.json (indent 2; `history` added unless present), confusion_matrix.png,
    training_curves.png, per_class_metrics.png and, when given, predictions.csv.

    `predictions`: rows with id, text, image_path, label, predicted and the class probabilities,
    either as `prob_<label>` keys or as a `probabilities` {label: p} mapping.
    """
    folder = Path(results_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    history = list(history or [])
    payload = dict(metrics)
    payload.setdefault("labels", list(labels))
    payload.setdefault("history", history)
    _atomic_write_text(folder / "metrics.json", json.dumps(_to_json(payload), indent=2) + "\n")
    plot_confusion_matrix(folder / "confusion_matrix.png", payload["confusion_matrix"], labels)
    plot_training_curves(folder / "training_curves.png", history)
    plot_per_class(folder / "per_class_metrics.png", payload["per_class"], labels)
    if predictions is not None:
        write_predictions_csv(folder / "predictions.csv", predictions, labels)
    return folder


# Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot global state, so
# this is safe in threads and never needs a display.

def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols)
    return figure, axes


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def plot_confusion_matrix(path: Path, matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> None:
    """Counts, shaded by the share of each true class (row)."""
    counts = np.asarray(matrix, dtype=np.int64)
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = _figure(1.6 + 1.3 * len(labels), 1.3 + 1.2 * len(labels))
    image = axes.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            axes.text(j, i, f"{counts[i, j]}\n{100 * row_share[i, j]:.1f}%", ha="center", va="center",
                      color="white" if row_share[i, j] > 0.5 else "black", fontsize=9)
    axes.set_xticks(range(len(labels)), labels=list(labels), rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels=list(labels))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("confusion matrix")
    _save(figure, path)


def plot_training_curves(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Loss (train, val) and val metrics per epoch; a note instead of curves for an empty history."""
    figure, (loss_axes, metric_axes) = _figure(10, 4, ncols=2)
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]
    loss_keys = [k for k in ("train_loss", "val_loss") if any(k in e for e in history)]
    metric_keys = [k for k in ("val_accuracy", "val_f1_weighted", "val_f1_macro", "val_f1_sarcastic")
                   if any(k in e for e in history)]
    for axes, keys, title in ((loss_axes, loss_keys, "loss"), (metric_axes, metric_keys, "validation metrics")):
        for key in keys:
            points = [(x, e[key]) for x, e in zip(epochs, history) if e.get(key) is not None]
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        if keys:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no training history", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    best = [e.get("best_epoch") for e in history if e.get("best_epoch")]
    if best:
        metric_axes.axvline(best[-1], color="grey", linestyle="--", linewidth=1)
    _save(figure, path)


def plot_per_class(path: Path, per_class: Mapping[str, Mapping[str, float]], labels: Sequence[str]) -> None:
    """Precision, recall and F1 per class, as grouped bars."""
    figure, axes = _figure(2.5 + 1.6 * len(labels), 4)
    positions = np.arange(len(labels))
    width = 0.26
    for offset, key in zip((-width, 0.0, width), ("precision", "recall", "f1")):
        values = [per_class[name][key] for name in labels]
        bars = axes.bar(positions + offset, values, width, label=key)
        axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    axes.set_xticks(positions, labels=[f"{name}\n(n={per_class[name]['support']})" for name in labels])
    axes.set_ylim(0, 1.1)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title("per-class metrics")
    _save(figure, path)


PREDICTION_COLUMNS = ("id", "text", "image_path", "label", "predicted")


def write_predictions_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
    """predictions.csv for the app's error browser: id, text, image_path, label, predicted, prob_<label>..."""
    columns = [*PREDICTION_COLUMNS, *(f"prob_{name}" for name in labels)]
    lines: list[dict[str, Any]] = []
    for row in rows:
        line = {key: row.get(key, "") for key in PREDICTION_COLUMNS}
        probabilities = row.get("probabilities") or {}
        for name in labels:
            value = row.get(f"prob_{name}", probabilities.get(name, ""))
            line[f"prob_{name}"] = f"{float(value):.6f}" if value != "" else ""
        lines.append(line)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    _atomic_write_text(Path(path), buffer.getvalue())


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


# --------------------------------------------------------------------------- from a checkpoint

def score_split(loaded: Any, data: Any, split: str, device: torch.device, batch_size: int,
                autocast: Any = None, ablations: bool = True, calibrate: bool = False,
                num_workers: int = 0) -> tuple[dict[str, Any], EvalResult]:
    """Score one split of a loaded dataset (clara.data.LoadedDataset) with a loaded checkpoint
    (clara.checkpoint.LoadedCheckpoint): (metrics, result).

    The metrics hold the inference-time ablations when `ablations`, and with `calibrate` the
    calibration report fitted on val. One function for the end of training and for
    evaluate_checkpoint, so scripts/evaluate.py recomputes what training wrote.
    """
    from torch.utils.data import DataLoader

    from clara.data import CLARADataset, Collator
    from clara.data.images import model_image_transform

    cfg = loaded.config
    transform = model_image_transform(loaded.model)
    collator = Collator(loaded.tokenizer, max_length=cfg.data.max_text_length,
                        pad_to_max_length=cfg.data.pad_to_max_length)

    def loader(name: str) -> DataLoader:
        return DataLoader(CLARADataset(data.splits[name], transform), batch_size=batch_size,
                          shuffle=False, collate_fn=collator, num_workers=num_workers)

    with autocast if autocast is not None else contextlib.nullcontext():
        result = evaluate_model(loaded.model, loader(split), loaded.labels, device, ablations=ablations)
        val = evaluate_model(loaded.model, loader("val"), loaded.labels, device, ablations=False) if calibrate else None
    metrics = dict(result.metrics)
    if val is not None:
        metrics["calibration"] = calibration_report(val, result, cfg.train.selection_metric)
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
    from clara.checkpoint import load_checkpoint, read_checkpoint_info
    from clara.data import load_dataset
    from clara.data.types import SPLITS
    from clara.inference import truncated_texts
    from clara.train.loop import resolve_mixed_precision

    info = read_checkpoint_info(checkpoint_dir)
    if info.get("dataset") != dataset:
        raise EvaluationError(f"checkpoint {checkpoint_dir} was trained on {info.get('dataset')!r}, not {dataset!r}; "
                              f"use --dataset {info.get('dataset')}")
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    loaded = load_checkpoint(checkpoint_dir, device=device, overrides=overrides)
    cfg = loaded.config
    data = load_dataset(dataset, data_dir, protocol=cfg.data.protocol, hfm_label=cfg.data.hfm_label,
                        splits_file=cfg.data.splits_file, seed=cfg.data.split_seed,
                        check_images=cfg.data.check_images)
    if not data.splits.get(split):
        raise EvaluationError(f"the {split} split of {data_dir} is empty")
    # The training loop evaluates under its mixed-precision autocast on a GPU (auto: bf16): do the same.
    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    autocast = (torch.autocast(device.type, dtype=dtypes[precision])
                if device.type == "cuda" and precision in dtypes else None)
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
