"""The dashboard under Streamlit's AppTest: every page on the bundled demo checkpoint, navigated with
st.navigation (AppTest.switch_page), with uploads, text entry and buttons; asserts on what is shown.

The model is cached with st.cache_resource, so it loads once for the whole module. The app reads
copies of the bundled demos (fixture `app_folders`), never the working tree's checkpoints/ and
results/, where a user's own training runs land.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import zipfile

import pandas as pd
import pytest

from clara import batch, catalog
from clara.ocr import available_ocr_engines
from clara_app.gallery import Example, load_examples
from _app_utils import (BAD_UPLOADS, DEMO_CHECKPOINT, EXAMPLES_DIR, ROOT, app_folders,  # noqa: F401 (a fixture)
                        point_app_at, require_demo)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
TIMEOUT = 180
LABELS = ["positive", "neutral", "negative"]


def check(at: AppTest) -> AppTest:
    """No page may raise: Streamlit shows exceptions as st.exception elements."""
    assert not at.exception, "\n\n".join(e.value for e in at.exception)
    return at


@pytest.fixture
def app(app_folders, monkeypatch) -> AppTest:
    point_app_at(app_folders, monkeypatch)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    return check(at.run())


def open_page(at: AppTest, page: str) -> AppTest:
    return check(at.switch_page(f"pages/{page}.py").run())


def frame(at: AppTest, *columns: str, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """The table holding these columns and not `exclude` (st.dataframe keys do not reach AppTest)."""
    matches = [d.value for d in at.dataframe
               if set(columns) <= set(d.value.columns) and not set(exclude) & set(d.value.columns)]
    shown = [list(d.value.columns) for d in at.dataframe]
    assert len(matches) == 1, f"{len(matches)} tables with columns {columns}; tables: {shown}"
    return matches[0]


def image_captions(at: AppTest) -> list[str]:
    return [image.proto.imgs[0].caption for image in at.get("image")]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def examples() -> list[Example]:
    return load_examples(EXAMPLES_DIR)


def predict_example(at: AppTest, index: int) -> AppTest:
    open_page(at, "predict")
    check(at.button(key=f"example_{index}").click().run())
    return check(at.button(key="predict").click().run())


# ----------------------------------------------------------------------------- home

def test_home_opens_on_the_demo_with_its_banner(app, app_folders):
    assert "You are using the demo checkpoint" in texts(app.info)
    assert "not a real sentiment model" in texts(app.info)
    assert "python scripts/train.py --dataset mvsa_single --data-dir" in texts(app.info)
    table = frame(app, "checkpoint", "encoders")
    demo_row = table[table["checkpoint"] == "demo"].iloc[0]
    assert (demo_row["dataset"], demo_row["encoders"], demo_row["metrics split"]) == ("mvsa_single", "tiny", "test")
    assert app.selectbox(key="checkpoint_picker").value == str(app_folders.demo)
    assert demo_row["data"] == "synthetic" and demo_row["training data"].startswith("synthetic")
    assert "**Training data:** synthetic" in texts(app.markdown)
    assert "Device in use:" in texts(app.markdown) and "`cpu`" in texts(app.markdown)
    assert "demo" in texts(app.sidebar.markdown)


def test_the_checkpoint_picked_on_home_is_used_by_every_page(tmp_path, monkeypatch):
    require_demo()
    root = tmp_path / "checkpoints"
    shutil.copytree(DEMO_CHECKPOINT, root / "demo")
    trained = root / "clara_mvsa_single_best"
    shutil.copytree(DEMO_CHECKPOINT, trained, ignore=shutil.ignore_patterns("results"))
    info = json.loads((trained / "config.json").read_text())
    info["source"] = {"kind": "clara"}  # as if trained by scripts/train.py
    (trained / "config.json").write_text(json.dumps(info))
    monkeypatch.setenv("CLARA_CHECKPOINTS_DIR", str(root))
    monkeypatch.setenv("CLARA_RESULTS_DIR", str(tmp_path / "results"))

    at = check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    table = frame(at, "checkpoint", "encoders")
    assert list(table["checkpoint"]) == ["demo", "clara_mvsa_single_best"]
    assert list(table["source"]) == ["demo (synthetic data)", "trained"]
    assert at.selectbox(key="checkpoint_picker").value == str(root / "demo")
    check(at.selectbox(key="checkpoint_picker").set_value(str(trained)).run())
    assert "You are using the demo checkpoint" not in texts(at.info)
    assert f"**Folder:** `{trained.resolve()}`" in texts(at.markdown)
    at = predict_example(at, 0)
    assert at.metric[0].value == examples()[0].label
    assert at.session_state["checkpoint_path"] == str(trained)  # still the one picked, on another page
    assert "You are using the demo checkpoint" not in texts(at.info)
    # (AppTest drops the sidebar's elements on reruns, so the sidebar is checked in the browser test)


def test_a_pooled_fusion_checkpoint_says_it_has_no_attention_maps(tmp_path, monkeypatch):
    """Checkpoints imported from the notebooks fuse pooled vectors: no token-to-patch attention."""
    require_demo()
    from clara.checkpoint import save_checkpoint
    from clara.config import get_preset
    from clara.model import create_model

    cfg = get_preset("mvsa_single").override({"model.encoders": "tiny", "model.fusion": "pooled",
                                              "model.hidden_dim": "64", "model.fusion_heads": "4"})
    model, tokenizer = create_model(cfg)
    pooled = save_checkpoint(tmp_path / "checkpoints" / "notebook_mvsa_single", model, tokenizer, cfg,
                             extra={"source": {"kind": "notebook", "file": "mvsa_single.pt"}})
    monkeypatch.setenv("CLARA_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("CLARA_RESULTS_DIR", str(tmp_path / "results"))

    at = check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    table = frame(at, "checkpoint", "encoders")
    assert list(table["source"]) == ["imported notebook"] and list(table["fusion"]) == ["pooled"]
    assert at.session_state["checkpoint_path"] == str(pooled)
    at = open_page(at, "attention")
    assert "fuses pooled vectors" in texts(at.info)
    at = open_page(at, "metrics")
    assert "No results yet" in texts(at.info)


# ----------------------------------------------------------------------------- predict

def test_predict_every_gallery_example(app):
    """Each bundled example (one click, then Predict) gets its true label from the demo model."""
    at = open_page(app, "predict")
    for index, example in enumerate(examples()):
        check(at.button(key=f"example_{index}").click().run())
        assert at.text_area(key="post_text").value == example.text
        if not example.text:  # the meme: its text is in the picture
            if not available_ocr_engines():
                at.text_area(key="image_text").set_value(example.note.split("'")[1])
            assert at.text_area(key="image_text").value
        check(at.button(key="predict").click().run())
        assert at.metric[0].label == "Predicted label"
        label = at.metric[0].value
        assert label == example.label, f"the demo model gets its own gallery example {example.name} wrong"
        assert 1 / 3 <= float(at.metric[1].value.rstrip("%")) / 100 <= 1
        assert at.header[0].value == f"Prediction: {label}"
        views = frame(at, "view", "says")
        assert list(views["view"]) == ["final", "prediction head", "verification head", "text only", "image only"]
        for _, row in views.iterrows():
            assert sum(row[name] for name in LABELS) == pytest.approx(1.0, abs=1e-5)
        assert views.iloc[0]["says"] == label
        assert "The verification head" in texts(at.markdown)
        assert len(at.get("plotly_chart")) == 1


def test_predict_an_upload_with_ocr_and_typed_text(app):
    meme = next(e for e in examples() if e.name.startswith("meme_"))
    at = open_page(app, "predict")
    at.file_uploader(key="upload").set_value(("my meme.jpg", meme.image_path.read_bytes(), "image/jpeg"))
    check(at.run())
    assert any(caption.startswith("my meme.jpg · JPEG · 384x384") for caption in image_captions(at))
    ocr_text = at.text_area(key="image_text").value
    if available_ocr_engines():
        assert "OCR read" in texts(at.caption)
        assert ocr_text, "OCR found nothing in the meme example"
    else:
        assert "OCR is off" in texts(at.caption)
        at.text_area(key="image_text").set_value("typed by hand")
    at.text_area(key="post_text").set_value("my own tweet")
    at.radio(key="text_source").set_value("post text only")
    check(at.button(key="predict").click().run())
    assert at.metric[0].value in LABELS
    assert "Model input text: my own tweet" in texts(at.caption)
    at.radio(key="text_source").set_value("image text only")
    check(at.button(key="predict").click().run())
    assert at.metric[0].value in LABELS


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_show_a_message_not_a_traceback(app, case):
    name, make, expected = BAD_UPLOADS[case]
    at = open_page(app, "predict")
    at.file_uploader(key="upload").set_value((name, make(), "image/png"))
    check(at.run())
    assert expected in texts(at.error)
    at.text_area(key="post_text").set_value("some text")
    check(at.button(key="predict").click().run())
    assert "This image cannot be used" in texts(at.warning)
    assert not at.metric  # nothing predicted
    check(at.file_uploader(key="upload").clear().run())  # removing the upload removes its image and error
    assert not at.error and "Choose an example or upload an image." in texts(at.info)


@pytest.mark.parametrize("text, expected", [("", "The text is empty"),
                                            ("x" * 10_000, "The text has 10,000 characters")],
                         ids=["empty", "10000 characters"])
def test_empty_and_huge_texts_show_a_message(app, text, expected):
    at = open_page(app, "predict")
    check(at.button(key="example_0").click().run())
    at.text_area(key="post_text").set_value(text)
    at.radio(key="text_source").set_value("post text only")
    check(at.button(key="predict").click().run())
    assert expected in texts(at.error)
    assert not at.metric


def test_a_long_text_is_predicted_with_a_truncation_warning(app):
    at = open_page(app, "predict")
    check(at.button(key="example_0").click().run())
    at.text_area(key="post_text").set_value("love the park " * 300)  # 4,200 characters, ~900 tokens
    check(at.button(key="predict").click().run())
    assert at.metric[0].value in LABELS
    assert "The text is longer than the model reads" in texts(at.warning)


def test_predict_button_without_an_image_warns(app):
    at = open_page(app, "predict")
    check(at.button(key="predict").click().run())
    assert "Choose an example or upload an image first." in texts(at.warning)


# ----------------------------------------------------------------------------- explanations

# The Attention and Attributions pages: tests/test_app_explain.py (their figures, colour bars, patch clicks).


# ----------------------------------------------------------------------------- metrics, errors, batch

def test_errors_page(app, app_folders):
    at = open_page(app, "errors")
    run = next(r for r in catalog.find_results([], catalog.find_checkpoints(app_folders.checkpoints))
               if r.name == "demo")
    assert at.selectbox(key="errors_run").value == "demo"
    assert "demo · synthetic data" in at.selectbox(key="errors_run").options
    records = catalog.load_predictions(run)
    wrong = batch.misclassified(records)
    assert f"**{len(wrong)}** of {len(records)} test posts are misclassified" in texts(at.markdown)
    if not wrong:
        return
    first = wrong[0]
    at.selectbox(key="errors_true").set_value(first.label)
    at.selectbox(key="errors_pred").set_value(first.predicted)
    check(at.run())
    shown = batch.misclassified(records, first.label, first.predicted)
    assert f"{len(shown)} post(s) match." in texts(at.caption)
    check(at.button(key=f"explain_{first.id}").click().run())
    assert "Relevancy for the predicted class" in texts(at.markdown)
    [relevancy_map] = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]  # with its colour bar
    [heatmap] = [trace for trace in relevancy_map["data"] if trace["type"] == "heatmap"]
    assert heatmap["colorbar"]["title"]["text"] == "relevancy"


def test_batch_page_on_the_examples_and_an_upload(app):
    at = open_page(app, "batch")
    check(at.button(key="batch_examples").click().run())
    table = frame(at, "id", "error")
    bundled = examples()
    assert len(table) == len(bundled)
    # the meme's post text is empty: that row is refused with a message, the others are predicted
    assert list(table["error"].isna()) == [bool(e.text) for e in bundled]
    predicted = table[table["error"].isna()]
    assert (predicted[[f"prob_{label}" for label in LABELS]].sum(axis=1) - 1).abs().max() < 1e-4
    assert list(predicted["predicted"]) == [e.label for e in bundled if e.text]

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(bundled[0].image_path, bundled[0].image_path.name)
    rows = io.StringIO()
    csv.writer(rows).writerows([["image", "text"], [bundled[0].image_path.name, bundled[0].text],
                                ["nowhere.jpg", "text"]])
    at.file_uploader(key="batch_csv").set_value(("posts.csv", rows.getvalue().encode(), "text/csv"))
    at.file_uploader(key="batch_zip").set_value(("images.zip", archive.getvalue(), "application/zip"))
    check(at.run())
    check(at.button(key="batch_predict").click().run())
    table = frame(at, "id", "error")
    assert list(table["predicted"].fillna("")) == [bundled[0].label, ""]
    assert table.iloc[1]["error"] == "'nowhere.jpg' is not in the uploaded ZIP."
    assert "**1** of 2 rows predicted" in texts(at.markdown)


def _batch_upload(at: AppTest, rows: list[list[str]], archive: bytes | None = None) -> AppTest:
    lines = io.StringIO()
    csv.writer(lines).writerows([["image", "text"], *rows])
    at.file_uploader(key="batch_csv").set_value(("posts.csv", lines.getvalue().encode(), "text/csv"))
    if archive is not None:
        at.file_uploader(key="batch_zip").set_value(("images.zip", archive, "application/zip"))
    check(at.run())
    return check(at.button(key="batch_predict").click().run())


def test_batch_page_reads_no_server_file_without_a_configured_root(app, tmp_path):
    """Without $CLARA_BATCH_ROOTS there is no folder option; rows naming server files are looked up
    in the uploaded ZIP only, and each gets the same message whether or not the file exists."""
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(examples()[0].image_path.read_bytes())
    at = open_page(app, "batch")
    assert not at.text_input  # no images-folder box ...
    assert "CLARA_BATCH_ROOTS" in texts(at.caption)  # ... but a line saying how to allow one
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(examples()[0].image_path, "ok.jpg")
    refs = ["/etc/passwd", "/proc/self/mem", str(outside), str(tmp_path / "missing.jpg")]
    at = _batch_upload(at, [["ok.jpg", "love it"], *[[ref, "text"] for ref in refs]], archive.getvalue())
    table = frame(at, "id", "error")
    assert table.iloc[0]["predicted"] in LABELS
    assert [table.iloc[i + 1]["error"] for i in range(len(refs))] == [f"{ref!r} is not in the uploaded ZIP."
                                                                      for ref in refs]


def test_batch_page_never_reads_outside_the_configured_roots(app, tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "posts").mkdir(parents=True)
    elsewhere.mkdir()
    jpeg = examples()[0].image_path.read_bytes()
    (root / "posts" / "inside.jpg").write_bytes(jpeg)
    (elsewhere / "outside.jpg").write_bytes(jpeg)
    (root / "posts" / "link.jpg").symlink_to(elsewhere / "outside.jpg")
    monkeypatch.setenv("CLARA_BATCH_ROOTS", os.pathsep.join([str(root), str(tmp_path / "unused")]))
    at = open_page(app, "batch")

    at.text_input(key="batch_images_dir").set_value(str(elsewhere))  # a folder outside every root
    at = _batch_upload(at, [["outside.jpg", "text"]])
    assert "must lie inside one of the allowed folders" in texts(at.error)

    at.text_input(key="batch_images_dir").set_value("posts")
    refs = ["/etc/passwd", "/proc/self/mem", str(elsewhere / "outside.jpg"), str(elsewhere / "missing.jpg"),
            "../../elsewhere/outside.jpg", "link.jpg"]
    at = _batch_upload(at, [["inside.jpg", "love it"], *[[ref, "text"] for ref in refs]])
    table = frame(at, "id", "error")
    assert table.iloc[0]["predicted"] in LABELS and pd.isna(table.iloc[0]["error"])
    folder = (root / "posts").resolve()
    assert [table.iloc[i + 1]["error"] for i in range(len(refs))] == [
        f"{ref!r} points outside the images folder {folder}." for ref in refs]
    assert f"**1** of {len(refs) + 1} rows predicted" in texts(at.markdown)


def test_upload_widgets_state_and_enforce_the_per_kind_limits(app):
    from clara.inputs import UPLOAD_LIMITS_MB

    uploaders = {u.key: u for page in ("predict", "batch") for u in open_page(app, page).file_uploader}
    for key, kind in (("upload", "image"), ("batch_csv", "csv"), ("batch_zip", "zip")):
        assert uploaders[key].proto.max_upload_size_mb == UPLOAD_LIMITS_MB[kind]
        assert f"up to {UPLOAD_LIMITS_MB[kind]} MB" in uploaders[key].label


