"""The colour schemes of every explanation view, in one place: the dashboard (plotly, clara_app)
and scripts/explain.py (matplotlib PNGs) both build their scales from these stops, and the word
highlighter uses the same green/red. Sequential (YlOrRd, transparent at 0) for attention and
relevancy; diverging (red against the explained class, transparent at 0, green for it) for signed
attributions, with limits symmetric around 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOR_RGB = "0, 160, 60"  # green: pushes towards the explained class
AGAINST_RGB = "220, 40, 40"  # red: pushes away from it
SEQUENTIAL_NAME = "YlOrRd"  # matplotlib's name of the sequential scheme the stops below are taken from

# (position on the scale 0..1, "r, g, b", opacity): zero heat is transparent, so the picture stays visible.
SEQUENTIAL_STOPS = ((0.0, "255, 255, 204", 0.0), (0.15, "255, 237, 160", 0.45), (0.4, "254, 178, 76", 0.65),
                    (0.7, "252, 78, 42", 0.8), (1.0, "128, 0, 38", 0.9))
DIVERGING_STOPS = ((0.0, AGAINST_RGB, 0.9), (0.5, "255, 255, 255", 0.0), (1.0, FOR_RGB, 0.9))
CROP_OUTLINE_COLOURS = ("black", "white")  # a solid dark line under a dashed light one: visible on any picture


@dataclass(frozen=True)
class MapScale:
    """What one method's patch map holds: its title, the colour-bar label and whether it is signed."""
    title: str
    label: str
    signed: bool


MAP_SCALES = {
    "attention": MapScale("Attention: text tokens → patches (mean over words)", "attention weight", signed=False),
    "relevancy": MapScale("Relevancy of each image patch", "relevancy", signed=False),
    "image_ig": MapScale("Integrated gradients on the pixels", "IG score (p)", signed=True),
    "occlusion": MapScale("Occlusion of each image patch", "drop of p if hidden", signed=True),
}


def stops(signed: bool) -> tuple[tuple[float, str, float], ...]:
    """The colour stops of the diverging (signed) or the sequential scheme."""
    return DIVERGING_STOPS if signed else SEQUENTIAL_STOPS


def colour_limits(values: np.ndarray, signed: bool) -> tuple[float, float]:
    """(low, high) of a colour scale: symmetric around 0 for signed values, from 0 otherwise."""
    finite = np.nan_to_num(np.asarray(values, dtype=np.float64))
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    peak = peak if peak > 0 else 1.0
    return (-peak, peak) if signed else (0.0, peak)


def rgb_fractions(rgb: str) -> tuple[float, float, float]:
    """"r, g, b" (0..255) as matplotlib's (r, g, b) fractions."""
    red, green, blue = (int(part) / 255.0 for part in rgb.split(","))
    return red, green, blue
