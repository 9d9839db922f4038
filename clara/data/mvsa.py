"""MVSA-Single and MVSA-Multiple readers: raw and simplified layouts, clara and standard protocols.

Raw layout (as released): labelResultAll.txt, a header then `<id><TAB><text>,<image>` with one
label pair per annotator (Single 1, Multiple 3), beside data/<id>.jpg and data/<id>.txt.
Simplified layout (the CLARA seed README): `<id> | <label> | <text>` lines beside
images/<id>.jpg. The layout is detected from the label file's lines (`_detect_layout`).
The protocols are `resolve_label`'s (docs/METHOD.md); text decoding is `decode_text`'s. Each
post's first failing check (in the order `_load_raw` runs them) is its skip reason. The split's
candidates are the posts with their label and files in place, as the notebooks keep them (empty
or undecodable text included); `load_dataset` decodes images and removes refusals after splitting.
"""
from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clara.datasets import MVSA_LABELS, REGISTRY

from .images import ImageFolderIndex
from .types import Candidate, DatasetError, ReadRequest, Sample, read_without_bom

LABEL_FILE = "labelResultAll.txt"
ANNOTATORS = {"mvsa_single": 1, "mvsa_multiple": 3}

# Ids become file names: only plain tokens, never a path.
VALID_ID = re.compile(r"[A-Za-z0-9_\-]+")
EXAMPLE_WIDTH = 60

SkipFn = Callable[[str, str, "str | None"], None]


