"""The Metrics page's Plotly figures, built from clara_app.tables rows: per-class bars of every run
beside the published CLARA numbers (one panel per dataset), row-normalised confusion matrices
(training's PNG, counts on hover; square cells, at most CONFUSION_PER_ROW side by side) and training
curves. One colour per series in every view;
a series measured on synthetic data is hatched and faded, and its name says so; a figure of one
synthetic run is labelled so in its corner. Titles stay outside the figures (the page writes
them), so none sits under the chart toolbar; small figures are drawn without Plotly's (STATIC).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from clara_app import tables

PUBLISHED_COLOUR = "#4d4d4d"
RUN_COLOURS = qualitative.Plotly  # in the order the runs are listed, then again
SYNTHETIC_PATTERN = "/"  # hatched bars
SYNTHETIC_OPACITY = 0.55
SYNTHETIC_NOTE = "Hatched, faded: synthetic data (a demo), not comparable with the published numbers"
ONLY_F1_PUBLISHED = "CLARA's papers publish per-class F1 only: no published bars for {metric}"
CONFUSION_SCALE = "Blues"  # as training's confusion_matrix.png
CONFUSION_PER_ROW = 2  # matrices side by side: at 1280 px three squeeze the cells below their text
CONFUSION_CELL, CONFUSION_BASE_HEIGHT = 80, 100  # px per class, and for the axis labels and the mark
STATIC = {"displayModeBar": False}  # st.plotly_chart config of the confusion matrices and curves


def series_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per series name for every view: the published series grey, runs in listed order."""
    runs = [n for n in dict.fromkeys(names) if n != tables.PUBLISHED_RUN]
    return {tables.PUBLISHED_RUN: PUBLISHED_COLOUR, **{n: RUN_COLOURS[i % len(RUN_COLOURS)] for i, n in enumerate(runs)}}


def per_class_figure(rows: Sequence[Mapping[str, Any]], metric: str, colours: Mapping[str, str]) -> go.Figure:
    """Grouped bars of `metric` per class, one panel per dataset, one trace per (series, dataset)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    figure = make_subplots(rows=1, cols=max(len(datasets), 1), horizontal_spacing=0.05, shared_yaxes=True,
                           subplot_titles=[tables.dataset_title(d) for d in datasets])
    shown: set[str] = set()
    for name in dict.fromkeys(r["run"] for r in rows):
        for column, dataset in enumerate(datasets, start=1):
            points = [r for r in rows if r["run"] == name and r["dataset"] == dataset and r.get(metric) is not None]
            if not points:
                continue
            synthetic = points[0]["data"] == tables.SYNTHETIC
            label = tables.marked_name(name, synthetic)
            figure.add_trace(go.Bar(
                x=[p["class"] for p in points], y=[p[metric] for p in points], name=label, legendgroup=name,
                showlegend=name not in shown, text=[f"{p[metric]:.1f}" for p in points], textposition="outside",
                marker={"color": colours[name], "opacity": SYNTHETIC_OPACITY if synthetic else 1.0,
                        "pattern": {"shape": SYNTHETIC_PATTERN if synthetic else ""}},
                hovertemplate=f"{label}<br>%{{x}}: %{{y:.2f}} % {metric}<extra></extra>"), row=1, col=column)
            shown.add(name)
    figure.update_yaxes(range=[0, 112], title_text=None)
    figure.update_yaxes(title_text=f"{metric} (%)", row=1, col=1)
    figure.update_layout(barmode="group", height=420, margin={"t": 60, "b": 20, "l": 50, "r": 10},
                         legend={"orientation": "h", "y": -0.15}, uniformtext_minsize=8)
    if metric not in tables.PUBLISHED_PER_CLASS:
        figure.add_annotation(text=ONLY_F1_PUBLISHED.format(metric=metric), xref="paper", yref="paper", x=0, y=1.0,
                              yanchor="bottom", yshift=22, xanchor="left", showarrow=False,
                              font={"size": 12, "color": PUBLISHED_COLOUR})
    return figure


def confusion_figure(labels: Sequence[str], counts: Sequence[Sequence[int]], synthetic: bool | None) -> go.Figure:
    """Share of each true class (row) by predicted class, as training's PNG; the counts on hover and in the cells."""
    shares = []
    for row in counts:
        total = max(sum(row), 1)
        shares.append([value / total for value in row])
    text = [[f"{100 * share:.1f}%<br>({count})" for share, count in zip(share_row, count_row)]
            for share_row, count_row in zip(shares, counts)]
    figure = go.Figure(go.Heatmap(
        z=shares, x=list(labels), y=list(labels), customdata=counts, text=text, texttemplate="%{text}",
        textfont={"size": 11}, colorscale=CONFUSION_SCALE, zmin=0.0, zmax=1.0,
        colorbar={"title": {"text": "share", "side": "right"}, "thickness": 8, "tickformat": ".0%"},
        hovertemplate="true %{y}, predicted %{x}<br>%{customdata} posts (%{z:.1%} of true %{y})<extra></extra>"))
    # Square cells (y scaled to x, the plot shrunk to fit), labels level and given the margin they need.
    figure.update_xaxes(title_text="predicted", tickangle=0, automargin=True, constrain="domain", side="bottom")
    figure.update_yaxes(title_text="true", autorange="reversed", automargin=True, scaleanchor="x", constrain="domain")
    figure.update_layout(height=CONFUSION_BASE_HEIGHT + CONFUSION_CELL * len(labels),
                         margin={"t": 30, "b": 10, "l": 10, "r": 10})
    if synthetic:
        mark_synthetic(figure)
    return figure


def curves_figure(history: Sequence[Mapping[str, Any]], keys: Sequence[str], synthetic: bool | None) -> go.Figure:
    """One line per history key over the epochs."""
    figure = go.Figure()
    for index, key in enumerate(keys):
        points = [(e["epoch"], e[key]) for e in history if e.get(key) is not None and e.get("epoch") is not None]
        figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=key, mode="lines+markers",
                                    line={"color": RUN_COLOURS[index % len(RUN_COLOURS)],
                                          "dash": "dot" if synthetic else "solid"}))
    figure.update_layout(xaxis_title="epoch", height=300, margin={"t": 30, "b": 20, "l": 10, "r": 10},
                         legend={"orientation": "h", "y": -0.25})
    if synthetic:
        mark_synthetic(figure)
    return figure


def mark_synthetic(figure: go.Figure) -> go.Figure:
    """A 'synthetic data' label in the top-left corner, above the plot, for charts of one synthetic run."""
    figure.add_annotation(text=tables.SYNTHETIC_MARK, xref="paper", yref="paper", x=0, y=1, xanchor="left",
                          yanchor="bottom", yshift=6, showarrow=False, bgcolor="#fff3cd",
                          font={"size": 12, "color": "#7a5b00"})
    return figure
