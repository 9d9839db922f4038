"""The explanation pages' figures and pages: every heatmap has a colour bar (sequential from 0 for
attention and relevancy, diverging around 0 for signed attributions), the model's centre crop is
outlined, the chosen patch is boxed and a click maps back to its patch, attention and relevancy
never share a y-axis; the Attention and Attributions pages under AppTest on the bundled demo.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clara.explain import EXPLAIN_DEFAULTS, PatchGrid, crop_box
from clara_app import figures
from clara_app.gallery import load_examples
from _app_utils import EXAMPLES_DIR, ROOT, app_folders, point_app_at  # noqa: F401 (a fixture)

GRID = PatchGrid(image_size=224, patch_size=32, grid_size=7)
WIDE = Image.new("RGB", (400, 300), (90, 120, 150))  # landscape: the crop is the central 300x300


def traces(figure, kind: str) -> list:
    return [trace for trace in figure.data if trace.type == kind]


def shapes(figure, name: str) -> list:
    return [shape for shape in figure.layout.shapes if shape.name == name]


# ----------------------------------------------------------------------------- figures (no model)

def test_sequential_heatmap_has_a_colour_bar_from_zero_and_the_crop_outlined():
    values = np.random.default_rng(0).random((7, 7))
    figure = figures.heatmap_figure(WIDE, values, GRID, signed=False, colorbar_title="attention weight")
    [heatmap] = traces(figure, "heatmap")
    assert heatmap.colorbar.title.text == "attention weight"
    assert heatmap.zmin == 0 and heatmap.zmax == pytest.approx(values.max())
    assert heatmap.colorscale[0][1].endswith(", 0)")  # no heat is transparent: the picture shows
    x0, y0, x1, y1 = crop_box(WIDE.size, GRID.image_size)
    assert (x0, x1) == (50, 350) and (y0, y1) == (0, 300)
    assert {(s.x0, s.y0, s.x1, s.y1) for s in shapes(figure, "model crop")} == {(x0, y0, x1, y1)}
    # the heat covers the crop only: patch centres inside it, one cell per patch
    assert min(heatmap.x) > x0 and max(heatmap.x) < x1 and len(heatmap.x) == len(heatmap.y) == 7
    assert not shapes(figure, "selected patch")


def test_signed_heatmap_is_diverging_and_centred_at_zero():
    values = np.linspace(-0.2, 0.05, 49).reshape(7, 7)
    figure = figures.heatmap_figure(WIDE, values, GRID, signed=True, colorbar_title="IG attribution")
    [heatmap] = traces(figure, "heatmap")
    assert heatmap.colorbar.title.text == "IG attribution"
    assert heatmap.zmid == 0 and heatmap.zmin == pytest.approx(-0.2) and heatmap.zmax == pytest.approx(0.2)
    from clara.explain.render import AGAINST_RGB, FOR_RGB
    low, middle, high = heatmap.colorscale[0][1], heatmap.colorscale[1][1], heatmap.colorscale[-1][1]
    assert AGAINST_RGB in low and FOR_RGB in high and middle.endswith(", 0)")  # the highlighter's colours


def test_the_selected_patch_is_a_box_and_a_click_maps_back_to_its_patch():
    figure = figures.heatmap_figure(WIDE, np.zeros((7, 7)), GRID, signed=False, colorbar_title="a", patch=(2, 5))
    [box] = shapes(figure, "selected patch")
    crop = crop_box(WIDE.size, GRID.image_size)
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx(figures.patch_rect(crop, 7, (2, 5)))
    [targets] = traces(figure, "scatter")  # the click targets: one per patch, at its centre
    assert len(targets.x) == 49 and targets.name == figures.PATCH_TARGETS
    for index, (x, y) in enumerate(zip(targets.x, targets.y)):
        assert figures.patch_at(x, y, crop, 7) == divmod(index, 7)
        assert targets.text[index] == "row {}, column {}".format(*(v + 1 for v in divmod(index, 7)))
    # Streamlit's selection state of a click, as st.plotly_chart(on_select=...) stores it
    click = {"selection": {"points": [{"x": targets.x[12], "y": targets.y[12], "curve_number": 2}],
                           "point_indices": [12], "box": [], "lasso": []}}
    assert figures.selected_patch(click, crop, 7) == (1, 5)
    assert figures.selected_patch({"selection": {"points": []}}, crop, 7) is None
    assert figures.patch_at(10, 10, crop, 7) is None  # outside the crop: no patch
    assert figures.patch_at(crop[2], crop[3], crop, 7) == (6, 6)  # the far edge belongs to the last patch


def test_attention_and_relevancy_have_separate_labelled_y_axes():
    words = ["a", "b", "c"]
    figure = figures.attention_relevancy_bars(words, np.array([0.2, 0.3, 0.1]), np.array([7e-5, 1e-5, 0]), "positive")
    attention, relevancy = traces(figure, "bar")
    assert attention.yaxis != relevancy.yaxis
    assert figure.layout.yaxis.title.text == "attention weight"
    assert figure.layout.yaxis2.title.text == "relevancy"
    titles = [a.text for a in figure.layout.annotations]
    assert any("Raw attention" in t for t in titles) and any("Relevancy" in t and "positive" in t for t in titles)


def test_word_maps_share_one_colour_bar():
    maps = [np.full((7, 7), v) for v in (0.1, 0.4, 0.2)]
    figure = figures.small_multiples_figure(WIDE, maps, ["x", "y", "z"], GRID, colorbar_title="attention weight")
    heatmaps = traces(figure, "heatmap")
    assert len(heatmaps) == 3 and {h.coloraxis for h in heatmaps} == {"coloraxis"}
    assert figure.layout.coloraxis.colorbar.title.text == "attention weight"
    assert figure.layout.coloraxis.cmin == 0 and figure.layout.coloraxis.cmax == pytest.approx(0.4)


# ----------------------------------------------------------------------------- pages (AppTest, demo model)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


def check(at):
    assert not at.exception, "\n\n".join(e.value for e in at.exception)
    return at


@pytest.fixture
def app(app_folders, monkeypatch):
    point_app_at(app_folders, monkeypatch)
    return check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240).run())


def chart_figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def heatmap_colour_bars(specs: list[dict]) -> list:
    """For every heatmap trace drawn: its colour bar (own or through its shared colour axis)."""
    bars = []
    for spec in specs:
        for trace in spec["data"]:
            if trace["type"] == "heatmap":
                axis = trace.get("coloraxis")
                bars.append(spec["layout"][axis].get("colorbar") if axis else trace.get("colorbar"))
    return bars


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_attention_page_colour_bars_crop_and_patch_choice(app):
    at = check(app.switch_page("pages/predict.py").run())
    check(at.button(key="example_0").click().run())
    check(at.button(key="predict").click().run())
    at = check(at.switch_page("pages/attention.py").run())
    assert at.selectbox(key="explain_post").value.startswith("Last prediction:")
    assert "Raw attention beside relevancy" in texts(at.header)
    specs = chart_figures(at)
    bars = heatmap_colour_bars(specs)
    assert bars and all(bar and bar["title"]["text"] for bar in bars), bars
    titles = [spec["layout"].get("title", {}).get("text", "") for spec in specs]
    assert titles[0].startswith("Attention: text tokens → patches") and titles[1].startswith("Relevancy of each patch")
    word_bars = next(spec for spec in specs if [t["type"] for t in spec["data"]] == ["bar", "bar"])
    assert word_bars["data"][0]["yaxis"] != word_bars["data"][1].get("yaxis", "y")  # never one y-axis
    word_maps = next(spec for spec in specs if "coloraxis" in spec["layout"])
    words = load_examples(EXAMPLES_DIR)[0].text.split()
    assert [a["text"] for a in word_maps["layout"]["annotations"]] == words  # one map per word
    assert "the map covers that crop only" in texts(at.caption)
    assert all(any(s.get("name") == "model crop" for s in spec["layout"].get("shapes", ()))
               for spec in specs if any(t["type"] == "image" for t in spec["data"]))

    at.selectbox(key="attention_layer").set_value(1)
    at.selectbox(key="attention_head").set_value(2)
    check(at.run())
    at.selectbox(key="attention_patch").set_value("row 2, column 3")  # the drop-down fallback
    check(at.run())
    [box] = [s for spec in chart_figures(at) for s in spec["layout"].get("shapes", ())
             if s.get("name") == "selected patch"]  # on the clickable picture, the only one boxed
    image = Image.open(EXAMPLES_DIR / load_examples(EXAMPLES_DIR)[0].image_path.name)
    crop = crop_box(image.size)  # a square picture: the whole of it
    grid = round((len(at.selectbox(key="attention_patch").options) - 1) ** 0.5)
    assert figures.patch_at((box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2, crop, grid) == (1, 2)
    assert "Attention of row 2, column 3 on each word" in [spec["layout"].get("title", {}).get("text")
                                                           for spec in chart_figures(at)]


def test_attributions_page_at_the_defaults(app):
    at = check(app.switch_page("pages/attributions.py").run())
    assert "Not timed on this server yet" in texts(at.info)
    assert at.checkbox(key="attr_deletion").value is False  # deletion curves are off by default
    assert at.select_slider(key="attr_steps").value == EXPLAIN_DEFAULTS.max_steps
    check(at.button[0].click().run())  # the form's submit button, every setting at its default
    deltas = [m for m in at.metric if "convergence delta" in m.label]
    assert len(deltas) == 2
    assert not [w for w in at.warning if "did not converge" in w.value], texts(at.warning)
    shares = {m.label: float(m.value.rstrip("%")) for m in at.metric if "share" in m.label}
    assert sum(shares.values()) == pytest.approx(100, abs=1)
    example = load_examples(EXAMPLES_DIR)[0]
    words = next(d.value for d in at.dataframe if "attribution" in d.value.columns)
    assert list(words["word"]) == example.text.split()
    assert {"Words", "Image"} <= {h.value for h in at.header} and "Deletion curves" not in {h.value for h in at.header}
    specs = chart_figures(at)
    bars = heatmap_colour_bars(specs)
    assert len(bars) == 2 and all(bar["title"]["text"] for bar in bars)  # image IG and occlusion
    for spec in specs:
        [heatmap] = [t for t in spec["data"] if t["type"] == "heatmap"]
        assert heatmap["zmid"] == 0 and heatmap["zmin"] == -heatmap["zmax"]  # signed: diverging around 0
    assert "Time per step on this server" in texts(at.caption)

    # another post at the same settings: an estimate measured by the run above; deletion curves on request
    picker = at.selectbox(key="explain_post")
    check(picker.set_value(picker.options[1]).run())
    assert "measured on this server" in texts(at.info)
    at.checkbox(key="attr_deletion").check()
    check(at.button[0].click().run())
    assert "Deletion curves" in {h.value for h in at.header}
    assert sum(1 for spec in chart_figures(at) if spec["layout"].get("xaxis", {}).get("title", {}).get("text")
               == "fraction removed") == 2  # image and text deletion curves
