"""What a scoring job reads: a CSV, JSONL or Parquet table, or a folder of images (with optional
`<name>.txt` texts beside them), as rows streamed in order, only those in the ranges asked for.

Tables are read in chunks (pyarrow's streaming CSV reader, Parquet row groups, JSONL line by line
so that one bad line is that row's error); their columns are found as clara.batch finds a batch
CSV's (image_path or image, text, optional id and label, any case). A row's image is a path
(relative to the table's folder, or absolute) or, in Parquet, the image's bytes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clara.batch import BatchColumns, batch_columns
from clara.data.mvsa import decode_text
from clara.inputs import IMAGE_TYPES, InputError

TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                 ".pq": "parquet"}
# A row without an id column gets its place in the file: CSV its line (the header is line 1), JSONL
# its line, Parquet and folders their 0-based row index.
ID_OFFSETS = {"csv": 2, "jsonl": 1, "parquet": 0, "folder": 0}
CHUNK_ROWS = 2048  # rows per chunk read from a table
HEAD_BYTES = 64 * 1024  # what is read to find a CSV's separator and header
FINGERPRINT_BYTES = 2**20  # a file's fingerprint hashes its first and last MiB (plus size and mtime)

Ranges = Sequence[tuple[int, int]]


@dataclass
class InputRow:
    """One input row; `error` is set when the record itself is unusable (e.g. a line that is not JSON)."""
    row: int  # 0-based position in the input
    id: str
    image: str | bytes | None  # a path (relative to the source's images folder, or absolute) or image bytes
    text: str | None
    label: str = ""
    error: str | None = None
    error_kind: str | None = None

    @property
    def image_ref(self) -> str:
        return self.image if isinstance(self.image, str) else ""


@dataclass
class SkippedRows:
    """Malformed CSV rows (a wrong number of fields) that pyarrow's reader drops, counted."""
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def __call__(self, row: Any) -> str:  # pyarrow's invalid_row_handler
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(f"{row.actual_columns} fields where {row.expected_columns} were expected: "
                                 f"{str(row.text)[:80]!r}")
        return "skip"


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: cheap for a 100 GB table, and changed by any
    rewrite that a person would make of it."""
    info = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(FINGERPRINT_BYTES))
        if info.st_size > FINGERPRINT_BYTES:
            file.seek(max(FINGERPRINT_BYTES, info.st_size - FINGERPRINT_BYTES))
            digest.update(file.read())
    return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "sha256_head_tail": digest.hexdigest()}


class Source:
    """A scoring job's input: `num_rows` rows, read in order by `rows(ranges)`."""
    kind = ""
    num_rows = 0
    images_folder: Path | None = None  # where relative image paths are found
    skipped: SkippedRows

    def rows(self, ranges: Ranges) -> Iterator[InputRow]:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError


def _text_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")  # UnicodeDecodeError: the caller makes it the row's error
    return str(value)


def rows_from_arrow(batch: pa.RecordBatch | pa.Table, columns: BatchColumns, row_numbers: Sequence[int],
                    kind: str) -> list[InputRow]:
    """InputRows from a chunk of a table (one `row_numbers` entry per row of `batch`). In a CSV every
    value is read as bytes (text, so that a bad byte is one row's error); in Parquet a binary image
    column, or a struct with `bytes` (Hugging Face's Image feature), holds the image itself."""
    def column(name: str | None) -> list[Any]:
        return batch.column(batch.schema.get_field_index(name)).to_pylist() if name else [None] * batch.num_rows

    images, texts, ids, labels = (column(c) for c in (columns.image, columns.text, columns.id, columns.label))
    return [make_row(*values, kind) for values in zip(row_numbers, images, texts, ids, labels)]


def make_row(number: int, image: Any, text: Any, given_id: Any, label: Any, kind: str) -> InputRow:
    """One InputRow from a record's values, as read (bytes are UTF-8 text, except an image's bytes); a
    value that is not UTF-8 is the row's error, the other values are kept."""
    row = InputRow(row=int(number), id=str(int(number) + ID_OFFSETS[kind]), image=None, text=None)
    if isinstance(image, dict):  # {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    for name, value in (("id", given_id), ("label", label), ("image", image), ("text", text)):
        try:
            if name == "image":
                row.image = (_text_value(value) or "").strip() if kind == "csv" or isinstance(value, str) else value
            elif name == "text":
                row.text = _text_value(value)
            else:
                setattr(row, name, (_text_value(value) or "").strip() or getattr(row, name))
        except UnicodeDecodeError as exc:
            row.error = f"the {name} is not UTF-8 text (byte {exc.start}): save the table as UTF-8"
            row.error_kind = "text unusable"
    return row


