"""Metrics: test results of every run found (checkpoints' results folders and results/), compared across
datasets with the published CLARA numbers of every dataset; runs on synthetic data marked everywhere.
A run still training is shown first, from the history its `last` checkpoint rewrites each epoch."""
import time
from typing import Any

import streamlit as st

from clara import catalog
from clara.evaluate.results import RunInProgress, read_run_in_progress
from clara_app import charts, state, tables, widgets

PERCENT = {m: st.column_config.NumberColumn(m, format="%.2f") for m in
           (*tables.HEADLINE_METRICS, "precision", "recall", "f1")}
REFRESH_SECONDS = 10  # how often the runs in progress are read again, while the toggle is on


def draw_curves(history: list[dict[str, Any]], synthetic: bool | None, key: str) -> None:
    """Loss curves (left) and validation metrics (right) over the epochs of one history."""
    columns = list(dict.fromkeys(k for entry in history for k in entry))
    losses = [c for c in columns if c.endswith("loss")]
    scores = [c for c in columns if c.startswith("val_") and c not in losses
              and c.removeprefix("val_") in tables.HEADLINE_METRICS]
    left, right = st.columns(2)
    if losses:
        left.caption("loss")
        left.plotly_chart(charts.curves_figure(history, losses, synthetic), key=f"loss_{key}", config=charts.STATIC)
    if scores:
        right.caption("validation")
        right.plotly_chart(charts.curves_figure(history, scores, synthetic), key=f"val_{key}", config=charts.STATIC)


def runs_in_progress() -> list[tuple[str, RunInProgress]]:
    """(catalogue name, run) of every checkpoint folder that is the `last` checkpoint of a run still training
    (the folders without their results' metrics: this runs at every refresh)."""
    found = [(entry.name, read_run_in_progress(entry.path)) for entry in catalog.find_checkpoints(state.checkpoints_dir())]
    return [(name, run) for name, run in found if run is not None]


def show_runs_in_progress(names: list[str]) -> None:
    """The runs training now, read again on each refresh; the whole page again once one has ended
    (its results then join the sections below)."""
    current = runs_in_progress()
    if set(names) - {name for name, _ in current}:
        st.rerun()
    for name, run in current:
        label = tables.marked_name(name, run.synthetic)
        if run.problem:
            st.warning(f"**{label}**: cannot show its progress: {run.problem}")
            continue
        seconds = max(time.time() - (run.updated or time.time()), 0.0)
        age = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
        st.markdown(f"**{label}** · {tables.dataset_title(run.dataset)} · {run.status} · last epoch written "
                    f"{age} ago")
        draw_curves(run.history, run.synthetic, f"live_{name}")


st.title("Metrics")
live = runs_in_progress()
if live:
    st.header("Training in progress")
    refresh = st.toggle(f"Refresh every {REFRESH_SECONDS} s", value=True, key="metrics_live_refresh")
    st.caption("From the history each run's `last` checkpoint rewrites after every epoch; a run that was stopped "
               "looks the same until `--resume` continues it. Step-by-step curves: TensorBoard "
               "(`tensorboard --logdir OUT/tracking`).")
    st.fragment(run_every=REFRESH_SECONDS if refresh else None)(show_runs_in_progress)([name for name, _ in live])
runs = state.list_results()
if not runs:
    st.info(f"No results yet: training writes them to results/<dataset>/ (e.g. `{state.TRAIN_COMMAND}`).")
    st.stop()
st.caption(f"{len(runs)} run(s): " + ", ".join(f"{tables.series_label(r)} ({r.dataset})" for r in runs) +
           ". Numbers in percent on each run's test split. The published CLARA rows use CLARA's own protocol "
           "(MVSA: agreement subset; HFM: hashtag labels): compare like with like.")
synthetic = [r for r in runs if r.synthetic]
if synthetic:
    st.warning(f"{', '.join(tables.run_name(r) for r in synthetic)}: trained and tested on **synthetic data** "
               "(generated posts whose label needs both the picture and the text), so their numbers say the code "
               "works, not how well CLARA reads sentiment; they are never comparable with the published numbers. "
               "Tables mark them in the `data` column, charts hatch and fade them.", icon=":material/science:")

st.header("Summary")
widgets.table(tables.summary_rows(runs), key="summary_table", column_config=PERCENT)

st.header("Per-class precision, recall and F1")
per_class = tables.per_class_rows(runs)
colours = charts.series_colours([row["run"] for row in per_class])
metric = st.radio("Metric", ["f1", "precision", "recall"], horizontal=True, key="metrics_metric")
if metric not in tables.PUBLISHED_PER_CLASS:
    st.info(charts.ONLY_F1_PUBLISHED.format(metric=metric) + "; the bars are our runs only.")
st.plotly_chart(charts.per_class_figure(per_class, metric, colours), key="per_class_chart")
st.caption(" ".join(([f"Grey: {tables.PUBLISHED_RUN}."] if metric in tables.PUBLISHED_PER_CLASS else [])
                    + ([charts.SYNTHETIC_NOTE + "."] if synthetic else [])))
with st.expander("Per-class table"):
    widgets.table(per_class, key="per_class_table", column_config=PERCENT)

st.header("Confusion matrices")
st.caption("Share of each true class (row) given each predicted label, as in training's confusion_matrix.png; "
           "the number of posts in brackets and on hover.")
matrices = [(run, tables.confusion_matrix(run)) for run in runs]
matrices = [(run, m) for run, m in matrices if m is not None]
widgets.confusion_grid(matrices)

st.header("Training curves")
for run in runs:
    history = tables.history_rows(run)
    if not history or "epoch" not in history[0]:
        continue
    st.markdown(f"**{tables.series_label(run)}** · {tables.dataset_title(run.dataset)}")
    draw_curves(history, run.synthetic, run.name)

ablations = tables.ablation_rows(runs)
if ablations:
    st.header("Ablations (inference-time, same trained model)")
    widgets.table(ablations, key="ablation_table", column_config=PERCENT)

calibration = tables.calibration_rows(runs)
if calibration:
    st.header("Post-hoc calibration (fitted on validation, scored on test)")
    widgets.table(calibration, key="calibration_table", column_config=PERCENT)

with st.expander("Published results of other methods (standard protocol, not comparable with CLARA's rows)"):
    widgets.table(tables.standard_protocol_rows(), key="standard_table")

with st.expander("Plots saved by the evaluation"):
    for run in runs:
        plots = run.plots()
        if plots:
            st.markdown(f"**{tables.series_label(run)}**")
            for column, (name, path) in zip(st.columns(len(plots)), plots.items()):
                column.image(str(path), caption=name, width="stretch")
