"""Batch prediction and clara's one predictions CSV dialect, read and written here only.

The dialect: id, text, image_path, label (the true label, when known), predicted, one
`prob_<label>` column per class, then for batch prediction uncertainty, text_truncated and error.
Evaluation writes it as results/<run>/predictions.csv (the app's Errors page reads it back);
scripts/predict.py --csv and the app's Batch page read a batch CSV (id, text, image_path or
image, label: only an image column and text are required) and write their results in it.
Images are decoded one chunk of rows at a time, so a long CSV never holds all its images; the
CLI and the Batch page score through clara.scoring_jobs (predict_batch too), which reads batch
tables by `batch_columns` and writes CSV results with `write_predictions_stream`.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from clara.inputs import BatchImages, InputError, check_image_upload, check_text
from clara.jsonio import atomic_write_text

PREDICTIONS_FILE = "predictions.csv"
PREDICTION_COLUMNS = ("id", "text", "image_path", "label", "predicted")
PROB_PREFIX = "prob_"
BATCH_COLUMNS = ("uncertainty", "text_truncated", "error")  # batch prediction only
IMAGE_COLUMNS = ("image_path", "image")  # a batch CSV's image column: the dialect's name or the short one
MAX_BATCH_ROWS = 5000  # the app's limit per CSV (scripts/predict.py has none); memory is bounded, time is not


def prob_column(label: str) -> str:
    return f"{PROB_PREFIX}{label}"


def prediction_columns(labels: Sequence[str], extra_columns: Sequence[str] = ()) -> list[str]:
    return [*PREDICTION_COLUMNS, *(prob_column(name) for name in labels), *extra_columns]


# ----------------------------------------------------------------------------- writing

def predictions_csv(rows: Iterable[Mapping[str, Any]], labels: Sequence[str],
                    extra_columns: Sequence[str] = ()) -> str:
    """Rows as CSV text in the dialect. A row gives its probabilities as `prob_<label>` keys or as
    a `probabilities` {label: p} mapping; numbers are written with 6 decimals, None as empty."""
    buffer = io.StringIO()
    write_predictions_stream(buffer, rows, labels, extra_columns)
    return buffer.getvalue()


def write_predictions_stream(file: TextIO, rows: Iterable[Mapping[str, Any]], labels: Sequence[str],
                             extra_columns: Sequence[str] = ()) -> int:
    """Write the header, then each row as it comes (a long job never holds all its rows), to an open
    text file in the dialect (as `predictions_csv`); returns the number of rows written."""
    writer = csv.DictWriter(file, fieldnames=prediction_columns(labels, extra_columns), lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        line = {key: _cell(row.get(key)) for key in (*PREDICTION_COLUMNS, *extra_columns)}
        probabilities = row.get("probabilities") or {}
        for name in labels:
            value = row.get(prob_column(name), probabilities.get(name))
            line[prob_column(name)] = "" if value is None or value == "" else f"{float(value):.6f}"
        writer.writerow(line)
        count += 1
    return count


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def write_predictions_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], labels: Sequence[str],
                          extra_columns: Sequence[str] = ()) -> None:
    """Write `predictions_csv(rows, labels, extra_columns)` to `path` atomically."""
    atomic_write_text(path, predictions_csv(rows, labels, extra_columns))


# ----------------------------------------------------------------------------- reading

@dataclass
class PredictionRecord:
    """One row of a predictions CSV."""
    id: str
    text: str
    image_path: str
    label: str
    predicted: str
    probabilities: dict[str, float]

    @property
    def correct(self) -> bool:
        return self.label == self.predicted


def read_predictions(path: str | Path, labels: Sequence[str]) -> list[PredictionRecord]:
    """The rows of a predictions CSV (e.g. an evaluation run's predictions.csv)."""
    records = []
    with Path(path).open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            records.append(PredictionRecord(
                id=row.get("id") or "", text=row.get("text") or "", image_path=row.get("image_path") or "",
                label=row.get("label") or "", predicted=row.get("predicted") or "",
                probabilities={name: float(row[prob_column(name)]) for name in labels
                               if row.get(prob_column(name))}))
    return records


def misclassified(records: Sequence[PredictionRecord], true_label: str | None = None,
                  predicted_label: str | None = None) -> list[PredictionRecord]:
    """Wrong predictions (of rows whose true label is known), optionally only those of one true
    and/or one predicted class."""
    return [r for r in records if r.label and not r.correct
            and (true_label is None or r.label == true_label)
            and (predicted_label is None or r.predicted == predicted_label)]


# ----------------------------------------------------------------------------- batch input

@dataclass
class BatchItem:
    """One row of a batch CSV; a row that cannot be used carries `error` and is not predicted."""
    row: int  # 1-based data row number in the CSV (the header is row 0)
    image_ref: str
    text: str
    id: str = ""  # the CSV's id, else the row's line in the file (the header is line 1)
    label: str = ""  # the true label, when the CSV gives one
    image: Image.Image | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchColumns:
    """The column names (as the header spells them) of a batch table's image, text, id and label."""
    image: str
    text: str | None
    id: str | None = None
    label: str | None = None


def batch_columns(fieldnames: Sequence[str], what: str = "the CSV needs a header with",
                  text_required: bool = True) -> BatchColumns:
    """Find a batch table's columns in its header, ignoring case and spaces around names (the first
    of two equal names wins); InputError naming what is missing and what was found."""
    columns = {str(name).strip().lower(): str(name) for name in reversed(fieldnames)}
    image_col = next((columns[c] for c in IMAGE_COLUMNS if c in columns), None)
    missing = ([IMAGE_COLUMNS[0]] if image_col is None else []) + (
        ["text"] if text_required and "text" not in columns else [])
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}: {what} an image column "
                         f"({' or '.join(IMAGE_COLUMNS)}) and a text column (text); found: "
                         f"{', '.join(str(c).strip().lower() for c in fieldnames) or 'no header'}.")
    return BatchColumns(image=image_col, text=columns.get("text"), id=columns.get("id"), label=columns.get("label"))


