"""Metrics: test results of every run found (checkpoints' results folders and results/), compared across
datasets with the published CLARA numbers of every dataset; runs on synthetic data marked everywhere."""
import streamlit as st

from clara_app import charts, state, tables, widgets

PERCENT = {m: st.column_config.NumberColumn(m, format="%.2f") for m in
           (*tables.HEADLINE_METRICS, "precision", "recall", "f1")}

st.title("Metrics")
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
# At least three columns, so that one run's matrix does not fill the page.
for column, (run, (labels, matrix)) in zip(st.columns(max(len(matrices), 3)), matrices):
    column.markdown(f"**{tables.series_label(run)}** · {tables.dataset_title(run.dataset)}")
    column.plotly_chart(charts.confusion_figure(labels, matrix, run.synthetic), key=f"confusion_{run.name}",
                        config=charts.STATIC)

st.header("Training curves")
for run in runs:
    history = tables.history_rows(run)
    if not history or "epoch" not in history[0]:
        continue
    columns = list(dict.fromkeys(k for entry in history for k in entry))
    losses = [c for c in columns if c.endswith("loss")]
    scores = [c for c in columns if c.startswith("val_") and c not in losses
              and c.removeprefix("val_") in tables.HEADLINE_METRICS]
    st.markdown(f"**{tables.series_label(run)}** · {tables.dataset_title(run.dataset)}")
    left, right = st.columns(2)
    if losses:
        left.caption("loss")
        left.plotly_chart(charts.curves_figure(history, losses, run.synthetic), key=f"loss_{run.name}",
                          config=charts.STATIC)
    if scores:
        right.caption("validation")
        right.plotly_chart(charts.curves_figure(history, scores, run.synthetic), key=f"val_{run.name}",
                           config=charts.STATIC)

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