def decode_text(raw: bytes) -> tuple[str, str] | None:
    """(text, encoding) for a text file's bytes, or None if it cannot be decoded as text.

    UTF-8 (a BOM dropped), else UTF-16 when it starts with a UTF-16 BOM, else cp1252 (the
    Windows encoding most non-UTF-8 tweets are in); text holding NUL (a binary file) is None."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ("utf-16",)
    else:
        if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        candidates = ("utf-8", "cp1252")
    for encoding in candidates:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        return None if "\x00" in text else (text, encoding)
    return None


def normalize_text(text: str) -> str:
    """One line of text: line breaks and runs of whitespace become single spaces."""
    return " ".join(text.split())


def read_lines(path: Path) -> list[tuple[int, bytes]]:
    """(1-based line number, bytes without line ending) for every line; CRLF, LF or CR endings."""
    raw = read_without_bom(path)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetError(f"{path} is UTF-16 text; save it as UTF-8 and load again")
    return list(enumerate(raw.splitlines(), start=1))


def _seen_before(post_id: str, seen: set[str], skip: SkipFn, example: str) -> bool:
    """Record `post_id`; a repeat is skipped as duplicate_id (the first line of an id wins)."""
    if post_id in seen:
        skip("duplicate_id", example, None)
        return True
    seen.add(post_id)
    return False


def line_example(path: Path, line_number: int, line: str | bytes, problem: str = "") -> str:
    shown = line if isinstance(line, str) else line.decode("utf-8", errors="replace")
    shown = shown.strip()
    if len(shown) > EXAMPLE_WIDTH:
        shown = shown[:EXAMPLE_WIDTH] + "..."
    suffix = f" ({problem})" if problem else ""
    return f"{path.name}:{line_number} {shown!r}{suffix}"


def resolve_label(text_labels: list[str], image_labels: list[str], protocol: str) -> tuple[str | None, str | None]:
    """(label, None) if the protocol keeps the post, else (None, skip reason).

    clara: every label (text and image, every annotator) is the same. standard (Xu et al. 2017):
    per modality the label of >= 2 of 3 annotators (else "no_majority"); equal labels give that
    label, neutral + positive/negative the polar one, positive vs negative "labels_conflict".
    The simplified layout holds one resolved label per post, which both protocols keep."""
    if protocol == "clara":
        distinct = set(text_labels) | set(image_labels)
        return (distinct.pop(), None) if len(distinct) == 1 else (None, "labels_disagree")
    if protocol != "standard":
        raise DatasetError(f"unknown protocol {protocol!r} for MVSA; choose clara or standard")
    text_label, image_label = _majority(text_labels), _majority(image_labels)
    if text_label is None or image_label is None:
        return None, "no_majority"
    if text_label == image_label:
        return text_label, None
    if "neutral" in (text_label, image_label):
        return (image_label if text_label == "neutral" else text_label), None
    return None, "labels_conflict"


def _majority(labels: list[str]) -> str | None:
    """The label given by most annotators if at least 2 of 3 agree (or the only one)."""
    if len(labels) == 1:
        return labels[0]
    label, count = Counter(labels).most_common(1)[0]
    return label if count >= 2 else None


def load_mvsa(request: ReadRequest) -> tuple[str, list[Sample]]:
    """Read an MVSA folder; return (layout, kept samples). Skips and the split's candidates go to
    the request; an unusable folder raises DatasetError."""
    dataset, data_dir, protocol = request.dataset, request.data_dir, request.protocol
    if dataset not in ANNOTATORS:
        raise DatasetError(f"unknown MVSA dataset {dataset!r}; choose mvsa_single or mvsa_multiple")
    title = REGISTRY[dataset].title
    label_file = data_dir / LABEL_FILE
    if not label_file.is_file():
        raise DatasetError(_missing_label_file_message(data_dir, title))
    lines = _content_lines(read_lines(label_file))
    layout = _detect_layout(lines)
    folder = data_dir / ("data" if layout == "raw" else "images")
    if not folder.is_dir():
        raise DatasetError(f"{label_file} is in the {layout} layout but {folder} is missing: expected "
                           + ("data/<id>.jpg and data/<id>.txt next to it" if layout == "raw"
                              else "images/<id>.jpg next to it"))
    images = ImageFolderIndex(folder)
    # The split's candidates, id -> label, in reading order (filled by the layout's reader).
    candidate_labels: dict[str, str] = {}
    if layout == "raw":
        samples = _load_raw(dataset, label_file, lines, images, protocol, request.skip, candidate_labels)
    else:
        samples = _load_simplified(label_file, lines, images, request.skip, candidate_labels)
    kept = {s.id for s in samples}
    request.candidates = [
        Candidate(post_id, MVSA_LABELS.index(label), refusal=None if post_id in kept else request.skipped_ids[post_id])
        for post_id, label in candidate_labels.items()
        # The notebooks drop a post without its image (or, raw layout, its text file) before splitting.
        if images.find(post_id) is not None and (layout != "raw" or (folder / f"{post_id}.txt").is_file())]
    return layout, samples


def _missing_label_file_message(data_dir: Path, title: str) -> str:
    message = (f"no {LABEL_FILE} in {data_dir}: expected an {title} folder with {LABEL_FILE} and "
               "data/ (raw layout: data/<id>.jpg + data/<id>.txt) or images/ (simplified layout)")
    nested = sorted(p.parent.name for p in data_dir.glob(f"*/{LABEL_FILE}"))
    if nested:
        message += f"; found {LABEL_FILE} in subfolder(s) {', '.join(nested)} - point --data-dir there"
    return message


def _detect_layout(lines: list[tuple[int, bytes]], sniff: int = 20) -> str:
    """'simplified' if most of the first `sniff` content lines use '|' separators, else 'raw'."""
    content = [line for _, line in lines[:sniff]]
    with_pipes = sum(b"|" in line for line in content)
    return "simplified" if content and with_pipes * 2 > len(content) else "raw"


def _is_header(line: bytes) -> bool:
    first = line.replace(b"|", b" ").split()
    return bool(first) and first[0].lower() == b"id"


def _content_lines(lines: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The non-blank lines, without a header line (`ID ...`) at the top."""
    content = [(number, line.strip()) for number, line in lines if line.strip()]
    return content[1:] if content and _is_header(content[0][1]) else content


def _load_raw(dataset: str, label_file: Path, lines: list[tuple[int, bytes]], images: ImageFolderIndex,
              protocol: str, skip: SkipFn, candidate_labels: dict[str, str]) -> list[Sample]:
    """The kept samples (the first line of an id wins); `candidate_labels` gets every post that
    passes the protocol (clara: as the notebooks' `lbl` dict, so an id sits where its first
    agreeing line is, with its last agreeing line's label)."""
    expected_pairs = ANNOTATORS[dataset]
    folder = images.folder
    samples: list[Sample] = []
    seen: set[str] = set()
    pair_counts: Counter = Counter()  # label pairs per parsable line, to recognise the other MVSA dataset
    for line_number, raw_line in lines:
        line = raw_line.decode("utf-8", errors="replace")
        post_id, *pairs = re.sub(r"\s*,\s*", ",", line).split()  # "positive, neutral" is one pair
        parsed = _parse_pairs(pairs)
        problem = _raw_line_problem(post_id, pairs, parsed, expected_pairs)
        if parsed is not None:
            pair_counts[len(pairs)] += 1
        if problem:
            skip("malformed_line", line_example(label_file, line_number, line, problem), None)
            continue
        text_labels, image_labels = [p[0] for p in parsed], [p[1] for p in parsed]
        label, reason = resolve_label(text_labels, image_labels, protocol)
        if protocol == "clara" and label is not None:
            candidate_labels[post_id] = label  # a repeated agreeing line relabels it in place
        if _seen_before(post_id, seen, skip, line_example(label_file, line_number, line)):
            continue
        if reason is not None:
            shown = f"text {'/'.join(text_labels)}, image {'/'.join(image_labels)}"
            skip(reason, f"{post_id} ({shown})", post_id)
            continue
        candidate_labels.setdefault(post_id, label)
        image_path = images.find(post_id)
        if image_path is None:
            skip("missing_image", post_id, post_id)
            continue
        text_path = folder / f"{post_id}.txt"
        try:
            raw_text = text_path.read_bytes()
        except FileNotFoundError:
            skip("missing_text", post_id, post_id)
            continue
        except OSError as exc:
            skip("missing_text", f"{post_id} ({exc.strerror or exc})", post_id)
            continue
        sample = _make_sample(post_id, raw_text, image_path, label,
                              {"text": text_labels, "image": image_labels}, skip)
        if sample is not None:
            samples.append(sample)
    if pair_counts and pair_counts.most_common(1)[0][0] != expected_pairs:
        _raise_wrong_dataset(dataset, label_file, pair_counts)
    return samples


