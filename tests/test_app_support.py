"""clara.app_support: checkpoint listing, upload and text checks, OCR, results tables, batch CSVs.

The results and prediction tests read the bundled demo checkpoint (checkpoints/demo/), exactly
as the app does on a fresh clone.
"""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from clara import app_support as support
from clara.config import ABLATIONS
from _app_utils import (BAD_UPLOADS, DEMO_CHECKPOINT, EXAMPLES_DIR, ROOT, animated_gif_bytes, image_bytes,
                        require_demo, require_or_skip)


# ----------------------------------------------------------------------------- uploads

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_are_recognised_by_content(fmt):
    data = image_bytes(fmt, size=(64, 48))
    assert support.sniff_image_format(data) == fmt
    checked = support.check_image_upload(data)
    assert (checked.format, checked.size, checked.image.mode, checked.frames) == (fmt, (64, 48), "RGB", 1)


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_refused_with_a_clear_message(case):
    _, make, expected = BAD_UPLOADS[case]
    with pytest.raises(support.AppInputError, match=re.escape(expected)):
        support.check_image_upload(make())


def test_the_name_never_decides_the_type():
    # a PNG named .jpg is fine; a BMP is refused even though PIL could read it
    assert support.check_image_upload(image_bytes("PNG")).format == "PNG"
    with pytest.raises(support.AppInputError, match="BMP image"):
        support.check_image_upload(image_bytes("BMP"))
    with pytest.raises(support.AppInputError, match="PDF document"):
        support.check_image_upload(b"%PDF-1.7\n...")


def test_oversized_file_is_refused_before_decoding():
    data = image_bytes("JPEG", size=(400, 400), quality=100)
    with pytest.raises(support.AppInputError, match=rf"The file is {len(data) / 1024:.0f} KB; images up to 2 KB"):
        support.check_image_upload(data, max_bytes=2048)
    with pytest.raises(support.AppInputError, match="too large"):
        support.check_image_upload(image_bytes("PNG", size=(100, 100)), max_pixels=5000)


def test_animated_gif_gives_its_first_frame():
    checked = support.check_image_upload(animated_gif_bytes([(255, 0, 0), (0, 255, 0), (0, 0, 255)]))
    assert checked.frames == 3
    assert checked.image.getpixel((5, 5)) == (255, 0, 0)
    assert checked.notes == ["Animated GIF with 3 frames: the first frame is used."]


def test_text_checks():
    assert support.check_text("  hello world \n") == "hello world"
    for empty in ("", "   \n\t", None, "\x00"):
        with pytest.raises(support.AppInputError, match="The text is empty"):
            support.check_text(empty)
    with pytest.raises(support.AppInputError, match="The text has 10,000 characters; at most 5,000"):
        support.check_text("a" * 10_000)
    assert len(support.check_text("a" * 5000)) == 5000


def test_compose_text_keeps_post_and_image_text_apart():
    assert support.compose_text("my tweet", "TEXT IN IMAGE") == "my tweet TEXT IN IMAGE"
    assert support.compose_text("my tweet", "TEXT IN IMAGE", "post text only") == "my tweet"
    assert support.compose_text("my tweet", "TEXT IN IMAGE", "image text only") == "TEXT IN IMAGE"
    assert support.compose_text("", " ocr ") == "ocr"
    with pytest.raises(ValueError, match="unknown text source"):
        support.compose_text("a", "b", "both")


def test_display_name_is_never_a_path():
    assert support.safe_display_name("../../etc/passwd") == "passwd"
    assert support.safe_display_name("<img src=x onerror=alert(1)>.png") == "_img src_x onerror_alert_1_.png"
    assert support.safe_display_name("") == "upload"


# ----------------------------------------------------------------------------- OCR

def meme(text_top: str, text_bottom: str) -> Image.Image:
    """White letters with a black outline over a photo-like picture (smooth random colours)."""
    colours = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    picture = Image.fromarray(colours).resize((480, 360), Image.Resampling.BILINEAR)
    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 40) if _has_dejavu() else ImageFont.load_default(40)
    draw = ImageDraw.Draw(picture)
    draw.text((240, 12), text_top, font=font, fill="white", stroke_width=3, stroke_fill="black", anchor="ma")
    draw.text((240, 300), text_bottom, font=font, fill="white", stroke_width=3, stroke_fill="black", anchor="ma")
    return picture


