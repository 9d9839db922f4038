"""Patch heatmaps as matplotlib figures (scripts/explain.py's overlay PNGs): the original picture,
the map over the centre crop the model sees (outlined), and a labelled colour bar, sequential for
attention/relevancy and diverging around 0 for signed attributions, in the schemes of
clara.explain.colours that the dashboard uses too. Object API on the Agg canvas: no pyplot state,
safe in threads, no display needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clara.explain.attention import crop_box
from clara.explain.colours import CROP_OUTLINE_COLOURS, colour_limits, rgb_fractions, stops
from clara.jsonio import atomic_write

DISPLAY_MAX_SIDE = 800  # px of the picture in the PNG (the heat grid is far coarser)
DISPLAY_MIN_SIDE = 320  # tiny pictures are enlarged, so that the colour bar's label stays readable
DPI = 100


def colormap(signed: bool, opacity: float = 0.9) -> Any:
    """The diverging (signed) or sequential scheme as a matplotlib colormap; `opacity` is the
    opacity at full heat (the schemes' own peak is 0.9), zero heat stays transparent."""
    from matplotlib.colors import LinearSegmentedColormap

    scheme = stops(signed)
    peak = max(alpha for _, _, alpha in scheme)
    colours = [(position, (*rgb_fractions(rgb), alpha * opacity / peak)) for position, rgb, alpha in scheme]
    return LinearSegmentedColormap.from_list("clara_diverging" if signed else "clara_sequential", colours)


def heatmap_figure(image: Image.Image, heatmap: np.ndarray, *, signed: bool, label: str, image_size: int | None = None,
                   title: str = "", opacity: float = 0.9, smooth: bool = False) -> Any:
    """`heatmap` (a patch grid, or a crop-space pixel map) over the ORIGINAL `image`: the map covers
    the model's centre crop (outlined), with a colour bar labelled `label`. Returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if values.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (a patch grid or pixel map); got shape {values.shape}")
    picture = image.convert("RGB")
    width, height = picture.size
    scale = min(DISPLAY_MAX_SIDE / max(width, height), max(1.0, DISPLAY_MIN_SIDE / max(width, height)))
    shown = picture.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    # Laid out in inches: the picture at its displayed size, the colour bar beside it, the title above.
    picture_w, picture_h, pad, bar_w = shown.width / DPI, shown.height / DPI, 0.05, 0.18
    figure_w, figure_h = picture_w + 1.3, picture_h + (0.4 if title else 0.1)
    figure = Figure(figsize=(figure_w, figure_h), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((pad / figure_w, pad / figure_h, picture_w / figure_w, picture_h / figure_h))
    bar_axes = figure.add_axes(((picture_w + 0.15) / figure_w, pad / figure_h, bar_w / figure_w, picture_h / figure_h))
    axes.imshow(np.asarray(shown), extent=(0, width, height, 0), interpolation="antialiased")
    x0, y0, x1, y1 = crop_box(picture.size, image_size)
    low, high = colour_limits(values, signed)
    heat = axes.imshow(values, extent=(x0, x1, y1, y0), cmap=colormap(signed, opacity), vmin=low, vmax=high,
                       interpolation="bilinear" if smooth else "nearest")
    for colour, style, width_pt in zip(CROP_OUTLINE_COLOURS, ("solid", "dashed"), (2.5, 1.5)):
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=style,
                                 linewidth=width_pt, label="model crop"))
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_axis_off()
    bar = figure.colorbar(heat, cax=bar_axes)
    bar.set_label(label)
    if title:
        axes.set_title(title, fontsize=11)
    return figure


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write `figure` as a PNG atomically (clara.jsonio.atomic_write), trimmed to its content."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.05),
                        suffix=".png")
