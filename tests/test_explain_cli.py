"""scripts/explain.py's heatmap PNGs: each has a labelled colour bar (diverging and symmetric around 0
for signed attributions, sequential from 0 for attention/relevancy), the model's crop outlined, in the
colour schemes the dashboard uses (clara.explain.colours)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clara.explain import crop_box
from clara.explain.colours import AGAINST_RGB, MAP_SCALES, SEQUENTIAL_STOPS, rgb_fractions
from clara.explain.plots import colormap, heatmap_figure, save_figure
from clara.precision import PRECISION_ENV

from _explain_utils import random_image, tiny_predictor


def _parts(figure):
    """(picture axes, heat image, colour bar) of a heatmap figure."""
    [axes] = [a for a in figure.axes if a.images and len(a.images) == 2]
    heat = axes.images[1]
    assert heat.colorbar is not None and heat.colorbar.ax in figure.axes
    return axes, heat, heat.colorbar


def _crop_outlines(axes):
    return {(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height())
            for p in axes.patches if p.get_label() == "model crop"}


def test_a_signed_map_gets_a_diverging_bar_centred_at_zero():
    image = random_image(90, 60)
    values = np.linspace(-0.2, 0.05, 16).reshape(4, 4)
    axes, heat, bar = _parts(heatmap_figure(image, values, signed=True, label="IG score (p)", image_size=32))
    assert heat.get_clim() == pytest.approx((-0.2, 0.2))
    assert bar.ax.get_ylabel() == "IG score (p)"
    assert bar.vmin == pytest.approx(-0.2) and bar.vmax == pytest.approx(0.2)
    cmap = heat.get_cmap()
    assert cmap.name == "clara_diverging"
    # red (against) at the bottom, clear at 0, green (for) at the top: the highlighter's colours
    assert cmap(0.0)[:3] == pytest.approx(rgb_fractions(AGAINST_RGB), abs=0.01)
    assert cmap(0.5)[3] == pytest.approx(0.0, abs=0.01) and cmap(1.0)[1] > cmap(1.0)[0]
    assert _crop_outlines(axes) == {crop_box(image.size, 32)}
    assert axes.get_xlim() == (0, 90) and axes.get_ylim() == (60, 0)  # the whole original picture


def test_an_unsigned_map_gets_a_sequential_bar_from_zero():
    image = random_image(60, 90)
    values = np.arange(16, dtype=float).reshape(4, 4) / 100
    _, heat, bar = _parts(heatmap_figure(image, values, signed=False, label="attention weight", opacity=0.5))
    assert heat.get_clim() == pytest.approx((0.0, 0.15)) and bar.ax.get_ylabel() == "attention weight"
    cmap = heat.get_cmap()
    assert cmap.name == "clara_sequential" and cmap(0.0)[3] == pytest.approx(0.0, abs=0.01)
    assert cmap(1.0)[:3] == pytest.approx(rgb_fractions(SEQUENTIAL_STOPS[-1][1]), abs=0.01)
    assert cmap(1.0)[3] == pytest.approx(0.5, abs=0.01)  # opacity at full heat
    assert colormap(False)(1.0)[3] == pytest.approx(SEQUENTIAL_STOPS[-1][2], abs=0.01)
    with pytest.raises(ValueError, match="2-D"):
        heatmap_figure(image, np.zeros(4), signed=False, label="x")


def test_the_app_and_the_cli_share_one_scheme():
    from clara_app import figures

    assert [stop[0] for stop in figures.SEQUENTIAL_SCALE] == [stop[0] for stop in SEQUENTIAL_STOPS]
    assert figures.SEQUENTIAL_SCALE[-1][1] == f"rgba({SEQUENTIAL_STOPS[-1][1]}, {SEQUENTIAL_STOPS[-1][2]})"


def test_explain_script_writes_every_overlay_with_its_colour_bar(tmp_path, monkeypatch):
    from clara.cli import explain as cli
    from clara.explain import plots

    monkeypatch.setenv(PRECISION_ENV, "fp32")
    drawn = {}

    def keep(figure, path):
        drawn[path.name] = figure
        return save_figure(figure, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    image = random_image(90, 60, seed=1)
    image.save(tmp_path / "post.png")
    tiny_predictor(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "post.png"),
                     "--text", "i love this", "--out", str(out), "--steps", "4", "--max-steps", "4",
                     "--methods", "attention,relevancy,image_ig,occlusion"]) == 0
    methods = ("attention", "relevancy", "image_ig", "occlusion")
    assert sorted(drawn) == sorted(f"overlay_{m}.png" for m in methods)
    for method in methods:
        axes, heat, bar = _parts(drawn[f"overlay_{method}.png"])
        scale = MAP_SCALES[method]
        assert bar.ax.get_ylabel() == scale.label
        low, high = heat.get_clim()
        assert (low == pytest.approx(-high)) if scale.signed else low == 0.0
        assert heat.get_cmap().name == ("clara_diverging" if scale.signed else "clara_sequential")
        assert len(_crop_outlines(axes)) == 1 and scale.title in axes.get_title()
        written = Image.open(out / f"overlay_{method}.png")
        # the picture (enlarged to be readable) plus the colour bar on its right
        assert written.width > written.height * 90 / 60 and written.height >= 60
