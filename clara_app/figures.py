"""The plotly figures of the explanation pages, built here so that tests can inspect them: patch
heatmaps over the image, each with a colour bar (sequential from 0 for attention and relevancy,
diverging around 0 for signed attributions, in the word highlighter's green/red), the model's
centre crop outlined, the chosen patch boxed and every patch clickable; raw attention beside
relevancy per word on separate y-axes (their scales differ by orders of magnitude).
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image

from clara.explain import PatchGrid, crop_box
from clara.explain.colours import CROP_OUTLINE_COLOURS, colour_limits, stops


def plotly_scale(signed: bool) -> list[list[Any]]:
    """The library's diverging (signed) or sequential scheme (clara.explain.colours) as a plotly colorscale."""
    return [[position, f"rgba({rgb}, {alpha:g})"] for position, rgb, alpha in stops(signed)]


# Transparent at 0, so that no heat leaves the picture visible: the schemes scripts/explain.py draws too.
SEQUENTIAL_SCALE = plotly_scale(signed=False)
DIVERGING_SCALE = plotly_scale(signed=True)  # red (against the explained class) - clear at 0 - green (for it)
CROP_UNDERLINE = dict(color=CROP_OUTLINE_COLOURS[0], width=3)
CROP_LINE = dict(color=CROP_OUTLINE_COLOURS[1], width=2, dash="dash")  # over CROP_UNDERLINE: visible on any picture
PATCH_LINE = dict(color="#00b7ff", width=4)
DISPLAY_MAX_SIDE = 480  # px of the picture sent to the browser (the heat grid is far coarser)
ATTENTION_COLOUR, RELEVANCY_COLOUR = "#7f7f7f", "#d62728"
PATCH_TARGETS = "patches"  # the name of the click-target trace
CROP_NOTE = ("The model sees only the centre square of the picture (dashed outline; the rest is cut off by "
             "its resize + centre crop): the map covers that crop only.")


