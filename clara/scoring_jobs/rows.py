"""A scoring job's rows: checked and decoded in DataLoader workers (text by clara.inputs' rules,
image found by BatchImages and decoded by `check_image_upload`), predicted a batch at a time in
the main process, and turned into result rows (the predictions dialect's columns plus the
single-modality readings, `error` and its short `error_kind`). A row that cannot be used keeps
its error; one that makes the model fail is retried alone and, failing again, gets that error.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clara.batch import PREDICTION_COLUMNS, prob_column
from clara.inputs import BatchImages, InputError, check_image_upload, check_text

from .sources import InputRow, Source

TEXT_ONLY_PREFIX, IMAGE_ONLY_PREFIX = "text_only_", "image_only_"  # + prob_<label>: the single-modality readings
ERROR_COLUMNS = ("error", "error_kind")
INPUT_COLUMNS = ("text", "image_path")  # the inputs a result row repeats (CSV output, the app)


@dataclass
class WorkItem:
    """Rows [start, end) of shard `shard`: one batch for the model."""
    shard: int
    start: int
    end: int


@dataclass
class DecodedBatch:
    """A batch's rows with their images decoded (None where the row has an error)."""
    item: WorkItem
    rows: list[InputRow]
    images: list[Image.Image | None]


def error_kind(stage: str, message: str) -> str:
    """The short reason a summary counts a row's error under."""
    text = message.lower()
    if stage == "text":
        return "empty text" if "is empty" in text else "text unusable"
    if stage == "read":
        if text == "no image path" or "upload a zip" in text:
            return "no image"
        return "image not found" if "not found" in text or "not in the uploaded zip" in text else "image unreadable"
    if "not a png, jpeg" in text:
        return "not an image"
    if "too large" in text or "images up to" in text or "shape cannot be used" in text:
        return "image too large"
    return "image damaged"


def decode_row(row: InputRow, images: BatchImages, allow_empty_text: bool) -> Image.Image | None:
    """The row's decoded image, its text checked (and stripped) in place; on a problem the row gets
    its error and None is returned."""
    if row.error is not None:
        return None
    stage = "text"
    try:
        row.text = check_text(row.text, allow_empty=allow_empty_text)
        stage = "read"
        if not row.image:
            raise InputError("no image path")
        data = bytes(row.image) if isinstance(row.image, (bytes, bytearray)) else images.read(row.image)
        stage = "decode"
        return check_image_upload(data).image
    except InputError as exc:
        row.error, row.error_kind = str(exc), error_kind(stage, str(exc))
        return None


def plan_batches(shards: Sequence[tuple[int, int, int]], batch_size: int) -> list[WorkItem]:
    """Each (shard, start, end) cut into batches of `batch_size` rows, aligned on the shard's start (so
    that a batch's rows, and therefore its padding, are the same in every run)."""
    return [WorkItem(shard, first, min(first + batch_size, end))
            for shard, start, end in shards for first in range(start, end, batch_size)]


