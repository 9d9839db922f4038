"""The dashboard under Streamlit's AppTest: every page on the bundled demo checkpoint, navigated with
st.navigation (AppTest.switch_page), with uploads, text entry and buttons; asserts on what is shown.

The model is cached with st.cache_resource, so it loads once for the whole module.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile

import pandas as pd
import pytest

from clara import app_support as support
from _app_utils import BAD_UPLOADS, DEMO_CHECKPOINT, EXAMPLES_DIR, ROOT, require_demo

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
TIMEOUT = 180
LABELS = ["positive", "neutral", "negative"]


def check(at: AppTest) -> AppTest:
    """No page may raise: Streamlit shows exceptions as st.exception elements."""
    assert not at.exception, "\n\n".join(e.value for e in at.exception)
    return at


@pytest.fixture
def app() -> AppTest:
    require_demo()
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


def examples() -> list[support.Example]:
    return support.load_examples(EXAMPLES_DIR)


def predict_example(at: AppTest, index: int) -> AppTest:
    open_page(at, "predict")
    check(at.button(key=f"example_{index}").click().run())
    return check(at.button(key="predict").click().run())


# ----------------------------------------------------------------------------- home

def test_home_opens_on_the_demo_with_its_banner(app):
    assert "You are using the demo checkpoint" in texts(app.info)
    assert "not a real sentiment model" in texts(app.info)
    assert "python scripts/train.py --dataset mvsa_single --data-dir" in texts(app.info)
    table = frame(app, "checkpoint", "encoders")
    demo_row = table[table["checkpoint"] == "demo"].iloc[0]
    assert (demo_row["dataset"], demo_row["encoders"], demo_row["metrics split"]) == ("mvsa_single", "tiny", "test")
    assert app.selectbox(key="checkpoint_picker").value == str(DEMO_CHECKPOINT)
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
            if not support.tesseract_available():
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
    if support.tesseract_available():
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

def test_attention_page_after_a_prediction(app):
    at = predict_example(app, 0)
    at = open_page(at, "attention")
    assert at.selectbox(key="explain_post").value.startswith("Last prediction:")
    words = examples()[0].text.split()
    captions = image_captions(at)
    assert captions[1].startswith("Attention: text tokens → patches")
    assert captions[2].startswith("Relevancy of each patch for")
    assert captions[3:3 + len(words)] == words  # one attention map per word
    assert "Raw attention beside relevancy" in texts(at.header)
    at.selectbox(key="attention_layer").set_value(1)
    at.selectbox(key="attention_head").set_value(2)
    check(at.run())
    at.selectbox(key="attention_patch").set_value("row 2, column 3")
    check(at.run())
    assert len(at.get("plotly_chart")) == 2


def test_attributions_page_computes_on_request(app):
    at = open_page(app, "attributions")
    assert "press **Compute attributions**" in texts(at.info)
    at.slider(key="attr_steps").set_value(8)
    check(at.button[0].click().run())  # the form's submit button
    deltas = [m for m in at.metric if "convergence delta" in m.label]
    assert len(deltas) == 2
    shares = {m.label: float(m.value.rstrip("%")) for m in at.metric if "share" in m.label}
    assert sum(shares.values()) == pytest.approx(100, abs=1)
    example = support.load_examples(EXAMPLES_DIR)[0]
    words = frame(at, "word", "attribution")
    assert list(words["word"]) == example.text.split()
    assert {"Words", "Image", "Deletion curves"} <= {h.value for h in at.header}
    assert len(at.get("plotly_chart")) == 2  # image and text deletion curves


# ----------------------------------------------------------------------------- metrics, errors, batch

def test_metrics_page(app):
    at = open_page(app, "metrics")
    summary = frame(at, "run", "best epoch")
    assert list(summary["run"]) == ["demo", "CLARA (published)"]
    assert summary.iloc[1]["accuracy"] == 83.16
    per_class = frame(at, "run", "class", "support")
    assert len(per_class) == 6
    assert len(frame(at, "variant", "f1_macro", exclude=("params",))) == 6 + 6
    assert len(frame(at, "variant", "params")) == 4
    assert len(at.get("plotly_chart")) >= 1 + 1 + 2  # per-class bars, a confusion matrix, two curves
    at.radio(key="metrics_metric").set_value("precision")
    check(at.run())


def test_errors_page(app):
    at = open_page(app, "errors")
    run = next(r for r in support.find_results([], support.find_checkpoints(ROOT / "checkpoints"))
               if r.name == "demo")
    records = support.load_predictions(run)
    wrong = support.misclassified(records)
    assert f"**{len(wrong)}** of {len(records)} test posts are misclassified" in texts(at.markdown)
    if not wrong:
        return
    first = wrong[0]
    at.selectbox(key="errors_true").set_value(first.label)
    at.selectbox(key="errors_pred").set_value(first.predicted)
    check(at.run())
    shown = support.misclassified(records, first.label, first.predicted)
    assert f"{len(shown)} post(s) match." in texts(at.caption)
    check(at.button(key=f"explain_{first.id}").click().run())
    assert "Relevancy for the predicted class" in texts(at.markdown)


def test_batch_page_on_the_examples_and_an_upload(app):
    at = open_page(app, "batch")
    check(at.button(key="batch_examples").click().run())
    table = frame(at, "row", "error")
    bundled = examples()
    assert len(table) == len(bundled)
    # the meme's post text is empty: that row is refused with a message, the others are predicted
    assert list(table["error"].isna()) == [bool(e.text) for e in bundled]
    predicted = table[table["error"].isna()]
    assert (predicted[[f"p_{label}" for label in LABELS]].sum(axis=1) - 1).abs().max() < 1e-4
    assert list(predicted["label"]) == [e.label for e in bundled if e.text]

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
    table = frame(at, "row", "error")
    assert list(table["label"].fillna("")) == [bundled[0].label, ""]
    assert table.iloc[1]["error"] == "'nowhere.jpg' is not in the uploaded ZIP."
    assert "**1** of 2 rows predicted" in texts(at.markdown)
