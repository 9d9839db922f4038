"""Result files of a run: metrics.json, predictions.csv and the three PNG plots; and a run in
progress, read from the history its `last` checkpoint rewrites each epoch (read_run_in_progress).

Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot global state, so
this is safe in threads and never needs a display.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clara.batch import PREDICTIONS_FILE, write_predictions_csv
from clara.checkpoint import (HISTORY_FILE, METRICS_FILE, TRAINING_STATE_JSON, checkpoint_config,
                              read_checkpoint_info)
from clara.datasets import CLASS_F1_METRICS
from clara.evaluate.metrics import SUMMARY_METRICS
from clara.jsonio import atomic_write, write_json


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
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"), suffix=".png")


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


# ----------------------------------------------------------------------------- a run in progress

# A history or training state is kilobytes; a file this large is not one and is not read.
PROGRESS_FILE_LIMIT = 16 * 2**20


@dataclass
class RunInProgress:
    """A training run whose `last` checkpoint says training goes on, with its history so far."""
    folder: Path  # the run's `last` checkpoint folder
    dataset: str | None = None
    epochs_done: int = 0
    max_epochs: int | None = None  # train.epochs (early stopping may end the run sooner)
    history: list[dict[str, float]] = field(default_factory=list)  # the finite numbers of each epoch
    updated: float | None = None  # when the history was last written (seconds since the epoch)
    synthetic: bool | None = None  # trained on clara.data.synthetic posts, as config.json records
    problem: str | None = None  # why the folder's progress cannot be shown (one line)

    @property
    def status(self) -> str:
        return f"in progress · epoch {self.epochs_done} of {self.max_epochs}"


def read_run_in_progress(folder: str | Path) -> RunInProgress | None:
    """The run whose `last` checkpoint is `folder`, while its training goes on (training_state.json
    says it has not ended); None for any other folder. A file that cannot be used (unreadable,
    too large, of another shape, inconsistent) gives `problem`, one line, never an exception."""
    folder = Path(folder)
    state_file = folder / TRAINING_STATE_JSON
    if not state_file.is_file():
        return None
    run = RunInProgress(folder=folder)
    try:
        state = _read_progress_json(state_file)
        if not isinstance(state, dict) or not isinstance(state.get("training_done"), bool) \
                or not _is_count(state.get("epochs_done")):
            raise ValueError(f"{state_file} does not hold a training state (epochs_done, training_done)")
        if state["training_done"]:
            return None
        info = read_checkpoint_info(folder)
        cfg = checkpoint_config(info)
        data = info.get("data")
        synthetic = data.get("synthetic") if isinstance(data, dict) else None
        run.dataset, run.max_epochs = cfg.data.dataset, cfg.train.epochs
        run.synthetic = synthetic if isinstance(synthetic, bool) else None
        run.epochs_done = state["epochs_done"]
        history_file = folder / HISTORY_FILE
        run.history = _epoch_numbers(_read_progress_json(history_file), history_file, run.epochs_done)
        run.updated = history_file.stat().st_mtime
    except RecursionError:  # config.json, read by clara.checkpoint
        run.problem = f"{folder} holds JSON nested too deeply"
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:  # CheckpointError is a ValueError
        run.problem = _one_line(exc)
    return run


def _read_progress_json(path: Path) -> Any:
    """A JSON file of at most PROGRESS_FILE_LIMIT bytes; ValueError (one line) for anything else."""
    try:
        size = path.stat().st_size
        if size > PROGRESS_FILE_LIMIT:
            raise ValueError(f"{path} is {size / 2**20:.0f} MiB, larger than a training run writes "
                             f"({PROGRESS_FILE_LIMIT // 2**20} MiB at most): not read")
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is not readable JSON (nested too deeply)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not readable JSON ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not readable JSON ({exc.msg}, line {exc.lineno})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def _epoch_numbers(history: Any, path: Path, epochs_done: int) -> list[dict[str, float]]:
    """The finite numbers of each epoch of a history.json, checked to be epochs 1..epochs_done."""
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ValueError(f"{path} is not a list of epochs")
    epochs = [entry.get("epoch") for entry in history]
    if len(epochs) != epochs_done or epochs != list(range(1, epochs_done + 1)):
        raise ValueError(f"{path} lists epochs {_short(epochs)} but the training state says {epochs_done} were done")
    numbers = [{str(key): _finite(value) for key, value in entry.items()} for entry in history]
    return [{key: value for key, value in entry.items() if value is not None} for entry in numbers]


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (NaN, inf, an int beyond float, a string)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(values: list[Any], shown: int = 6) -> str:
    return repr(values) if len(values) <= shown else f"[{', '.join(map(repr, values[:shown]))}, ...] ({len(values)})"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