def parse_batch_csv(csv_data: bytes, max_rows: int | None = MAX_BATCH_ROWS,
                    allow_empty_text: bool = False) -> list[BatchItem]:
    """The rows of a batch CSV with their texts checked (images are not read here).

    The header must name an image column (image_path or image) and text; id and label are
    optional. Comma, semicolon and tab separators are recognised. Raises InputError for a CSV
    that cannot be used as a whole; a bad row only carries its error.
    """
    if not csv_data:
        raise InputError("The CSV file is empty.")
    try:
        text = csv_data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"The CSV file is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV.") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        columns = batch_columns(list(reader.fieldnames or []))
        image_col, text_col, id_col, label_col = columns.image, columns.text, columns.id, columns.label
        items: list[BatchItem] = []
        for number, row in enumerate(reader, start=1):
            if max_rows is not None and number > max_rows:
                raise InputError(f"The CSV has more than {max_rows} rows; split it into smaller files.")
            item = BatchItem(row=number, image_ref=(row.get(image_col) or "").strip(),
                             text=row.get(text_col) or "",
                             id=(row.get(id_col) or "").strip() if id_col else "",
                             label=(row.get(label_col) or "").strip() if label_col else "")
            item.id = item.id or str(number + 1)
            try:
                item.text = check_text(item.text, allow_empty=allow_empty_text)
            except InputError as exc:
                item.error = str(exc)
            items.append(item)
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit(), a NUL byte
        raise InputError(f"The CSV cannot be read ({exc}).") from None
    if not items:
        raise InputError("The CSV has a header but no rows.")
    return items


def load_images(items: Iterable[BatchItem], images: BatchImages) -> None:
    """Find and decode the image of every row without an error; a row whose image cannot be used gets the reason."""
    for item in items:
        if item.error is None and item.image is None:
            try:
                item.image = check_image_upload(images.read(item.image_ref)).image
            except InputError as exc:
                item.error = str(exc)


def read_batch(csv_data: bytes, zip_data: bytes | None = None, images_dir: str | Path | None = None,
               max_rows: int | None = MAX_BATCH_ROWS, allow_empty_text: bool = False) -> list[BatchItem]:
    """`parse_batch_csv` plus every row's image decoded: images in the uploaded ZIP or, relative to
    it and never outside it, in `images_dir` (a folder the caller vouches for)."""
    items = parse_batch_csv(csv_data, max_rows=max_rows, allow_empty_text=allow_empty_text)
    load_images(items, BatchImages(zip_data, images_dir))
    return items


# ----------------------------------------------------------------------------- prediction

def predict_batch(predictor: Any, items: Sequence[BatchItem], images: BatchImages | None = None,
                  batch_size: int = 16) -> list[dict[str, Any]]:
    """One result row (the dialect's columns, plus the single-modality readings) per item; rows with
    an error keep it, a row the model fails on gets that error.

    With `images`, rows are decoded one chunk of `batch_size` at a time and their images dropped
    after it is predicted; without, the items' images must be loaded already (`read_batch`).
    Predicted through clara.scoring_jobs, the one batch-scoring path.
    """
    from clara.scoring_jobs.rows import predict_posts, prediction_fields  # not at the top: it imports this module

    labels = list(predictor.labels)
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if images is not None:
            load_images(chunk, images)
        errors, kinds = [item.error for item in chunk], [None] * len(chunk)
        predictions = predict_posts(predictor, [item.image for item in chunk], [item.text for item in chunk],
                                    errors, kinds)
        for item, prediction, error in zip(chunk, predictions, errors):
            item.error = error
            results.append({"id": item.id, "text": item.text, "image_path": item.image_ref,
                            "label": item.label or None, **prediction_fields(prediction, labels), "error": error})
            if images is not None:
                item.image = None  # decoded for this chunk only
    return results


def label_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows got each predicted label."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("predicted"):
            counts[row["predicted"]] = counts.get(row["predicted"], 0) + 1
    return counts
