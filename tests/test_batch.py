"""clara.batch: batch CSVs read with their images (uploaded ZIP or a trusted folder), predicted chunk
by chunk, and the one predictions CSV dialect written and read back."""
from __future__ import annotations

import csv
import io
import zipfile

import pytest

from clara import batch
from clara.inputs import BatchImages, InputError
from clara_app.gallery import batch_rows, load_examples
from _app_utils import DEMO_CHECKPOINT, EXAMPLES_DIR, app_folders, image_bytes, require_demo  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def demo_predictor():
    require_demo()
    from clara.inference import Predictor
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")


def test_batch_csv_with_zip(demo_predictor):
    examples = load_examples(EXAMPLES_DIR)[:2]
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
    items = batch.read_batch(buffer.getvalue().encode(), archive.getvalue())
    assert [i.row for i in items] == [1, 2, 3, 4, 5, 6]
    assert [i.error is None for i in items] == [True, True, True, False, False, False]
    assert "not a PNG, JPEG, WebP or GIF image" in items[3].error
    assert items[4].error == "'missing.jpg' is not in the uploaded ZIP."
    assert "The text is empty" in items[5].error

    rows = batch.predict_batch(demo_predictor, items)
    assert len(rows) == 6
    for row in rows[:3]:
        assert row["predicted"] in demo_predictor.labels and row["error"] is None
        assert sum(row[f"prob_{label}"] for label in demo_predictor.labels) == pytest.approx(1.0, abs=1e-4)
    assert all(row["predicted"] is None and row["error"] for row in rows[3:])
    parsed = list(csv.DictReader(io.StringIO(batch.predictions_csv(rows, demo_predictor.labels, batch.BATCH_COLUMNS))))
    assert len(parsed) == 6 and parsed[3]["predicted"] == "" and parsed[0]["predicted"] == rows[0]["predicted"]


def test_batch_csv_errors(tmp_path):
    with pytest.raises(InputError, match="The CSV file is empty"):
        batch.read_batch(b"")
    with pytest.raises(InputError, match=r"needs a header .* found: name, caption2"):
        batch.read_batch(b"name,caption2\na,b\n")
    with pytest.raises(InputError, match="has a header but no rows"):
        batch.read_batch(b"image,text\n")
    with pytest.raises(InputError, match="not a valid ZIP"):
        batch.read_batch(b"image,text\na.png,b\n", zip_data=b"not a zip")
    with pytest.raises(InputError, match="more than 2 rows"):
        batch.read_batch(b"image,text\na,b\nc,d\ne,f\n", max_rows=2)
    (tmp_path / "a.png").write_bytes(image_bytes("PNG"))
    [item] = batch.read_batch(b"image;text\na.png;hello\n", images_dir=tmp_path)  # ';' separated
    assert item.error is None and item.image.size == (64, 48) and item.text == "hello"
    [item] = batch.read_batch(b"image,text\na.png,hello\n")
    assert item.error == "Upload a ZIP with the images, or give an images folder."
    inside = tmp_path / "images"
    inside.mkdir()
    for ref in ("../a.png", str(tmp_path / "a.png")):
        [item] = batch.read_batch(f"image,text\n{ref},hello\n".encode(), images_dir=inside)
        assert item.error == f"{ref!r} points outside the images folder {inside.resolve()}."


def test_the_dialect_written_is_the_dialect_read(tmp_path):
    labels = ["positive", "neutral", "negative"]
    rows = [{"id": "7", "text": "hi, \"you\"", "image_path": "7.jpg", "label": "neutral", "predicted": "negative",
             "probabilities": {"positive": 0.1, "neutral": 0.3, "negative": 0.6}},
            {"id": "8", "text": "", "image_path": "8.jpg", "label": "", "predicted": "positive",
             "prob_positive": 0.9, "prob_neutral": 0.05, "prob_negative": 0.05}]
    path = tmp_path / batch.PREDICTIONS_FILE
    batch.write_predictions_csv(path, rows, labels)
    header = "id,text,image_path,label,predicted,prob_positive,prob_neutral,prob_negative"
    assert path.read_text().splitlines()[0] == header
    first, second = batch.read_predictions(path, labels)
    assert (first.id, first.text, first.label, first.predicted, first.correct) == ("7", 'hi, "you"', "neutral",
                                                                                   "negative", False)
    assert first.probabilities == {"positive": 0.1, "neutral": 0.3, "negative": 0.6}
    assert second.probabilities["positive"] == 0.9 and batch.misclassified([first, second]) == [first]
    # a batch's results are in the same dialect and read back the same way
    batch.write_predictions_csv(path, rows, labels, batch.BATCH_COLUMNS)
    assert [r.predicted for r in batch.read_predictions(path, labels)] == ["negative", "positive"]