def _has_dejavu() -> bool:
    try:
        ImageFont.truetype("DejaVuSans-Bold.ttf", 10)
    except OSError:
        return False
    return True


def test_ocr_reads_meme_text():
    require_or_skip(support.tesseract_available(), "tesseract")
    result = support.ocr_meme_text(meme("WHEN THE BUS", "IS LATE AGAIN"))
    assert result.text.split() == ["when", "the", "bus", "is", "late", "again"], result.tried
    assert result.variant == "outlined white text (meme)"
    assert result.confidence > 60


def test_ocr_variants_turn_white_letters_black():
    variants = support.meme_ocr_variants(meme("HELLO", "WORLD"))
    assert list(variants) == ["outlined white text (meme)", "white text", "otsu threshold", "inverted grey", "grey"]
    white = variants["outlined white text (meme)"]
    assert min(white.size) == support.OCR_MIN_SIDE  # small images are upscaled
    pixels = np.asarray(white)
    assert set(np.unique(pixels)) <= {0, 255}
    # the letters (white in the meme) are a minority of black pixels on a white page
    black_fraction = float((pixels == 0).mean())
    assert 0.005 < black_fraction < 0.2


# ----------------------------------------------------------------------------- checkpoints and results

def test_demo_checkpoint_is_listed_first_with_its_test_metrics():
    require_demo()
    entries = support.find_checkpoints(ROOT / "checkpoints", results_roots=[ROOT / "results"])
    demo = entries[0]
    assert demo.path == DEMO_CHECKPOINT and demo.is_demo and demo.usable
    assert (demo.name, demo.dataset, demo.protocol, demo.encoders) == ("demo", "mvsa_single", "clara", "tiny")
    assert demo.labels == ["positive", "neutral", "negative"]
    test_metrics = json.loads((DEMO_CHECKPOINT / "results" / "metrics.json").read_text())
    assert demo.metrics_split == "test"
    assert demo.metrics == {m: test_metrics[m] for m in ("accuracy", "f1_weighted", "f1_macro")}
    [row] = [r for r in support.checkpoints_table(entries) if r["checkpoint"] == "demo"]
    assert row["accuracy"] == round(100 * test_metrics["accuracy"], 2)
    assert row["source"] == "demo (synthetic data)"


def test_checkpoint_listing_reads_results_and_flags_unusable_folders(tmp_path):
    require_demo()
    root = tmp_path / "checkpoints"
    info = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    trained = root / "clara_hfm_best"
    trained.mkdir(parents=True)
    info.update(dataset="hfm", labels=["not_sarcastic", "sarcastic"], source={"kind": "clara"})
    (trained / "config.json").write_text(json.dumps(info))
    (trained / "model.safetensors").write_bytes(b"")
    broken = root / "group" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    (root / ".clara_hfm_best.tmp-123").mkdir()  # a save in progress is not listed
    (root / ".clara_hfm_best.tmp-123" / "config.json").write_text("{}")
    results = tmp_path / "results" / "hfm"
    results.mkdir(parents=True)
    # the training loop records the checkpoint relative to its output folder (here tmp_path)
    (results / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "f1_weighted": 0.25, "f1_macro": 0.2,
                                                      "dataset": "hfm",
                                                      "checkpoint": "checkpoints/clara_hfm_best"}))

    entries = support.find_checkpoints(root, results_roots=[tmp_path / "results"])
    assert sorted(e.name for e in entries) == ["clara_hfm_best", "group/broken"]
    by_name = {e.name: e for e in entries}
    assert by_name["clara_hfm_best"].usable and by_name["clara_hfm_best"].source == "clara"
    assert by_name["clara_hfm_best"].metrics == {"accuracy": 0.5, "f1_weighted": 0.25, "f1_macro": 0.2}
    assert by_name["clara_hfm_best"].metrics_split == "test"
    assert not by_name["group/broken"].usable
    assert "cannot read config.json" in by_name["group/broken"].problem
    [run] = support.find_results([tmp_path / "results"], entries)
    assert (run.name, run.dataset) == ("results/hfm", "hfm")
    assert run.checkpoint == tmp_path / "checkpoints" / "clara_hfm_best"
    assert run.labels == ["not_sarcastic", "sarcastic"]