def _ranges_filter(numbers: range, ranges: Ranges) -> list[int]:
    """The positions (0-based, within `numbers`) of the row numbers that fall inside `ranges`."""
    keep = []
    for start, end in ranges:
        lo, hi = max(start, numbers.start), min(end, numbers.stop)
        keep.extend(n - numbers.start for n in range(lo, hi))
    return keep


# ----------------------------------------------------------------------------- CSV

class CsvSource(Source):
    """A CSV file (or, for the app, its bytes): separator sniffed (comma, semicolon, tab) from the head."""
    kind = "csv"

    def __init__(self, path: str | Path | None = None, data: bytes | None = None):
        self.path = Path(path) if path is not None else None
        self.data = data
        self.images_folder = self.path.parent if self.path is not None else None
        head = self._open_bytes().read(HEAD_BYTES)
        if not head.strip():
            raise InputError("The CSV file is empty.")
        self.delimiter, names = _sniff_header(head)
        self.columns = batch_columns(names)
        self._names = names
        self.skipped = SkippedRows()
        self.num_rows = sum(batch.num_rows for batch in self._batches(self.skipped))
        if not self.num_rows:
            raise InputError("The CSV has a header but no rows.")

    def _open_bytes(self) -> io.BufferedIOBase:
        return io.BytesIO(self.data) if self.data is not None else self.path.open("rb")

    def arrow_options(self, skipped: SkippedRows) -> dict[str, Any]:
        """The pyarrow read / parse / convert options (also what Ray's read_csv is given)."""
        return {"read_options": pacsv.ReadOptions(block_size=2**20),
                "parse_options": pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True,
                                                    invalid_row_handler=skipped),
                "convert_options": pacsv.ConvertOptions(column_types={name: pa.binary() for name in self._names},
                                                        strings_can_be_null=False)}

    def _batches(self, skipped: SkippedRows) -> Iterator[pa.RecordBatch]:
        try:
            with self._open_bytes() as file:
                reader = pacsv.open_csv(file, **self.arrow_options(skipped))
                for batch in reader:
                    yield batch
        except pa.ArrowInvalid as exc:
            raise InputError(f"The CSV cannot be read ({exc}).") from None

    def rows(self, ranges: Ranges) -> Iterator[InputRow]:
        offset, last = 0, max((end for _, end in ranges), default=0)
        for batch in self._batches(SkippedRows()):
            numbers = range(offset, offset + batch.num_rows)
            offset = numbers.stop
            keep = _ranges_filter(numbers, ranges)
            if keep:
                chunk = batch.take(pa.array(keep, pa.int64()))
                yield from rows_from_arrow(chunk, self.columns, [numbers.start + k for k in keep], self.kind)
            if offset >= last:
                return

    def fingerprint(self) -> dict[str, Any]:
        if self.path is None:
            return {"sha256": hashlib.sha256(self.data).hexdigest(), "size": len(self.data)}
        return file_fingerprint(self.path.resolve())


def _sniff_header(head: bytes) -> tuple[str, list[str]]:
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not a character cut by the end of the head
            raise InputError(f"The CSV file is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV.") from None
        text = head[:exc.start].decode("utf-8-sig")
    try:
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    names = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return delimiter, names


# ----------------------------------------------------------------------------- JSONL

class JsonlSource(Source):
    """One JSON object per line (blank lines are not rows); a line that is not an object is that row's error."""
    kind = "jsonl"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.images_folder = self.path.parent
        self.skipped = SkippedRows()
        self.num_rows = 0
        first = None
        with self.path.open("rb") as file:
            for line in file:
                if line.strip():
                    first = line if first is None else first
                    self.num_rows += 1
        if first is None:
            raise InputError("The JSONL file has no records.")
        try:
            record = json.loads(first)
        except ValueError as exc:
            raise InputError(f"The first line is not JSON ({exc}).") from None
        if not isinstance(record, dict):
            raise InputError("The first line is not a JSON object: each line must be one post, e.g. "
                             '{"image": "a.jpg", "text": "what a day"}.')
        batch_columns(list(record), what="each JSON line needs")

    def rows(self, ranges: Ranges) -> Iterator[InputRow]:
        number, last = 0, max((end for _, end in ranges), default=0)
        wanted = iter(sorted(ranges))
        current = next(wanted, None)
        with self.path.open("rb") as file:
            for line in file:
                if not line.strip():
                    continue
                while current is not None and number >= current[1]:
                    current = next(wanted, None)
                if current is None or number >= last:
                    return
                if number >= current[0]:
                    yield self.parse_line(number, line)
                number += 1

    def parse_line(self, number: int, line: bytes | str) -> InputRow:
        """The row of the `number`-th (0-based) non-blank line."""
        try:
            record = json.loads(line)
        except ValueError as exc:
            return InputRow(row=number, id=str(number + 1), image=None, text=None,
                            error=f"line {number + 1} is not JSON ({exc})", error_kind="bad record")
        if not isinstance(record, dict):
            return InputRow(row=number, id=str(number + 1), image=None, text=None,
                            error=f"line {number + 1} is not a JSON object", error_kind="bad record")
        keys = {str(key).strip().lower(): key for key in reversed(list(record))}
        image_key = next((keys[c] for c in ("image_path", "image") if c in keys), None)
        values = [_plain(record.get(keys[k])) if k in keys else None for k in ("text", "id", "label")]
        image = record.get(image_key) if image_key is not None else None
        return make_row(number, image if isinstance(image, (str, type(None))) else _plain(image), *values, self.kind)

    def fingerprint(self) -> dict[str, Any]:
        return file_fingerprint(self.path.resolve())