def test_chunked_prediction_gives_what_reading_everything_first_gives(demo_predictor):
    """The CLI and the app decode one chunk of rows at a time and drop the images after it."""
    examples = load_examples(EXAMPLES_DIR)
    csv_data = batch.predictions_csv(batch_rows(examples), labels=[]).encode()
    eager = batch.predict_batch(demo_predictor, batch.read_batch(csv_data, images_dir=EXAMPLES_DIR))
    items = batch.parse_batch_csv(csv_data)
    assert all(item.image is None for item in items)
    chunked = batch.predict_batch(demo_predictor, items, BatchImages(folder=EXAMPLES_DIR), batch_size=2)
    assert all(item.image is None for item in items)
    assert [r["predicted"] for r in chunked] == [r["predicted"] for r in eager]
    assert [r["id"] for r in chunked] == [e.name for e in examples]
    assert [r["label"] for r in chunked] == [e.label for e in examples]  # the true label, as the CSV gave it
    for got, expected in zip(chunked, eager):
        assert got["prob_neutral"] == pytest.approx(expected["prob_neutral"], abs=1e-6)


def test_row_ids_columns_and_unreadable_csvs():
    [item] = batch.parse_batch_csv(b"Image_Path,TEXT,label\na.png,hi,positive\n")
    assert (item.id, item.image_ref, item.text, item.label) == ("2", "a.png", "hi", "positive")
    [item] = batch.parse_batch_csv(b"id,image,text\npost-9,a.png,hi\n")
    assert item.id == "post-9"
    with pytest.raises(InputError, match=r"missing column\(s\) text"):
        batch.parse_batch_csv(b"image,caption\na.png,hi\n")
    with pytest.raises(InputError, match="The CSV cannot be read"):
        batch.parse_batch_csv(b"image,text\na.png,\"" + b"x" * 200_000 + b"\"\n")
    [item] = batch.parse_batch_csv(b"image,text\na.png,\n", allow_empty_text=True)
    assert item.error is None and item.text == ""


def test_the_one_path_reports_progress_and_keeps_every_row(demo_predictor):
    """clara.scoring_jobs.score_source (the CLI's --csv and the Batch page): one result row per CSV
    row, in order, progress after every batch, the same predictions as predict_batch."""
    from clara.scoring_jobs import CsvSource, score_source

    examples = load_examples(EXAMPLES_DIR)
    csv_data = batch.predictions_csv(batch_rows(examples) * 3, labels=[]).encode()
    seen = []
    rows = list(score_source(CsvSource(data=csv_data), demo_predictor, BatchImages(folder=EXAMPLES_DIR),
                             batch_size=4, allow_empty_text=False, progress=lambda done, total: seen.append((done, total))))
    total = 3 * len(examples)
    assert seen == [(min(done, total), total) for done in range(4, total + 4, 4)]
    assert [r["row"] for r in rows] == list(range(total)) and [r["id"] for r in rows[:len(examples)]] == [
        e.name for e in examples]
    expected = batch.predict_batch(demo_predictor, batch.read_batch(csv_data, images_dir=EXAMPLES_DIR))
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in expected]
    assert [r["error"] for r in rows] == [r["error"] for r in expected]
    assert all(r["error_kind"] == "empty text" for r in rows if r["error"])


def test_batch_page_shows_full_errors_and_empty_cells(app_folders, monkeypatch):
    """The page: empty cells stay empty (no "None"), every failed row's whole message is listed
    below the table with its reason counted, and the download keeps the dialect."""
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    from _app_utils import ROOT, point_app_at

    point_app_at(app_folders, monkeypatch)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180).run()
    at = at.switch_page("pages/batch.py").run()
    example = load_examples(EXAMPLES_DIR)[0]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(example.image_path, example.image_path.name)
    long_name = "a-very-long-folder-name/" * 6 + "missing.jpg"
    rows = [["image", "text"], [example.image_path.name, "love it"], [long_name, "text"], [example.image_path.name, ""]]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    at.file_uploader(key="batch_csv").set_value(("posts.csv", buffer.getvalue().encode(), "text/csv"))
    at.file_uploader(key="batch_zip").set_value(("images.zip", archive.getvalue(), "application/zip"))
    at = at.run()
    at = at.button(key="batch_predict").click().run()
    assert not at.exception
    [table] = at.dataframe
    assert table.proto.placeholder == "" and list(table.value["error"].isna()) == [True, False, False]
    assert table.value["label"].isna().all()  # no true labels given: empty, not "None"
    [listed] = at.table
    assert list(listed.value["why"]) == [f"{long_name!r} is not in the uploaded ZIP.",
                                         "The text is empty. Type the post's text (or the text in the image) before "
                                         "predicting."]
    assert "**Rows that could not be used** (1 image not found, 1 empty text):" in [m.value for m in at.markdown]
    assert "**1** of 3 rows predicted" in "\n".join(m.value for m in at.markdown)