def _raw_line_problem(post_id: str, pairs: list[str], parsed: list | None, expected_pairs: int) -> str:
    if not VALID_ID.fullmatch(post_id):
        return "the id must be letters, digits, '_' or '-'"
    if parsed is None:
        return "labels must be text,image pairs of positive/neutral/negative"
    if len(pairs) != expected_pairs:
        return f"{len(pairs)} text,image label pair(s), expected {expected_pairs}"
    return ""


def _parse_pairs(pairs: list[str]) -> list[tuple[str, str]] | None:
    parsed = []
    for pair in pairs:
        parts = [p.strip().lower() for p in pair.split(",")]
        if len(parts) != 2 or any(p not in MVSA_LABELS for p in parts):
            return None
        parsed.append((parts[0], parts[1]))
    return parsed or None


def _raise_wrong_dataset(dataset: str, label_file: Path, pair_counts: Counter) -> None:
    found = pair_counts.most_common(1)[0][0]
    other = {count: name for name, count in ANNOTATORS.items()}.get(found)
    hint = f"; that is the {REGISTRY[other].title} format (use --dataset {other})" if other else ""
    raise DatasetError(f"{label_file} has {found} text,image label pair(s) on most lines, but "
                       f"{REGISTRY[dataset].title} has {ANNOTATORS[dataset]}{hint}")


def _make_sample(post_id: str, raw_text: bytes, image_path: Path, label: str,
                 annotations: dict, skip: SkipFn) -> Sample | None:
    decoded = decode_text(raw_text)
    if decoded is None:
        skip("undecodable_text", post_id, post_id)
        return None
    text, encoding = decoded
    text = normalize_text(text)
    if not text:
        skip("empty_text", post_id, post_id)
        return None
    if encoding != "utf-8":
        annotations = {**annotations, "text_encoding": encoding}
    return Sample(id=post_id, text=text, image_path=image_path, label=MVSA_LABELS.index(label),
                  annotations=annotations)


def _parse_simplified_label(value: str) -> str | None:
    value = value.strip().lower()
    if value in MVSA_LABELS:
        return value
    if value.isdigit() and int(value) < len(MVSA_LABELS):
        return MVSA_LABELS[int(value)]  # the notebooks' index order: positive, neutral, negative
    return None


def _load_simplified(label_file: Path, lines: list[tuple[int, bytes]], images: ImageFolderIndex, skip: SkipFn,
                     candidate_labels: dict[str, str]) -> list[Sample]:
    samples: list[Sample] = []
    seen: set[str] = set()
    for line_number, raw_line in lines:
        parts = [p.strip() for p in raw_line.split(b"|", 2)]
        post_id = parts[0].decode("utf-8", errors="replace")
        label = _parse_simplified_label(parts[1].decode("utf-8", errors="replace")) if len(parts) == 3 else None
        if len(parts) != 3 or not VALID_ID.fullmatch(post_id) or label is None:
            problem = "expected 'id | label | text' with label positive, neutral or negative"
            skip("malformed_line", line_example(label_file, line_number, raw_line, problem), None)
            continue
        if _seen_before(post_id, seen, skip, line_example(label_file, line_number, raw_line)):
            continue
        candidate_labels[post_id] = label
        image_path = images.find(post_id)
        if image_path is None:
            skip("missing_image", post_id, post_id)
            continue
        sample = _make_sample(post_id, parts[2], image_path, label, {"label": label}, skip)
        if sample is not None:
            samples.append(sample)
    return samples