def image_source(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> tuple[str, float]:
    """(data URI of the picture scaled to at most `max_side`, original px per displayed px)."""
    picture = image.convert("RGB")
    scale = max(picture.size) / max_side if max(picture.size) > max_side else 1.0
    if scale > 1.0:
        picture = picture.resize((round(picture.width / scale), round(picture.height / scale)),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), scale


def colour_range(values: np.ndarray, signed: bool) -> dict[str, float]:
    """zmin/zmax of a heatmap: symmetric around 0 for signed values, from 0 otherwise."""
    low, high = colour_limits(values, signed)
    return dict(zmin=low, zmax=high, zmid=0.0) if signed else dict(zmin=low, zmax=high)


def patch_centres(box: tuple[int, int, int, int], grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the patch centres, in pixels of the original picture."""
    x0, y0, x1, y1 = box
    steps = (np.arange(grid_size) + 0.5) / grid_size
    return x0 + steps * (x1 - x0), y0 + steps * (y1 - y0)


def patch_rect(box: tuple[int, int, int, int], grid_size: int, patch: tuple[int, int]) -> tuple[float, ...]:
    """(x0, y0, x1, y1) of patch (row, column) in pixels of the original picture."""
    x0, y0, x1, y1 = box
    width, height = (x1 - x0) / grid_size, (y1 - y0) / grid_size
    row, column = patch
    return x0 + column * width, y0 + row * height, x0 + (column + 1) * width, y0 + (row + 1) * height


def patch_at(x: float, y: float, box: tuple[int, int, int, int], grid_size: int) -> tuple[int, int] | None:
    """The (row, column) of the patch under a point of the original picture; None outside the crop."""
    x0, y0, x1, y1 = box
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        return None
    column = min(int((x - x0) / (x1 - x0) * grid_size), grid_size - 1)
    row = min(int((y - y0) / (y1 - y0) * grid_size), grid_size - 1)
    return row, column


def selected_patch(selection: Mapping[str, Any] | None, box: tuple[int, int, int, int],
                   grid_size: int) -> tuple[int, int] | None:
    """The patch a click (Streamlit's plotly selection state) landed on, or None."""
    points = list((selection or {}).get("selection", {}).get("points", []) or [])
    for point in reversed(points):
        if "x" in point and "y" in point:
            patch = patch_at(float(point["x"]), float(point["y"]), box, grid_size)
            if patch is not None:
                return patch
    return None


def _picture_axes(figure: go.Figure, size: tuple[int, int], row: int | None = None, col: int | None = None) -> None:
    width, height = size
    options = dict(visible=False, fixedrange=True)
    figure.update_xaxes(range=[0, width], constrain="domain", **options, row=row, col=col)
    figure.update_yaxes(range=[height, 0], scaleanchor="x" if row is None else None, **options, row=row, col=col)


def heatmap_figure(image: Image.Image, heatmap: np.ndarray, grid: PatchGrid, *, signed: bool, colorbar_title: str,
                   title: str = "", patch: tuple[int, int] | None = None, height: int = 340) -> go.Figure:
    """A patch heatmap over the ORIGINAL picture: one cell per patch inside the centre crop (outlined),
    a colour bar, `patch` boxed; every cell is a click target (see `selected_patch`)."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if values.shape != (grid.grid_size, grid.grid_size):
        raise ValueError(f"heatmap shape {values.shape} is not the {grid.grid_size}x{grid.grid_size} patch grid")
    box = crop_box(image.size, grid.image_size)
    source, scale = image_source(image)
    xs, ys = patch_centres(box, grid.grid_size)
    names = [[f"row {r + 1}, column {c + 1}" for c in range(grid.grid_size)] for r in range(grid.grid_size)]
    figure = go.Figure([
        go.Image(source=source, x0=0, y0=0, dx=scale, dy=scale, hoverinfo="skip", name="picture"),
        go.Heatmap(z=values, x=xs, y=ys, text=names, colorscale=DIVERGING_SCALE if signed else SEQUENTIAL_SCALE,
                   **colour_range(values, signed), colorbar=dict(title=dict(text=colorbar_title, side="right"),
                                                                 thickness=14, len=0.9, exponentformat="e"),
                   hoverinfo="skip", name=colorbar_title),
        # Invisible points at the patch centres carry the hover text and the clicks: plotly selects scatter
        # points, not heatmap cells, and with hoverdistance=-1 a click anywhere picks the nearest centre.
        go.Scatter(x=np.tile(xs, grid.grid_size), y=np.repeat(ys, grid.grid_size), mode="markers",
                   marker=dict(size=1, opacity=0), selected=dict(marker=dict(opacity=0)),
                   unselected=dict(marker=dict(opacity=0)), text=[name for row in names for name in row],
                   customdata=values.reshape(-1), hovertemplate="%{text}: %{customdata:.3g}<extra></extra>",
                   name=PATCH_TARGETS, showlegend=False),
    ])
    x0, y0, x1, y1 = box
    for line in (CROP_UNDERLINE, CROP_LINE):  # the crop the model sees
        figure.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=line, name="model crop")
    if patch is not None:
        px0, py0, px1, py1 = patch_rect(box, grid.grid_size, patch)
        figure.add_shape(type="rect", x0=px0, y0=py0, x1=px1, y1=py1, line=PATCH_LINE, name="selected patch")
    _picture_axes(figure, image.size)
    figure.update_layout(height=height, margin=dict(l=0, r=0, t=30 if title else 4, b=0),
                         title=dict(text=title, font=dict(size=14)) if title else None,
                         plot_bgcolor="rgba(0,0,0,0)", hoverdistance=-1)
    return figure


def small_multiples_figure(image: Image.Image, heatmaps: Sequence[np.ndarray], titles: Sequence[str],
                           grid: PatchGrid, colorbar_title: str, columns: int = 6) -> go.Figure:
    """One sequential heatmap per word over the picture, on ONE colour scale (one colour bar), so the
    maps compare across words."""
    columns = max(1, min(columns, len(heatmaps)))
    rows = max(1, -(-len(heatmaps) // columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=list(titles),
                           horizontal_spacing=0.01, vertical_spacing=0.06 / max(rows, 1) + 0.02)
    box = crop_box(image.size, grid.image_size)
    source, scale = image_source(image, max_side=160)
    xs, ys = patch_centres(box, grid.grid_size)
    limits = colour_range(np.stack([np.asarray(h, dtype=np.float64) for h in heatmaps]) if heatmaps
                          else np.zeros(1), signed=False)
    for index, (values, word) in enumerate(zip(heatmaps, titles)):
        row, col = index // columns + 1, index % columns + 1
        figure.add_trace(go.Image(source=source, x0=0, y0=0, dx=scale, dy=scale, hoverinfo="skip"), row=row, col=col)
        figure.add_trace(go.Heatmap(z=np.asarray(values, dtype=np.float64), x=xs, y=ys, coloraxis="coloraxis",
                                    hovertemplate=f"{word}: %{{z:.3g}}<extra></extra>"), row=row, col=col)
        x0, y0, x1, y1 = box
        figure.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="white", width=1, dash="dash"),
                         name="model crop", row=row, col=col)
        _picture_axes(figure, image.size, row=row, col=col)
    figure.update_layout(coloraxis=dict(colorscale=SEQUENTIAL_SCALE, cmin=limits["zmin"], cmax=limits["zmax"],
                                        colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=14,
                                                      exponentformat="e")),
                         height=60 + 150 * rows, margin=dict(l=0, r=0, t=30, b=0), plot_bgcolor="rgba(0,0,0,0)")
    figure.update_annotations(font_size=12)
    return figure


def attention_relevancy_bars(words: Sequence[str], attention: np.ndarray, relevancy: np.ndarray,
                             target: str) -> go.Figure:
    """Per word: raw attention (patches -> word) and relevancy for `target`, each on its own y-axis."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                           subplot_titles=("Raw attention: how much the patches read each word (no class)",
                                           f"Relevancy of each word for “{target}” (the explanation)"))
    figure.add_trace(go.Bar(x=list(words), y=np.asarray(attention, dtype=np.float64), name="raw attention",
                            marker_color=ATTENTION_COLOUR), row=1, col=1)
    figure.add_trace(go.Bar(x=list(words), y=np.asarray(relevancy, dtype=np.float64), name="relevancy",
                            marker_color=RELEVANCY_COLOUR), row=2, col=1)
    figure.update_yaxes(title_text="attention weight", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="relevancy", rangemode="tozero", exponentformat="e", row=2, col=1)
    figure.update_layout(height=360, margin=dict(t=40, b=20), showlegend=False)
    figure.update_annotations(font_size=13)
    return figure


def patch_word_bars(words: Sequence[str], weights: np.ndarray, which: str) -> go.Figure:
    """The attention weight of one patch (or the mean of all patches) on each word."""
    figure = go.Figure(go.Bar(x=list(words), y=np.asarray(weights, dtype=np.float64), marker_color=ATTENTION_COLOUR))
    figure.update_layout(height=300, margin=dict(t=30, b=20), title=dict(text=which, font=dict(size=14)),
                         yaxis=dict(title="attention weight", rangemode="tozero"))
    return figure
