"""Tables and summaries the pages show, as plain rows (lists of dicts) for st.dataframe: the
checkpoint picker's table, the metrics of the runs found beside the published CLARA numbers of
every dataset (summary, per class, ablations, calibration, history), the error counts of a run,
and what each head and each single modality of a prediction says. Every row of a run says what
its data was ("data": synthetic / real / published). Numbers are in percent; no model runs here.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from clara.batch import PredictionRecord
from clara.catalog import DEMO_SOURCE_KIND, CheckpointEntry, RunResults
from clara.datasets import PUBLISHED_ABLATIONS, PUBLISHED_CLARA, REGISTRY, STANDARD_PROTOCOL_RESULTS
from clara.evaluate import SUMMARY_METRICS as HEADLINE_METRICS

SOURCE_NAMES = {"clara": "trained", "notebook": "imported notebook", DEMO_SOURCE_KIND: "demo (synthetic data)"}
PUBLISHED_RUN = "CLARA (published)"
# The "data" column: what a row's numbers were measured on.
SYNTHETIC, REAL, UNRECORDED, PUBLISHED = "synthetic", "real", "not recorded", "published"
PUBLISHED_PER_CLASS = ("f1",)  # the papers give per-class F1 only, no per-class precision or recall
SYNTHETIC_MARK = "synthetic data"  # appended to a synthetic run's name wherever it is one label


def run_name(item: CheckpointEntry | RunResults) -> str:
    """What every page calls a checkpoint or a run: the catalogue name of its checkpoint folder."""
    return item.display_name if isinstance(item, RunResults) else item.name


def series_label(item: CheckpointEntry | RunResults) -> str:
    """run_name, marked when the numbers come from synthetic data (legends, select boxes, headings)."""
    return marked_name(run_name(item), item.synthetic)


def marked_name(name: str, synthetic: bool | None) -> str:
    return f"{name} · {SYNTHETIC_MARK}" if synthetic else name


def data_kind(synthetic: bool | None) -> str:
    return {True: SYNTHETIC, False: REAL}.get(synthetic, UNRECORDED)  # type: ignore[arg-type]


def dataset_title(dataset: str | None) -> str:
    return REGISTRY[dataset].title if dataset in REGISTRY else str(dataset)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_choice(entry: CheckpointEntry) -> str:
    """One line for the checkpoint select box."""
    if entry.problem:
        return f"{entry.name} (unusable: {entry.problem})"
    parts = [entry.dataset or "?", entry.encoders or "?"]
    if "accuracy" in entry.metrics:
        parts.append(f"{entry.metrics_split} acc {entry.metrics['accuracy']:.1%}")
    return f"{series_label(entry)} ({', '.join(parts)})"


def training_data(entry: CheckpointEntry) -> str:
    """What a checkpoint was trained on, in words: synthetic posts, a folder, or not recorded."""
    if entry.synthetic:
        return f"{SYNTHETIC} ({entry.data_dir})" if entry.data_dir else f"{SYNTHETIC} (clara.data.synthetic)"
    return entry.data_dir or UNRECORDED


def checkpoints_table(entries: Iterable[CheckpointEntry]) -> list[dict[str, Any]]:
    """Rows for the picker's table: name, dataset, data, protocol, encoders, metrics, date, source."""
    rows = []
    for e in entries:
        rows.append({
            "checkpoint": run_name(e), "dataset": e.dataset, "data": data_kind(e.synthetic), "protocol": e.protocol,
            "encoders": e.encoders, "fusion": e.fusion, "metrics split": e.metrics_split,
            **{name: (round(100 * e.metrics[name], 2) if name in e.metrics else None) for name in HEADLINE_METRICS},
            "created": format_date(e.created), "source": SOURCE_NAMES.get(e.source, e.source),
            "training data": training_data(e), "status": e.problem or "ok",
        })
    return rows