def _plain(value: Any) -> str | None:
    """A JSON value as the text a table cell would hold (numbers as written, objects as JSON)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# ----------------------------------------------------------------------------- Parquet

class ParquetSource(Source):
    """A Parquet file, read one row group at a time, only the groups that hold wanted rows."""
    kind = "parquet"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.images_folder = self.path.parent
        self.skipped = SkippedRows()
        try:
            file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"not a Parquet file PyArrow can read ({exc})") from None
        self.columns = batch_columns(file.schema_arrow.names, what="the Parquet table needs")
        self.num_rows = file.metadata.num_rows
        groups = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
        self._group_starts = [sum(groups[:g]) for g in range(len(groups))] + [self.num_rows]
        if not self.num_rows:
            raise InputError("The Parquet table has no rows.")

    def rows(self, ranges: Ranges) -> Iterator[InputRow]:
        file = pq.ParquetFile(self.path)
        names = [c for c in (self.columns.image, self.columns.text, self.columns.id, self.columns.label) if c]
        for group in range(len(self._group_starts) - 1):
            group_rows = range(self._group_starts[group], self._group_starts[group + 1])
            if not any(start < group_rows.stop and end > group_rows.start for start, end in ranges):
                continue
            offset = group_rows.start
            for batch in file.iter_batches(batch_size=CHUNK_ROWS, row_groups=[group],
                                           columns=list(dict.fromkeys(names))):
                numbers = range(offset, offset + batch.num_rows)
                offset = numbers.stop
                keep = _ranges_filter(numbers, ranges)
                if keep:
                    chunk = batch.take(pa.array(keep, pa.int64()))
                    yield from rows_from_arrow(chunk, self.columns, [numbers.start + k for k in keep], self.kind)

    def fingerprint(self) -> dict[str, Any]:
        return file_fingerprint(self.path.resolve())


# ----------------------------------------------------------------------------- a folder of images

class FolderSource(Source):
    """Every image file under a folder (sorted by path; hidden files and folders left out); a post's
    text is the `<name>.txt` beside its image (as MVSA's raw data has it), else empty."""
    kind = "folder"

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.images_folder = self.path
        self.skipped = SkippedRows()
        suffixes = {f".{t}" for t in IMAGE_TYPES}
        self.files = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                            if p.suffix.lower() in suffixes and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(self.path).parts))
        self.num_rows = len(self.files)
        if not self.num_rows:
            raise InputError(f"no images ({', '.join(IMAGE_TYPES)}) in the folder {self.path}")

    def rows(self, ranges: Ranges) -> Iterator[InputRow]:
        for start, end in ranges:
            for number in range(start, min(end, self.num_rows)):
                yield self.row_at(number)

    def row_at(self, number: int) -> InputRow:
        name = self.files[number]
        row = InputRow(row=number, id=name.rsplit(".", 1)[0], image=name, text="")
        text_file = (self.path / name).with_suffix(".txt")
        if text_file.is_file():
            decoded = decode_text(text_file.read_bytes())
            if decoded is None:
                row.error, row.error_kind = f"{text_file.name} cannot be decoded as text", "text unusable"
            else:
                row.text = decoded[0]
        return row

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for name in self.files:
            info = (self.path / name).stat()
            digest.update(f"{name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        return {"path": str(self.path), "files": self.num_rows, "listing_sha256": digest.hexdigest()}


def open_source(path: str | Path) -> Source:
    """The Source for a table file (by its extension) or a folder of images; InputError if unusable."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; give a "
                         f"{', '.join(sorted(TABLE_FORMATS))} file or a folder of images")
    try:
        return {"csv": CsvSource, "jsonl": JsonlSource, "parquet": ParquetSource}[kind](path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
