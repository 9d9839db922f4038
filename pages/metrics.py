"""Metrics: test results of every run found (checkpoints' results folders and results/), compared across
datasets and with the published CLARA numbers."""
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from clara import app_support as support
from pages import _ui as ui

PERCENT = {m: st.column_config.NumberColumn(m, format="%.2f") for m in
           (*support.HEADLINE_METRICS, "precision", "recall", "f1")}

st.title("Metrics")
runs = ui.list_results()
if not runs:
    st.info(f"No results yet: training writes them to results/<dataset>/ (e.g. `{ui.TRAIN_COMMAND}`).")
    st.stop()
st.caption(f"{len(runs)} run(s): " + ", ".join(f"{r.name} ({r.dataset})" for r in runs) +
           ". Numbers in percent on each run's test split. The published CLARA rows use CLARA's own protocol "
           "(MVSA: agreement subset; HFM: hashtag labels): compare like with like.")

st.header("Summary")
st.dataframe(pd.DataFrame(support.summary_rows(runs)), hide_index=True, key="summary_table", column_config=PERCENT)

st.header("Per-class precision, recall and F1")
per_class = pd.DataFrame(support.per_class_rows(runs))
metric = st.radio("Metric", ["f1", "precision", "recall"], horizontal=True, key="metrics_metric")
shown = per_class.dropna(subset=[metric])
figure = px.bar(shown, x="class", y=metric, color="run", barmode="group", facet_col="dataset",
                text_auto=".1f", height=380)
figure.update_xaxes(matches=None)
figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))  # "dataset=hfm" -> "hfm"
figure.update_layout(margin=dict(t=40, b=20), yaxis_title=f"{metric} (%)")
st.plotly_chart(figure, key="per_class_chart")
with st.expander("Per-class table"):
    st.dataframe(per_class, hide_index=True, key="per_class_table", column_config=PERCENT)

st.header("Confusion matrices")
matrices = [(run, support.confusion_matrix(run)) for run in runs]
matrices = [(run, m) for run, m in matrices if m is not None]
# At least three columns, so that one run's matrix does not fill the page.
for column, (run, (labels, matrix)) in zip(st.columns(max(len(matrices), 3)), matrices):
    heat = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", text=matrix,
                                texttemplate="%{text}", showscale=False))
    heat.update_layout(title=run.name, xaxis_title="predicted", yaxis_title="true", height=340,
                       yaxis_autorange="reversed", margin=dict(t=40, b=20))
    column.plotly_chart(heat, key=f"confusion_{run.name}")

st.header("Training curves")
for run in runs:
    history = pd.DataFrame(support.history_rows(run))
    if history.empty or "epoch" not in history:
        continue
    losses = [c for c in history.columns if c.endswith("loss")]
    scores = [c for c in history.columns if c.startswith("val_") and c not in losses
              and c.removeprefix("val_") in support.HEADLINE_METRICS]
    left, right = st.columns(2)
    if losses:
        left.plotly_chart(px.line(history, x="epoch", y=losses, markers=True, title=f"{run.name}: loss", height=300),
                          key=f"loss_{run.name}")
    if scores:
        right.plotly_chart(px.line(history, x="epoch", y=scores, markers=True, title=f"{run.name}: validation",
                                   height=300), key=f"val_{run.name}")

ablations = support.ablation_rows(runs)
if ablations:
    st.header("Ablations (inference-time, same trained model)")
    st.dataframe(pd.DataFrame(ablations), hide_index=True, key="ablation_table", column_config=PERCENT)

calibration = support.calibration_rows(runs)
if calibration:
    st.header("Post-hoc calibration (fitted on validation, scored on test)")
    st.dataframe(pd.DataFrame(calibration), hide_index=True, key="calibration_table", column_config=PERCENT)

with st.expander("Published results of other methods (standard protocol, not comparable with CLARA's rows)"):
    st.dataframe(pd.DataFrame(support.standard_protocol_rows()), hide_index=True, key="standard_table")

with st.expander("Plots saved by the evaluation"):
    for run in runs:
        plots = run.plots()
        if plots:
            st.markdown(f"**{run.name}**")
            for column, (name, path) in zip(st.columns(len(plots)), plots.items()):
                column.image(str(path), caption=name, width="stretch")