def format_date(value: str | None) -> str | None:
    """'2025-05-01T12:30:00+00:00' -> '2025-05-01 12:30'; anything unparsable is shown as given."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)


# ----------------------------------------------------------------------------- results

def reference_rows(datasets: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The published CLARA numbers (percent) as table rows, one per dataset."""
    rows = []
    for dataset, ref in PUBLISHED_CLARA.items():
        if datasets is not None and dataset not in datasets:
            continue
        rows.append({"run": PUBLISHED_RUN, "dataset": dataset, "protocol": ref["protocol"],
                     **{m: ref[m] for m in HEADLINE_METRICS},
                     **{f"f1 {label}": value for label, value in ref["per_class_f1"].items()}})
    return rows


def _by_dataset(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by dataset in registry order (published row first), other datasets last; stable."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(rows, key=lambda r: (order.get(r["dataset"], len(order)), r["run"] != PUBLISHED_RUN))


def standard_protocol_rows() -> list[dict[str, Any]]:
    """Other methods' published accuracy / F1 on the standard protocol (never CLARA's protocol)."""
    rows = []
    for method, per_dataset in STANDARD_PROTOCOL_RESULTS.items():
        row: dict[str, Any] = {"method": method}
        for dataset in PUBLISHED_CLARA:
            acc_f1 = per_dataset.get(dataset)
            row[f"{dataset} accuracy"] = acc_f1[0] if acc_f1 else None
            row[f"{dataset} F1"] = acc_f1[1] if acc_f1 else None
        rows.append(row)
    return rows


def per_class_rows(runs: Sequence[RunResults], include_reference: bool = True) -> list[dict[str, Any]]:
    """Long-format rows (run, dataset, data, class, precision, recall, f1, support) in percent,
    plus the published CLARA per-class F1 of every dataset as run PUBLISHED_RUN; grouped by dataset."""
    rows = []
    for run in runs:
        per_class = run.metrics.get("per_class") or {}
        for label in run.labels:
            values = per_class.get(label) or {}
            rows.append({"run": run_name(run), "dataset": run.dataset, "data": data_kind(run.synthetic),
                         "class": label, **{k: _percent(values.get(k)) for k in ("precision", "recall", "f1")},
                         "support": values.get("support")})
    if include_reference:
        for dataset, ref in PUBLISHED_CLARA.items():
            for label, f1 in ref["per_class_f1"].items():
                rows.append({"run": PUBLISHED_RUN, "dataset": dataset, "data": PUBLISHED, "class": label,
                             "precision": None, "recall": None, "f1": f1, "support": None})
    return _by_dataset(rows)


def summary_rows(runs: Sequence[RunResults], include_reference: bool = True) -> list[dict[str, Any]]:
    """One row per run with its headline test metrics in percent, and the published row of every
    dataset; grouped by dataset."""
    rows = [{"run": run_name(run), "dataset": run.dataset, "data": data_kind(run.synthetic),
             "protocol": run.metrics.get("protocol"), **{m: _percent(run.metrics.get(m)) for m in HEADLINE_METRICS},
             "best epoch": run.metrics.get("best_epoch")} for run in runs]
    if include_reference:
        rows += [{"run": row["run"], "dataset": row["dataset"], "data": PUBLISHED, "protocol": row["protocol"],
                  **{m: row[m] for m in HEADLINE_METRICS}, "best epoch": None} for row in reference_rows()]
    return _by_dataset(rows)


def _percent(value: Any) -> float | None:
    return round(100.0 * float(value), 2) if isinstance(value, (int, float)) and math.isfinite(value) else None


def confusion_matrix(run: RunResults) -> tuple[list[str], list[list[int]]] | None:
    """(labels, rows = true class, columns = predicted class) or None when the run has none."""
    matrix = run.metrics.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    return run.labels, [[int(v) for v in row] for row in matrix]


def ablation_rows(runs: Sequence[RunResults]) -> list[dict[str, Any]]:
    """Inference-time ablations per run (percent), with the published MVSA-Single numbers."""
    rows = []
    for run in runs:
        ablations = run.metrics.get("ablations")
        if not isinstance(ablations, dict):
            continue
        data = data_kind(run.synthetic)
        rows.append({"run": run_name(run), "dataset": run.dataset, "data": data, "variant": "full",
                     **{m: _percent(run.metrics.get(m)) for m in HEADLINE_METRICS}})
        for variant, values in ablations.items():
            if isinstance(values, dict):
                rows.append({"run": run_name(run), "dataset": run.dataset, "data": data, "variant": variant,
                             **{m: _percent(values.get(m)) for m in HEADLINE_METRICS}})
    if any(run.dataset == "mvsa_single" for run in runs):
        for variant, (acc, f1w) in PUBLISHED_ABLATIONS.items():
            rows.append({"run": PUBLISHED_RUN, "dataset": "mvsa_single", "data": PUBLISHED, "variant": variant,
                         "accuracy": acc, "f1_weighted": f1w, "f1_macro": None})
    return rows


def calibration_rows(runs: Sequence[RunResults]) -> list[dict[str, Any]]:
    """Post-hoc calibration variants per run (fitted on val, scored on test), metrics in percent."""
    rows = []
    for run in runs:
        report = run.metrics.get("calibration")
        if not isinstance(report, dict):
            continue
        for variant, values in report.items():
            if not isinstance(values, dict):
                continue
            row: dict[str, Any] = {"run": run_name(run), "dataset": run.dataset, "data": data_kind(run.synthetic),
                                   "variant": variant,
                                   **{m: _percent(values.get(m)) for m in HEADLINE_METRICS}}
            for metric, value in (values.get("val") or {}).items():
                row[f"val {metric}"] = _percent(value)
            params = values.get("params") or {}
            row["params"] = ", ".join(f"{k}={_short(v)}" for k, v in params.items()) if params else ""
            rows.append(row)
    return rows


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def history_rows(run: RunResults) -> list[dict[str, Any]]:
    """Per-epoch numeric values of the training history (loss, val metrics, lr)."""
    return [{k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for entry in run.history if isinstance(entry, dict)]


def error_counts(records: Sequence[PredictionRecord]) -> list[dict[str, Any]]:
    """(true, predicted, count) of every kind of mistake, most frequent first."""
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        if not r.correct:
            counts[(r.label, r.predicted)] = counts.get((r.label, r.predicted), 0) + 1
    return [{"true": t, "predicted": p, "count": n} for (t, p), n in sorted(counts.items(), key=lambda kv: -kv[1])]


# ----------------------------------------------------------------------------- one prediction

VIEWS = (("final", "probs", "the label CLARA gives (after the feedback step)"),
         ("prediction head", "pred_probs", "the prediction head before the feedback step"),
         ("verification head", "verify_probs", "the second head, trained to agree with the first"),
         ("text only", "text_only_probs", "the model with the image removed"),
         ("image only", "image_only_probs", "the model with the text removed"))


def prediction_views(prediction: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """What each head and each single modality says: one row per view with its probabilities."""
    rows = []
    for name, attribute, meaning in VIEWS:
        given = getattr(prediction, attribute)
        if given is None:  # a model without a verification head
            continue
        probs = {label: float(given[label]) for label in labels}
        says = max(probs, key=probs.get)
        rows.append({"view": name, "says": says, "agrees with final": None, **probs, "meaning": meaning})
    final = rows[0]["says"] if rows else None
    for row in rows:
        row["agrees with final"] = row["says"] == final
    return rows


def agreement_summary(views: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain-language notes on which views agree with the final label."""
    by_name = {v["view"]: v for v in views}
    final = by_name.get("final", {}).get("says")
    notes = []
    verify = by_name.get("verification head")
    if verify:
        notes.append(f"The verification head {'agrees' if verify['says'] == final else 'disagrees'} "
                     f"(it says {verify['says']}).")
    text_only, image_only = by_name.get("text only"), by_name.get("image only")
    if text_only and image_only:
        if text_only["says"] == image_only["says"] == final:
            notes.append(f"Text alone and image alone both say {final}: either modality suffices here.")
        elif text_only["says"] != final and image_only["says"] != final:
            notes.append(f"Neither modality alone gives {final} (text only: {text_only['says']}, image only: "
                         f"{image_only['says']}): the decision needs both.")
        else:
            leader = "text" if text_only["says"] == final else "image"
            notes.append(f"Only the {leader} alone gives {final} (text only: {text_only['says']}, image only: "
                         f"{image_only['says']}).")
    return notes