def demo_run() -> support.RunResults:
    require_demo()
    runs = support.find_results([], support.find_checkpoints(ROOT / "checkpoints"))
    return next(run for run in runs if run.checkpoint == DEMO_CHECKPOINT)


def test_results_tables_of_the_demo_run():
    run = demo_run()
    metrics = run.metrics
    assert run.dataset == "mvsa_single" and run.labels == ["positive", "neutral", "negative"]
    per_class = support.per_class_rows([run])
    assert [(r["run"], r["class"]) for r in per_class] == [
        ("demo", "positive"), ("demo", "neutral"), ("demo", "negative"),
        ("CLARA (published)", "positive"), ("CLARA (published)", "neutral"), ("CLARA (published)", "negative")]
    assert per_class[0]["f1"] == round(100 * metrics["per_class"]["positive"]["f1"], 2)
    assert per_class[3]["f1"] == 88.84
    assert sum(r["support"] for r in per_class[:3]) == metrics["n"]
    summary = support.summary_rows([run])
    assert [r["run"] for r in summary] == ["demo", "CLARA (published)"]
    assert summary[1]["accuracy"] == 83.16
    labels, matrix = support.confusion_matrix(run)
    assert labels == run.labels and sum(map(sum, matrix)) == metrics["n"]
    ablations = support.ablation_rows([run])
    assert [r["variant"] for r in ablations if r["run"] == "demo"] == ["full", *ABLATIONS]
    assert len([r for r in ablations if r["run"] == "CLARA (published)"]) == 6
    calibration = support.calibration_rows([run])
    assert [r["variant"] for r in calibration] == list(metrics["calibration"])
    history = support.history_rows(run)
    assert len(history) == len(metrics["history"]) and "val_accuracy" in history[0]