def merged_ranges(items: Sequence[WorkItem]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for item in items:
        if ranges and ranges[-1][1] == item.start:
            ranges[-1] = (ranges[-1][0], item.end)
        else:
            ranges.append((item.start, item.end))
    return ranges


class DecodedBatches(IterableDataset):
    """The planned batches, decoded. With DataLoader workers, worker w decodes batches w, w + n, ...
    (every worker reads the rows, only its own are decoded), so the loader yields them in order."""

    def __init__(self, source: Source, images: BatchImages, items: Sequence[WorkItem], allow_empty_text: bool):
        self.source, self.images, self.items = source, images, list(items)
        self.allow_empty_text = allow_empty_text

    def __iter__(self) -> Iterator[DecodedBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.source.rows(merged_ranges(self.items))
        for index, item in enumerate(self.items):
            batch = [next(rows) for _ in range(item.end - item.start)]
            if index % workers == worker:
                decoded = [decode_row(row, self.images, self.allow_empty_text) for row in batch]
                yield DecodedBatch(item, batch, decoded)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker decodes images; the main process's threads run the model


def decoded_batches(source: Source, images: BatchImages, items: Sequence[WorkItem], allow_empty_text: bool,
                    num_workers: int) -> DataLoader:
    """A DataLoader over `DecodedBatches` (each element is one DecodedBatch, in plan order)."""
    return DataLoader(DecodedBatches(source, images, items, allow_empty_text), batch_size=None,
                      num_workers=num_workers, collate_fn=_as_is, worker_init_fn=_one_thread,
                      prefetch_factor=4 if num_workers else None)


def _as_is(batch: Any) -> Any:
    return batch


def score_source(source: Source, predictor: Any, images: BatchImages, batch_size: int = 16,
                 allow_empty_text: bool = True, num_workers: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every row of `source` as a result row, in order, a batch at a time (the CSV output of
    scripts/predict.py and the app's Batch page); `progress(rows_done, rows_total)` after each batch."""
    done = 0
    for batch in decoded_batches(source, images, plan_batches([(0, 0, source.num_rows)], batch_size),
                                 allow_empty_text, num_workers):
        yield from score_batch(predictor, batch)
        done += len(batch.rows)
        if progress is not None:
            progress(done, source.num_rows)


# ----------------------------------------------------------------------------- prediction

def predict_posts(predictor: Any, images: Sequence[Image.Image | None], texts: Sequence[str | None],
                  errors: list[str | None], kinds: list[str | None]) -> list[Any]:
    """One Prediction (or None) per post whose error is None, in one call of `predictor.predict`; if
    that call fails, each post alone, and a post that fails alone gets the error (in `errors`/`kinds`)."""
    usable = [i for i, error in enumerate(errors) if error is None]
    predictions: list[Any] = [None] * len(errors)
    if not usable:
        return predictions
    try:
        found = predictor.predict([images[i] for i in usable], [texts[i] or "" for i in usable],
                                  batch_size=len(usable))
        for i, prediction in zip(usable, found):
            predictions[i] = prediction
    except Exception:  # noqa: BLE001 - one bad post must not end the job: find it below
        for i in usable:
            try:
                [predictions[i]] = predictor.predict([images[i]], [texts[i] or ""])
            except Exception as exc:  # noqa: BLE001
                errors[i], kinds[i] = f"prediction failed ({type(exc).__name__}: {exc})", "prediction failed"
    return predictions


def prediction_fields(prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
    """A result row's model columns: predicted, prob_<label>..., the readings, uncertainty, text_truncated
    (all None without a prediction)."""
    def probs(prefix: str, values: dict[str, float] | None) -> dict[str, float | None]:
        return {prefix + prob_column(name): (float(values[name]) if values is not None else None) for name in labels}

    if prediction is None:
        return {"predicted": None, **probs("", None), **probs(TEXT_ONLY_PREFIX, None),
                **probs(IMAGE_ONLY_PREFIX, None), "uncertainty": None, "text_truncated": None}
    return {"predicted": prediction.label, **probs("", prediction.probs),
            **probs(TEXT_ONLY_PREFIX, prediction.text_only_probs),
            **probs(IMAGE_ONLY_PREFIX, prediction.image_only_probs),
            "uncertainty": float(prediction.uncertainty), "text_truncated": bool(prediction.text_truncated)}


def score_batch(predictor: Any, batch: DecodedBatch) -> list[dict[str, Any]]:
    """The batch's result rows (every column of `result_columns`)."""
    rows = batch.rows
    errors, kinds = [r.error for r in rows], [r.error_kind for r in rows]
    predictions = predict_posts(predictor, batch.images, [r.text for r in rows], errors, kinds)
    labels = list(predictor.labels)
    return [{"row": row.row, "id": row.id, "text": row.text, "image_path": row.image_ref, "label": row.label or None,
             **prediction_fields(prediction, labels), "error": error, "error_kind": kind}
            for row, prediction, error, kind in zip(rows, predictions, errors, kinds)]


# ----------------------------------------------------------------------------- result columns

def result_columns(labels: Sequence[str], keep_inputs: bool = False) -> list[str]:
    """A scoring job's output columns, in order (`keep_inputs`: also the post's text and image path)."""
    model = list(prediction_fields(None, labels))
    head = [c for c in PREDICTION_COLUMNS if c != "predicted" and (keep_inputs or c not in INPUT_COLUMNS)]
    return ["row", *head, *model, *ERROR_COLUMNS]


def result_schema(labels: Sequence[str], keep_inputs: bool = False) -> pa.Schema:
    types = {"row": pa.int64(), "text_truncated": pa.bool_(), "uncertainty": pa.float64()}
    return pa.schema([(name, types.get(name, pa.float64() if "prob_" in name else pa.string()))
                      for name in result_columns(labels, keep_inputs)])


def result_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in rows], schema=schema)

