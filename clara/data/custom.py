"""Bring your own data (`--dataset custom`): one table in the data folder, a row per post, with
`image`, `text` and `label` columns (optional `id`, else the row number, and `split`), as CSV
(UTF-8, a header row), JSONL (one object per line) or Parquet.

Image paths are relative to the table's folder, else to its images/ subfolder (absolute ones
as they are). The labels are the ones asked for (--labels, in that order; a row with another
label is malformed) or the table's, sorted. A `split` column (train, val, test; dev, valid,
validation mean val) places every row; without one load_dataset makes the stratified split.
Rows that cannot be used are counted under the usual skip reasons (clara.data.SKIP_REASONS).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .mvsa import normalize_text
from .splits import SPLIT_ALIASES, id_sort_key
from .types import OFFICIAL_SPLIT, DatasetError, ReadRequest, Sample, read_without_bom

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
REQUIRED_COLUMNS = ("image", "text", "label")
ID_COLUMN, SPLIT_COLUMN = "id", "split"
IMAGES_FOLDER = "images"
EXAMPLE_WIDTH = 60
EXPECTED_LAYOUT = ("a folder holding one table (.csv, .jsonl or .parquet) with image, text and label columns "
                   "(optionally id and split), image paths relative to the table or to its images/ folder")

Row = tuple[int, dict[str, Any] | str]  # (1-based row number, its values or why it cannot be read)


def find_table(data_dir: Path) -> Path:
    """The one table file directly in `data_dir`; DatasetError when there is none or several."""
    tables = sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) != 1:
        found = f"found {', '.join(p.name for p in tables)}" if tables else "found none"
        raise DatasetError(f"{data_dir} is not a custom dataset folder ({found}): expected {EXPECTED_LAYOUT}")
    return tables[0]


def read_table(table: Path) -> tuple[list[str], list[Row]]:
    """(column names, rows) of a CSV, JSONL or Parquet table."""
    if table.suffix.lower() == ".parquet":
        import pyarrow.parquet as parquet  # on first use: loading a CSV stays light

        try:
            content = parquet.read_table(table)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise DatasetError(f"{table} is not a readable Parquet table: {exc}") from None
        return list(content.column_names), list(enumerate(content.to_pylist(), start=1))
    try:
        text = read_without_bom(table, "table ").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"table {table} is not UTF-8 text ({exc}); save it as UTF-8") from None
    if table.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows: list[Row] = [(n, row if None not in row and None not in row.values() else "wrong number of fields")
                           for n, row in enumerate(reader, start=1)]
        return list(reader.fieldnames or []), rows
    rows, columns = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                value = "not a JSON object"
            value = value if isinstance(value, (dict, str)) else "not a JSON object"
            rows.append((number, value))
            columns.update(dict.fromkeys(value) if isinstance(value, dict) else {})
    return list(columns), rows


def load_custom(request: ReadRequest) -> tuple[str, list[Sample]]:
    """Read the folder's table; return (layout: the table's format, kept samples). The labels
    found (when none were asked for) go to `request.class_names`; skips go to the request."""
    table = find_table(request.data_dir)
    columns, rows = read_table(table)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"{table} has no {', '.join(missing)} column (columns: {', '.join(map(str, columns))}): "
                           f"expected {EXPECTED_LAYOUT}")
    has_split, asked = SPLIT_COLUMN in columns, request.class_names
    kept: list[tuple[int, dict[str, Any], Path]] = []
    seen: set[str] = set()
    for number, row in rows:
        value = row if isinstance(row, str) else _values(row, number)
        problem = value if isinstance(value, str) else _problem(value, asked, has_split)
        if problem:
            request.skip("malformed_line", _example(table, number, row, problem), None)
            continue
        post_id, image_path = value["id"], _image_file(value["image"], table.parent)
        reason = ("duplicate_id" if post_id in seen else "empty_text" if not value["text"]
                  else "missing_image" if image_path is None else None)
        seen.add(post_id)
        if reason:
            request.skip(reason, _example(table, number, row) if reason == "duplicate_id" else post_id,
                         None if reason == "duplicate_id" else post_id)
            continue
        kept.append((number, value, image_path))
    labels = asked or tuple(sorted({value["label"] for _, value, _ in kept}, key=id_sort_key))
    if len(labels) < 2:
        raise DatasetError(f"{table} needs at least two labels to learn from; its usable rows have {list(labels)}")
    request.class_names = labels
    samples = [Sample(id=value["id"], text=value["text"], image_path=image_path, label=labels.index(value["label"]),
                      annotations={"row": number, "table": table.name,
                                   **({OFFICIAL_SPLIT: SPLIT_ALIASES[value["split"].lower()]} if has_split else {})})
               for number, value, image_path in kept]
    return table.suffix.lower().lstrip("."), samples


def _values(row: dict[str, Any], number: int) -> dict[str, Any] | str:
    """A row's fields as strings (id defaults to the row number), or what is wrong with it."""
    fields = {c: row.get(c) for c in (*REQUIRED_COLUMNS, ID_COLUMN, SPLIT_COLUMN)}
    text = {c: str(v).strip() for c, v in fields.items() if isinstance(v, (str, int, float))}
    missing = [c for c in REQUIRED_COLUMNS if c not in text or (c != "text" and not text[c])]
    if missing:  # an empty text is skipped as empty_text, like every dataset's
        return f"no {', '.join(missing)}"
    return {"id": text.get(ID_COLUMN) or str(number), "text": normalize_text(text["text"]), "image": text["image"],
            "label": text["label"], "split": text.get(SPLIT_COLUMN)}


def _problem(value: dict[str, Any], asked: tuple[str, ...], has_split: bool) -> str:
    if asked and value["label"] not in asked:
        return f"label {value['label']!r} is not one of {', '.join(asked)}"
    if has_split and (value["split"] or "").lower() not in SPLIT_ALIASES:
        return f"split {value['split']!r} is not train, val or test"
    return ""


def _image_file(value: str, table_dir: Path) -> Path | None:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [table_dir / path, table_dir / IMAGES_FOLDER / path]
    return next((p for p in candidates if p.is_file()), None)


def _example(table: Path, number: int, row: Any, problem: str = "") -> str:
    shown = json.dumps(row, ensure_ascii=False, default=str) if isinstance(row, dict) else ""
    shown = shown[:EXAMPLE_WIDTH] + "..." if len(shown) > EXAMPLE_WIDTH else shown
    return f"{table.name} row {number} {shown}" + (f" ({problem})" if problem else "")