def test_demo_predictions_and_errors():
    run = demo_run()
    records = support.load_predictions(run)
    assert len(records) == run.metrics["n"]
    wrong = support.misclassified(records)
    assert len(wrong) == run.metrics["n"] - round(run.metrics["accuracy"] * run.metrics["n"])
    for record in records:
        assert support.resolve_image_path(run, record.image_path) is not None
        assert sum(record.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(r["count"] for r in support.error_counts(records)) == len(wrong)
    if wrong:
        first = wrong[0]
        assert first in support.misclassified(records, first.label, first.predicted)
        assert support.misclassified(records, first.label, first.label) == []


def test_reference_numbers():
    rows = support.reference_rows(["hfm"])
    assert rows == [{"run": "CLARA (published)", "dataset": "hfm",
                     "protocol": "official splits, hashtag labels (the notebooks' choice)",
                     "accuracy": 88.13, "f1_weighted": 88.13, "f1_macro": 87.82,
                     "f1 not_sarcastic": 88.33, "f1 sarcastic": 87.92}]
    standard = {r["method"]: r for r in support.standard_protocol_rows()}
    assert standard["CLMLF (NAACL-F 2022)"]["mvsa_single accuracy"] == 75.33
    assert standard["MultiSentiNet (2017)"]["hfm F1"] is None


# ----------------------------------------------------------------------------- predictions, batch, examples

@pytest.fixture(scope="module")
def demo_predictor():
    require_demo()
    from clara.inference import Predictor
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")


def test_examples_gallery_is_bundled():
    examples = support.load_examples(EXAMPLES_DIR)
    assert len(examples) >= 4
    assert {e.label for e in examples} == {"positive", "neutral", "negative"}
    assert any(e.name.startswith("meme_") and e.text == "" for e in examples)
    for example in examples:
        support.check_image_upload(example.image_path.read_bytes())


def test_prediction_views_and_agreement(demo_predictor):
    example = next(e for e in support.load_examples(EXAMPLES_DIR) if e.label == "neutral")
    [prediction] = demo_predictor.predict([example.image_path.read_bytes()], [example.text])
    views = support.prediction_views(prediction, demo_predictor.labels)
    assert [v["view"] for v in views] == ["final", "prediction head", "verification head", "text only", "image only"]
    for view in views:
        assert sum(view[label] for label in demo_predictor.labels) == pytest.approx(1.0, abs=1e-5)
    assert views[0]["says"] == prediction.label == "neutral"
    notes = support.agreement_summary(views)
    assert notes[0].startswith("The verification head")
    assert any("text only" in note for note in notes)


def test_batch_csv_with_zip(demo_predictor):
    examples = support.load_examples(EXAMPLES_DIR)[:2]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for example in examples:
            zf.write(example.image_path, f"imgs/{example.image_path.name}")
        zf.writestr("imgs/renamed.png", b"just text")
    lines = [["image", "text"]] + [[f"imgs/{e.image_path.name}", e.text or "love it"] for e in examples] + [
        [examples[0].image_path.name, "found by file name"], ["imgs/renamed.png", "some text"],
        ["missing.jpg", "some text"], [f"imgs/{examples[0].image_path.name}", "   "]]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    items = support.read_batch(buffer.getvalue().encode(), archive.getvalue())
    assert [i.row for i in items] == [1, 2, 3, 4, 5, 6]
    assert [i.error is None for i in items] == [True, True, True, False, False, False]
    assert "not a PNG, JPEG, WebP or GIF image" in items[3].error
    assert items[4].error == "'missing.jpg' is not in the uploaded ZIP."
    assert "The text is empty" in items[5].error

    rows = support.predict_batch(demo_predictor, items)
    assert len(rows) == 6
    for row in rows[:3]:
        assert row["label"] in demo_predictor.labels and row["error"] is None
        assert sum(row[f"p_{label}"] for label in demo_predictor.labels) == pytest.approx(1.0, abs=1e-4)
    assert all(row["label"] is None and row["error"] for row in rows[3:])
    parsed = list(csv.DictReader(io.StringIO(support.rows_to_csv(rows).decode())))
    assert len(parsed) == 6 and parsed[3]["label"] == "" and parsed[0]["label"] == rows[0]["label"]


def test_batch_csv_errors(tmp_path):
    with pytest.raises(support.AppInputError, match="The CSV file is empty"):
        support.read_batch(b"")
    with pytest.raises(support.AppInputError, match=r"needs a header .* found: name, caption2"):
        support.read_batch(b"name,caption2\na,b\n")
    with pytest.raises(support.AppInputError, match="has a header but no rows"):
        support.read_batch(b"image,text\n")
    with pytest.raises(support.AppInputError, match="not a valid ZIP"):
        support.read_batch(b"image,text\na.png,b\n", zip_data=b"not a zip")
    with pytest.raises(support.AppInputError, match="more than 2 rows"):
        support.read_batch(b"image,text\na,b\nc,d\ne,f\n", max_rows=2)
    (tmp_path / "a.png").write_bytes(image_bytes("PNG"))
    [item] = support.read_batch(b"image;text\na.png;hello\n", images_dir=tmp_path)  # ';' separated
    assert item.error is None and item.image.size == (64, 48) and item.text == "hello"
    [item] = support.read_batch(b"image,text\na.png,hello\n")
    assert item.error == "Upload a ZIP with the images, or give an images folder."
    inside = tmp_path / "images"
    inside.mkdir()
    for ref in ("../a.png", str(tmp_path / "a.png")):
        [item] = support.read_batch(f"image,text\n{ref},hello\n".encode(), images_dir=inside)
        assert item.error == f"{ref!r} points outside the images folder {inside.resolve()}."


def test_word_highlighting_escapes_html():
    html = support.highlight_words_html(["<script>alert(1)</script>", "fine"], [1.0, -0.5])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<span") == 2
    assert "rgba(0, 160, 60, 0.75)" in html and "rgba(220, 40, 40, 0.38)" in html
