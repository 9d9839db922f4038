"""Result files of a run: metrics.json, predictions.csv and the three PNG plots.

Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot global state, so
this is safe in threads and never needs a display.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clara.batch import PREDICTIONS_FILE, write_predictions_csv
from clara.checkpoint import METRICS_FILE
from clara.datasets import CLASS_F1_METRICS
from clara.evaluate.metrics import SUMMARY_METRICS
from clara.jsonio import write_json


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
    write_json(folder / METRICS_FILE, payload)
    plot_confusion_matrix(folder / "confusion_matrix.png", payload["confusion_matrix"], labels)
    plot_training_curves(folder / "training_curves.png", history)
    plot_per_class(folder / "per_class_metrics.png", payload["per_class"], labels)
    if predictions is not None:
        write_predictions_csv(folder / PREDICTIONS_FILE, predictions, labels)
    return folder


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
    metric_keys = [k for k in (f"val_{m}" for m in (*SUMMARY_METRICS, *CLASS_F1_METRICS))
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
