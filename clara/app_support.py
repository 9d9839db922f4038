"""What the Streamlit dashboard needs that is not Streamlit: finding checkpoints and results,
checking uploads, OCR of meme text, the published reference numbers, tables for the metrics and
error pages, and batch CSV handling. The pages in `pages/` only lay these out.

Uploads are handled as bytes in memory: nothing is written to disk and the uploaded file name is
never used as a path; the content (magic bytes), not the name, decides the image type.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from clara.config import LABELS
from clara.data.images import MAX_IMAGE_PIXELS, ImageError, open_image

# ----------------------------------------------------------------------------- checkpoints

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
DEMO_SOURCE_KIND = "demo"
HEADLINE_METRICS = ("accuracy", "f1_weighted", "f1_macro")
SOURCE_NAMES = {"clara": "trained", "notebook": "imported notebook", DEMO_SOURCE_KIND: "demo (synthetic data)"}
# How deep under checkpoints/ a checkpoint folder may sit (checkpoints/<run>/ or checkpoints/<group>/<run>/).
MAX_CHECKPOINT_DEPTH = 3


class AppInputError(ValueError):
    """Input the app cannot use; the message is written for the person using the app."""


@dataclass
class CheckpointEntry:
    """One checkpoint folder as the picker lists it (read from its config.json, no weights loaded)."""
    path: Path
    name: str  # path relative to the checkpoints folder
    dataset: str | None = None
    protocol: str | None = None
    encoders: str | None = None
    fusion: str | None = None
    labels: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, f1_weighted, f1_macro (fractions)
    metrics_split: str | None = None  # "test" or "val": which split `metrics` were measured on
    created: str | None = None
    source: str = "clara"  # config.json source.kind: clara (trained here) | notebook (imported) | demo
    mtime: float = 0.0
    problem: str | None = None  # why the folder cannot be used, if it cannot

    @property
    def is_demo(self) -> bool:
        return self.source == DEMO_SOURCE_KIND

    @property
    def usable(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        """One line for a select box."""
        if self.problem:
            return f"{self.name} (unusable: {self.problem})"
        parts = [self.dataset or "?", self.encoders or "?"]
        if "accuracy" in self.metrics:
            parts.append(f"{self.metrics_split} acc {self.metrics['accuracy']:.1%}")
        return f"{self.name} ({', '.join(parts)})"


def checkpoint_mtime(path: str | Path) -> float:
    """Newest modification time of the files that define a checkpoint (cache key for the app)."""
    path = Path(path)
    times = [(path / name).stat().st_mtime for name in (CONFIG_FILE, WEIGHTS_FILE) if (path / name).exists()]
    return max(times, default=0.0)


def read_checkpoint_entry(path: str | Path, checkpoints_dir: str | Path | None = None,
                          results_roots: Sequence[str | Path] = ()) -> CheckpointEntry:
    """Describe one checkpoint folder from its config.json and metrics files.

    Test metrics come from the results folder whose metrics.json names this checkpoint (looked up
    in the checkpoint's own `results/` folder, then under each of `results_roots`), else from the
    checkpoint's metrics.json ("test" entry, or the validation metrics it was selected on).
    """
    path = Path(path)
    name = str(path.relative_to(checkpoints_dir)) if checkpoints_dir and _is_under(path, checkpoints_dir) else path.name
    entry = CheckpointEntry(path=path, name=name, mtime=checkpoint_mtime(path))
    try:
        info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("config.json does not hold a JSON object")
    except (OSError, ValueError) as exc:
        entry.problem = f"cannot read {CONFIG_FILE}: {exc}"
        return entry
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    data_cfg, model_cfg = config.get("data", {}), config.get("model", {})
    entry.dataset = info.get("dataset") or data_cfg.get("dataset")
    entry.protocol = info.get("protocol") or data_cfg.get("protocol")
    encoders = info.get("encoders")
    entry.encoders = encoders.get("kind") if isinstance(encoders, dict) else encoders or model_cfg.get("encoders")
    entry.fusion = model_cfg.get("fusion")
    entry.labels = list(info.get("labels") or LABELS.get(entry.dataset or "", []))
    entry.created = info.get("created")
    source = info.get("source")
    if isinstance(source, dict) and source.get("kind"):
        entry.source = str(source["kind"])
    if not (path / WEIGHTS_FILE).is_file():
        entry.problem = f"no {WEIGHTS_FILE}"
    entry.metrics, entry.metrics_split = _checkpoint_metrics(path, results_roots)
    return entry


def _is_under(path: Path, parent: str | Path) -> bool:
    try:
        path.resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False


def _headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))}


def _checkpoint_metrics(path: Path, results_roots: Sequence[str | Path]) -> tuple[dict[str, float], str | None]:
    for results_dir in [path / "results", *(Path(r) for r in results_roots)]:
        for metrics_file in _metrics_files(results_dir):
            metrics = _read_json(metrics_file)
            if not isinstance(metrics, dict):
                continue
            own_folder = metrics_file.parent == path / "results"
            named = named_checkpoint(metrics, metrics_file.parent)
            if (own_folder or (named is not None and named.resolve() == path.resolve())) and _headline(metrics):
                return _headline(metrics), "test"
    own = _read_json(path / METRICS_FILE)
    if isinstance(own, dict):
        for split in ("test", "val"):
            if isinstance(own.get(split), dict) and _headline(own[split]):
                return _headline(own[split]), split
    return {}, None


def named_checkpoint(metrics: Mapping[str, Any], results_dir: Path) -> Path | None:
    """The checkpoint folder a results metrics.json names, if it exists.

    The training loop records the path as it was given, often relative to the folder it ran in
    (OUT, with results in OUT/results/<run>/), so a relative path is tried from there and from
    the current folder.
    """
    named = metrics.get("checkpoint")
    if not isinstance(named, str) or not named:
        return None
    path = Path(named)
    candidates = [path] if path.is_absolute() else [results_dir.parent.parent / path, Path.cwd() / path]
    return next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)


def _metrics_files(results_dir: Path) -> list[Path]:
    if not results_dir.is_dir():
        return []
    direct = results_dir / METRICS_FILE
    return [direct] if direct.is_file() else sorted(results_dir.glob(f"*/{METRICS_FILE}"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_checkpoints(checkpoints_dir: str | Path, results_roots: Sequence[str | Path] = ()) -> list[CheckpointEntry]:
    """Every checkpoint folder (a folder holding config.json) under `checkpoints_dir`.

    The demo checkpoint comes first, then the others newest first. Hidden folders (e.g. the
    temporary folder of a save in progress) and results folders are not searched.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / CONFIG_FILE).is_file() and folder != root:
            found.append(folder)
            return
        if depth >= MAX_CHECKPOINT_DEPTH:
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name != "results":
                walk(child, depth + 1)

    walk(root, 0)
    entries = [read_checkpoint_entry(p, root, results_roots) for p in found]
    return sorted(entries, key=lambda e: (not e.is_demo, -e.mtime, e.name))


def checkpoints_table(entries: Iterable[CheckpointEntry]) -> list[dict[str, Any]]:
    """Rows for the picker's table: name, dataset, protocol, encoders, metrics, date, source."""
    rows = []
    for e in entries:
        rows.append({
            "checkpoint": e.name, "dataset": e.dataset, "protocol": e.protocol, "encoders": e.encoders,
            "fusion": e.fusion, "metrics split": e.metrics_split,
            **{name: (round(100 * e.metrics[name], 2) if name in e.metrics else None) for name in HEADLINE_METRICS},
            "created": format_date(e.created), "source": SOURCE_NAMES.get(e.source, e.source),
            "status": e.problem or "ok",
        })
    return rows


def format_date(value: str | None) -> str | None:
    """'2025-05-01T12:30:00+00:00' -> '2025-05-01 12:30'; anything unparsable is shown as given."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)


# ----------------------------------------------------------------------------- uploads

MAX_IMAGE_UPLOAD_MB = 10
MAX_IMAGE_UPLOAD_BYTES = MAX_IMAGE_UPLOAD_MB * 1024 * 1024
# Smaller than clara's loader limit: the app decodes uploads in a shared server process.
APP_MAX_IMAGE_PIXELS = min(MAX_IMAGE_PIXELS, 40_000_000)
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "gif")
MAX_TEXT_CHARS = 5000


@dataclass
class CheckedImage:
    """An upload that passed the checks: the decoded RGB image plus what was found."""
    image: Image.Image  # RGB, EXIF orientation applied, first frame of an animation
    data: bytes  # the original file bytes
    format: str  # PNG | JPEG | WEBP | GIF, from the content
    frames: int = 1
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. first frame used)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def format_bytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 1024:.0f} KB"


def sniff_image_format(data: bytes) -> str | None:
    """The image format from the first bytes of the content (never the file name), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_content(data: bytes) -> str:
    """What a non-image upload looks like, for the error message."""
    head = data[:512]
    known = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive (or an Office document)",
             b"BM": "a BMP image (not accepted: use PNG, JPEG, WebP or GIF)",
             b"II*\x00": "a TIFF image (not accepted)", b"MM\x00*": "a TIFF image (not accepted)",
             b"\x00\x00\x00": "an HEIC/AVIF or video file (not accepted)"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text.lstrip("\ufeff")):
        return "text, not an image"
    return "unrecognised data"


def check_image_upload(data: bytes, max_bytes: int = MAX_IMAGE_UPLOAD_BYTES,
                       max_pixels: int = APP_MAX_IMAGE_PIXELS) -> CheckedImage:
    """Check and decode an uploaded image held in memory; raise AppInputError saying what is wrong.

    Refuses empty files, files over `max_bytes`, content that is not PNG/JPEG/WebP/GIF whatever
    the name says, images over `max_pixels` (checked from the header, before decoding, so a
    decompression bomb is never decoded) and truncated or corrupt files. A GIF gives its first frame.
    """
    if not data:
        raise AppInputError("The file is empty (0 bytes). Choose an image file (PNG, JPEG, WebP or GIF).")
    if len(data) > max_bytes:
        raise AppInputError(f"The file is {format_bytes(len(data))}; images up to {format_bytes(max_bytes)} "
                            "are accepted. Resize or compress it and try again.")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise AppInputError(f"This file is not a PNG, JPEG, WebP or GIF image: its content looks like "
                            f"{describe_content(data)}, whatever its name says. Choose an image file.")
    try:
        image = open_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise AppInputError(_image_problem_message(exc.problem, fmt, max_pixels)) from None
    checked = CheckedImage(image=image, data=data, format=fmt)
    if fmt in ("GIF", "WEBP"):
        checked.frames = _frame_count(data)
        if checked.frames > 1:
            checked.notes.append(f"Animated {fmt} with {checked.frames} frames: the first frame is used.")
    return checked


def _image_problem_message(problem: str, fmt: str, max_pixels: int) -> str:
    if "pixels" in problem and ("limit" in problem or "bomb" in problem):
        return (f"The image is too large to open safely ({problem}). Images up to "
                f"{max_pixels / 1e6:.0f} megapixels (e.g. 6000 x 6000) are accepted: resize it and try again.")
    if "decode" in problem or "truncated" in problem:
        return (f"The {fmt} file is damaged or incomplete, e.g. a truncated download ({problem}). "
                "Re-save or re-download the image and try again.")
    return f"The image cannot be used: {problem}."


def _frame_count(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # the first frame decoded already; a broken later frame does not matter here
        return 1


def check_text(text: str | None, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The text to classify, stripped; raise AppInputError when it is empty or too long."""
    cleaned = (text or "").replace("\x00", "").strip()
    if not cleaned:
        raise AppInputError("The text is empty. Type the post's text (or the text in the image) before predicting.")
    if len(cleaned) > max_chars:
        raise AppInputError(f"The text has {len(cleaned):,} characters; at most {max_chars:,} are accepted "
                            "(a tweet has at most 280). Shorten it and try again.")
    return cleaned


TEXT_SOURCES = ("post text + image text", "post text only", "image text only")


def compose_text(post_text: str | None, image_text: str | None, source: str = TEXT_SOURCES[0]) -> str:
    """The text the model reads: the typed post text, the OCR'd image text, or both (post first)."""
    post, ocr = (post_text or "").strip(), (image_text or "").strip()
    if source == TEXT_SOURCES[1]:
        return post
    if source == TEXT_SOURCES[2]:
        return ocr
    if source != TEXT_SOURCES[0]:
        raise ValueError(f"unknown text source {source!r}; choose one of: {', '.join(TEXT_SOURCES)}")
    return " ".join(part for part in (post, ocr) if part)


# ----------------------------------------------------------------------------- OCR

OCR_MIN_SIDE = 600  # tesseract reads letters best at ~30 px; meme images are often small...
OCR_MAX_UPSCALE = 3.0  # ...but blowing up a thumbnail only feeds it noise
OCR_WHITE, OCR_DARK = 200, 100  # grey levels of a meme's letter fill and of its outline
OCR_MIN_WORD_CONFIDENCE = 60.0  # below this, tesseract's "words" on a photo are mostly texture
OCR_GOOD_ENOUGH = 80.0  # mean word confidence at which the remaining variants are not tried
OCR_TIMEOUT_S = 15  # per tesseract run
OCR_EDGE_JUNK = "‘’“”\"'`|_~"  # outline fragments read as quotes or bars at a word's edges
OCR_BUDGET_S = 6.0  # no further variant is started after this much time


@dataclass
class OCRResult:
    text: str
    variant: str  # which preprocessing gave it
    confidence: float  # mean word confidence, 0-100
    tried: dict[str, tuple[str, float]] = field(default_factory=dict)  # variant -> (text, confidence)


def tesseract_available() -> bool:
    """True when pytesseract is installed and the tesseract binary runs."""
    try:
        import pytesseract
        pytesseract.get_tesseract_version()
    except Exception:  # ImportError, TesseractNotFoundError, a broken install
        return False
    return True


def meme_ocr_variants(image: Image.Image) -> dict[str, Image.Image]:
    """Preprocessed versions of `image` for OCR, most likely to suit a meme first.

    Meme captions are white letters with a dark outline over a busy photo. The first variant
    keeps only the near-white regions enclosed by dark pixels (the outlined letters), drawn black
    on white; the second keeps every near-white pixel; Otsu's threshold and the inverted grey
    image cover light-on-dark text without an outline; the plain grey image covers ordinary dark
    text. Small images are upscaled first.
    """
    grey = ImageOps.grayscale(image)
    scale = min(OCR_MAX_UPSCALE, OCR_MIN_SIDE / min(grey.size))
    if scale > 1:
        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)), Image.Resampling.LANCZOS)
    white_text = grey.point(lambda v: 0 if v >= OCR_WHITE else 255).filter(ImageFilter.MedianFilter(3))
    return {
        "outlined white text (meme)": _outlined_white_text(grey),
        "white text": white_text,
        "otsu threshold": _otsu_binarise(grey),
        "inverted grey": ImageOps.autocontrast(ImageOps.invert(grey)),
        "grey": ImageOps.autocontrast(grey),
    }


def _outlined_white_text(grey: Image.Image) -> Image.Image:
    """Near-white connected regions whose surroundings are mostly dark (a letter's fill inside its
    outline), black on a white page; bright background regions are dropped."""
    from scipy import ndimage  # only OCR needs it

    pixels = np.asarray(grey)
    bright, dark = pixels >= OCR_WHITE, pixels <= OCR_DARK
    labels, count = ndimage.label(bright)
    # A band a few pixels wide around each region: the anti-aliased edge plus the outline.
    grown = ndimage.grey_dilation(labels, size=(7, 7))
    band = (grown > 0) & ~bright
    band_labels = grown[band]
    band_size = np.bincount(band_labels, minlength=count + 1).astype(np.float64)
    band_dark = np.bincount(band_labels, weights=dark[band].astype(np.float64), minlength=count + 1)
    dark_fraction = np.divide(band_dark, band_size, out=np.zeros(count + 1), where=band_size > 0)
    region_size = np.bincount(labels.ravel(), minlength=count + 1)
    keep = (dark_fraction >= 0.5) & (region_size >= 10)
    keep[0] = False  # label 0 is "not bright"
    return Image.fromarray(np.where(keep[labels], 0, 255).astype(np.uint8), "L")


def _otsu_binarise(grey: Image.Image) -> Image.Image:
    """Otsu's global threshold, with the minority side (the text, usually) drawn black."""
    pixels = np.asarray(grey, dtype=np.uint8)
    hist = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    total, levels = hist.sum(), np.arange(256)
    weight_low = np.cumsum(hist)
    mean_low = np.cumsum(hist * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_low[-1] * weight_low / total - mean_low) ** 2 / (weight_low * weight_high)
    threshold = int(np.nanargmax(between))
    bright = pixels > threshold
    text_is_bright = bright.mean() < 0.5
    binary = np.where(bright == text_is_bright, 0, 255).astype(np.uint8)
    return Image.fromarray(binary, "L")


def _ocr_words(image: Image.Image, timeout: float) -> tuple[str, float, float]:
    """(text with line breaks, mean confidence, score) of one tesseract run."""
    import pytesseract

    # Page segmentation 3 (automatic) finds caption blocks and, unlike sparse-text mode, reads
    # little from photo texture.
    data = pytesseract.image_to_data(image, config="--psm 3", output_type=pytesseract.Output.DICT,
                                     timeout=timeout)
    lines: dict[tuple[int, int, int], list[str]] = {}
    confidences = []
    score = 0.0
    for word, conf, block, par, line in zip(data["text"], data["conf"], data["block_num"], data["par_num"],
                                            data["line_num"]):
        word, conf = str(word).strip().strip(OCR_EDGE_JUNK), float(conf)
        if not word or conf < 0:
            continue
        alnum = sum(ch.isalnum() for ch in word)
        # Specks and outline fragments come out as punctuation or lone characters.
        if conf < OCR_MIN_WORD_CONFIDENCE or alnum == 0 or (alnum == 1 and word.lower() not in ("a", "i")):
            continue
        lines.setdefault((block, par, line), []).append(word)
        confidences.append(conf)
        score += conf / 100.0 * alnum
    text = "\n".join(" ".join(words) for _, words in sorted(lines.items()))
    return text, (float(np.mean(confidences)) if confidences else 0.0), score


def ocr_meme_text(image: Image.Image, timeout: float = OCR_TIMEOUT_S) -> OCRResult:
    """Read the text in an image with tesseract, trying meme-style preprocessing variants.

    Each variant is scored by its confident alphanumeric characters; the best one wins. The search
    stops early once a variant is read with high confidence or after OCR_BUDGET_S seconds. Raises RuntimeError when
    tesseract is not installed (check `tesseract_available()` first).
    """
    if not tesseract_available():
        raise RuntimeError("tesseract is not installed: apt-get install tesseract-ocr (and pip install pytesseract)")
    best: tuple[float, str, str, float] = (-1.0, "", "", 0.0)
    tried: dict[str, tuple[str, float]] = {}
    started = time.monotonic()
    for name, variant in meme_ocr_variants(image).items():
        if tried and time.monotonic() - started > OCR_BUDGET_S:
            break
        text, confidence, score = _ocr_words(variant, timeout)
        tried[name] = (text, confidence)
        if score > best[0]:
            best = (score, name, text, confidence)
        if confidence >= OCR_GOOD_ENOUGH and len(text.split()) >= 2:
            break
    _, variant_name, text, confidence = best
    return OCRResult(text=_tidy_ocr_text(text), variant=variant_name, confidence=confidence, tried=tried)


def _tidy_ocr_text(text: str) -> str:
    """Meme captions are upper case; models trained on tweets read lower case better."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    tidy = "\n".join(line for line in lines if line)
    letters = [ch for ch in tidy if ch.isalpha()]
    if letters and sum(ch.isupper() for ch in letters) / len(letters) > 0.8:
        tidy = tidy.lower()
    return tidy


# ----------------------------------------------------------------------------- reference numbers

# clara-reference.md §4: the published CLARA results, in percent, on CLARA's own protocol
# (MVSA: agreement subset, 70/15/15 split; HFM: official splits, hashtag labels for val/test).
PUBLISHED_CLARA: dict[str, dict[str, Any]] = {
    "mvsa_single": {"accuracy": 83.16, "f1_weighted": 83.04, "f1_macro": 79.88,
                    "per_class_f1": {"positive": 88.84, "neutral": 70.77, "negative": 79.83},
                    "protocol": "clara (agreement subset, 70/15/15)"},
    "mvsa_multiple": {"accuracy": 73.51, "f1_weighted": 73.45, "f1_macro": 67.92,
                      "per_class_f1": {"positive": 81.24, "neutral": 75.09, "negative": 47.43},
                      "protocol": "clara (agreement subset, 70/15/15)"},
    "hfm": {"accuracy": 88.13, "f1_weighted": 88.13, "f1_macro": 87.82,
            "per_class_f1": {"not_sarcastic": 88.33, "sarcastic": 87.92},
            "protocol": "official splits, hashtag labels (the notebooks' choice)"},
}
PUBLISHED_ABLATIONS = {  # MVSA-Single, accuracy / weighted F1
    "full": (83.16, 83.04), "no_verification": (82.91, 82.72), "no_feedback": (82.91, 82.72),
    "no_coattention": (75.77, 75.55), "text_only": (76.79, 76.47), "image_only": (27.81, 24.70),
}
# Other methods on the standard protocol (Xu et al. 2017 / CLMLF splits): accuracy, F1.
STANDARD_PROTOCOL_RESULTS = {
    "MultiSentiNet (2017)": {"mvsa_single": (69.84, 69.63), "mvsa_multiple": (68.86, 68.11)},
    "CLMLF (NAACL-F 2022)": {"mvsa_single": (75.33, 73.46), "mvsa_multiple": (72.00, 69.83), "hfm": (85.43, 84.87)},
    "MVCN (ACL 2023)": {"mvsa_single": (76.06, 74.55), "mvsa_multiple": (72.07, 70.01), "hfm": (85.68, 85.23)},
    "MSFN (TOMM 2025)": {"mvsa_single": (78.98, 78.48), "mvsa_multiple": (74.75, 72.62)},
    "SPP-SCL (AAAI 2026)": {"mvsa_single": (81.33, 80.15), "mvsa_multiple": (78.71, 77.53), "hfm": (94.69, 94.50)},
}


def reference_rows(datasets: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The published CLARA numbers (percent) as table rows, one per dataset."""
    rows = []
    for dataset, ref in PUBLISHED_CLARA.items():
        if datasets is not None and dataset not in datasets:
            continue
        rows.append({"run": "CLARA (published)", "dataset": dataset, "protocol": ref["protocol"],
                     **{m: ref[m] for m in HEADLINE_METRICS},
                     **{f"f1 {label}": value for label, value in ref["per_class_f1"].items()}})
    return rows


def standard_protocol_rows() -> list[dict[str, Any]]:
    """Other methods' published accuracy / F1 on the standard protocol (never CLARA's protocol)."""
    rows = []
    for method, per_dataset in STANDARD_PROTOCOL_RESULTS.items():
        row: dict[str, Any] = {"method": method}
        for dataset in PUBLISHED_CLARA:
            acc_f1 = per_dataset.get(dataset)
            row[f"{dataset} accuracy"] = acc_f1[0] if acc_f1 else None
            row[f"{dataset} F1"] = acc_f1[1] if acc_f1 else None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- results (metrics)

@dataclass
class RunResults:
    """One evaluation run's results folder: metrics.json (+ history, plots, predictions.csv)."""
    name: str
    results_dir: Path
    metrics: dict[str, Any]
    checkpoint: Path | None = None

    @property
    def dataset(self) -> str | None:
        return self.metrics.get("dataset")

    @property
    def labels(self) -> list[str]:
        return list(self.metrics.get("labels") or LABELS.get(self.dataset or "", []))

    @property
    def history(self) -> list[dict[str, Any]]:
        history = self.metrics.get("history")
        return history if isinstance(history, list) else []

    @property
    def predictions_file(self) -> Path | None:
        path = self.results_dir / PREDICTIONS_FILE
        return path if path.is_file() else None

    def plots(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.results_dir.glob("*.png"))}


def find_results(results_roots: Sequence[str | Path], checkpoints: Sequence[CheckpointEntry] = ()
                 ) -> list[RunResults]:
    """Every results folder with a metrics.json: `<checkpoint>/results/` of each checkpoint, then
    `<root>/<run>/` under each results root (the training script's `results/`)."""
    runs: list[RunResults] = []
    seen: set[Path] = set()

    def add(results_dir: Path, name: str, checkpoint: Path | None) -> None:
        key = results_dir.resolve()
        metrics = _read_json(results_dir / METRICS_FILE)
        if key in seen or not isinstance(metrics, dict):
            return
        seen.add(key)
        runs.append(RunResults(name=name, results_dir=results_dir, metrics=metrics,
                               checkpoint=checkpoint or named_checkpoint(metrics, results_dir)))

    for entry in checkpoints:
        add(entry.path / "results", entry.name, entry.path)
    for root in results_roots:
        for metrics_file in _metrics_files(Path(root)):
            add(metrics_file.parent, f"results/{metrics_file.parent.name}", None)
    return runs


def per_class_rows(runs: Sequence[RunResults], include_reference: bool = True) -> list[dict[str, Any]]:
    """Long-format rows (run, dataset, class, precision, recall, f1, support) in percent, plus the
    published CLARA per-class F1 of each dataset shown as run "CLARA (published)"."""
    rows = []
    for run in runs:
        per_class = run.metrics.get("per_class") or {}
        for label in run.labels:
            values = per_class.get(label) or {}
            rows.append({"run": run.name, "dataset": run.dataset, "class": label,
                         **{k: _percent(values.get(k)) for k in ("precision", "recall", "f1")},
                         "support": values.get("support")})
    if include_reference:
        for dataset in sorted({run.dataset for run in runs if run.dataset in PUBLISHED_CLARA}):
            for label, f1 in PUBLISHED_CLARA[dataset]["per_class_f1"].items():
                rows.append({"run": "CLARA (published)", "dataset": dataset, "class": label,
                             "precision": None, "recall": None, "f1": f1, "support": None})
    return rows


def summary_rows(runs: Sequence[RunResults], include_reference: bool = True) -> list[dict[str, Any]]:
    """One row per run with its headline test metrics in percent, then the reference rows."""
    rows = [{"run": run.name, "dataset": run.dataset, "protocol": run.metrics.get("protocol"),
             **{m: _percent(run.metrics.get(m)) for m in HEADLINE_METRICS},
             "best epoch": run.metrics.get("best_epoch")} for run in runs]
    if include_reference:
        datasets = {run.dataset for run in runs}
        rows += [{k: v for k, v in row.items() if not k.startswith("f1 ")} for row in reference_rows(datasets)]
    return rows


def _percent(value: Any) -> float | None:
    return round(100.0 * float(value), 2) if isinstance(value, (int, float)) and math.isfinite(value) else None


def confusion_matrix(run: RunResults) -> tuple[list[str], list[list[int]]] | None:
    """(labels, rows = true class, columns = predicted class) or None when the run has none."""
    matrix = run.metrics.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    return run.labels, [[int(v) for v in row] for row in matrix]


def ablation_rows(runs: Sequence[RunResults]) -> list[dict[str, Any]]:
    """Inference-time ablations per run (percent), with the published MVSA-Single numbers."""
    rows = []
    for run in runs:
        ablations = run.metrics.get("ablations")
        if not isinstance(ablations, dict):
            continue
        rows.append({"run": run.name, "dataset": run.dataset, "variant": "full",
                     **{m: _percent(run.metrics.get(m)) for m in HEADLINE_METRICS}})
        for variant, values in ablations.items():
            if isinstance(values, dict):
                rows.append({"run": run.name, "dataset": run.dataset, "variant": variant,
                             **{m: _percent(values.get(m)) for m in HEADLINE_METRICS}})
    if any(run.dataset == "mvsa_single" for run in runs):
        for variant, (acc, f1w) in PUBLISHED_ABLATIONS.items():
            rows.append({"run": "CLARA (published)", "dataset": "mvsa_single", "variant": variant,
                         "accuracy": acc, "f1_weighted": f1w, "f1_macro": None})
    return rows


def calibration_rows(runs: Sequence[RunResults]) -> list[dict[str, Any]]:
    """Post-hoc calibration variants per run (fitted on val, scored on test), metrics in percent."""
    rows = []
    for run in runs:
        report = run.metrics.get("calibration")
        if not isinstance(report, dict):
            continue
        for variant, values in report.items():
            if not isinstance(values, dict):
                continue
            row: dict[str, Any] = {"run": run.name, "dataset": run.dataset, "variant": variant,
                                   **{m: _percent(values.get(m)) for m in HEADLINE_METRICS}}
            for metric, value in (values.get("val") or {}).items():
                row[f"val {metric}"] = _percent(value)
            params = values.get("params") or {}
            row["params"] = ", ".join(f"{k}={_short(v)}" for k, v in params.items()) if params else ""
            rows.append(row)
    return rows


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def history_rows(run: RunResults) -> list[dict[str, Any]]:
    """Per-epoch numeric values of the training history (loss, val metrics, lr)."""
    return [{k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for entry in run.history if isinstance(entry, dict)]


# ----------------------------------------------------------------------------- predictions (errors page)

@dataclass
class PredictionRecord:
    id: str
    text: str
    image_path: str
    label: str
    predicted: str
    probabilities: dict[str, float]

    @property
    def correct(self) -> bool:
        return self.label == self.predicted


def load_predictions(run: RunResults) -> list[PredictionRecord]:
    """The rows of a run's predictions.csv (id, text, image_path, label, predicted, probabilities)."""
    path = run.predictions_file
    if path is None:
        return []
    records = []
    with path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            records.append(PredictionRecord(
                id=str(row.get("id", "")), text=row.get("text", ""), image_path=row.get("image_path", ""),
                label=row.get("label", ""), predicted=row.get("predicted", ""),
                probabilities=_parse_probabilities(row, run.labels)))
    return records


def _parse_probabilities(row: Mapping[str, str], labels: Sequence[str]) -> dict[str, float]:
    """Probabilities stored as one JSON object column, or as one `prob_<label>` column per class."""
    raw = row.get("probabilities")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {str(k): float(v) for k, v in parsed.items()}
        if isinstance(parsed, list) and len(parsed) == len(labels):
            return {label: float(v) for label, v in zip(labels, parsed)}
    found = {}
    for label in labels:
        for key in (f"prob_{label}", f"p_{label}", label):
            if row.get(key) not in (None, ""):
                found[label] = float(row[key])
                break
    return found


def misclassified(records: Sequence[PredictionRecord], true_label: str | None = None,
                  predicted_label: str | None = None) -> list[PredictionRecord]:
    """Wrong predictions, optionally only those of one true and/or one predicted class."""
    return [r for r in records if not r.correct
            and (true_label is None or r.label == true_label)
            and (predicted_label is None or r.predicted == predicted_label)]


def error_counts(records: Sequence[PredictionRecord]) -> list[dict[str, Any]]:
    """(true, predicted, count) of every kind of mistake, most frequent first."""
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        if not r.correct:
            counts[(r.label, r.predicted)] = counts.get((r.label, r.predicted), 0) + 1
    return [{"true": t, "predicted": p, "count": n} for (t, p), n in sorted(counts.items(), key=lambda kv: -kv[1])]


def resolve_image_path(run: RunResults, image_path: str) -> Path | None:
    """The image of a prediction row: a relative path is taken relative to the results folder."""
    if not image_path:
        return None
    path = Path(image_path)
    if not path.is_absolute():
        path = run.results_dir / path
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- batch

MAX_BATCH_ROWS = 500
MAX_ZIP_MEMBER_BYTES = MAX_IMAGE_UPLOAD_BYTES
MAX_ZIP_TOTAL_BYTES = 500 * 1024 * 1024
IMAGE_COLUMNS = ("image", "image_path", "path", "file")
TEXT_COLUMNS = ("text", "tweet", "caption")


@dataclass
class BatchItem:
    row: int  # 1-based data row number in the CSV (the header is row 0)
    image_ref: str
    text: str
    image: Image.Image | None = None
    error: str | None = None


def read_batch(csv_data: bytes, zip_data: bytes | None = None, images_dir: str | Path | None = None,
               max_rows: int = MAX_BATCH_ROWS) -> list[BatchItem]:
    """Rows of a batch CSV with their images checked; a row that cannot be used carries `error`.

    The CSV needs a header with an image column (image, image_path, path or file) and a text
    column (text, tweet or caption). Images are looked up in the uploaded ZIP (by member path,
    then by file name), read in memory and never extracted; without a ZIP, or for names it does
    not hold, relative to `images_dir` when given (a folder on the machine running the app).
    """
    if not csv_data:
        raise AppInputError("The CSV file is empty.")
    try:
        text = csv_data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AppInputError(f"The CSV file is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV.") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    image_col = next((reader.fieldnames[header.index(c)] for c in IMAGE_COLUMNS if c in header), None)
    text_col = next((reader.fieldnames[header.index(c)] for c in TEXT_COLUMNS if c in header), None)
    if image_col is None or text_col is None:
        raise AppInputError(f"The CSV needs a header with an image column ({' / '.join(IMAGE_COLUMNS)}) and a "
                            f"text column ({' / '.join(TEXT_COLUMNS)}); found: {', '.join(header) or 'no header'}.")
    archive = _open_zip(zip_data) if zip_data else None
    items: list[BatchItem] = []
    for number, row in enumerate(reader, start=1):
        if number > max_rows:
            raise AppInputError(f"The CSV has more than {max_rows} rows; split it into smaller files.")
        item = BatchItem(row=number, image_ref=(row.get(image_col) or "").strip(), text=(row.get(text_col) or ""))
        try:
            item.text = check_text(item.text)
            item.image = check_image_upload(_batch_image_bytes(item.image_ref, archive, images_dir)).image
        except AppInputError as exc:
            item.error = str(exc)
        items.append(item)
    if not items:
        raise AppInputError("The CSV has a header but no rows.")
    return items


def _open_zip(zip_data: bytes) -> dict[str, zipfile.ZipInfo | zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_data))
    except zipfile.BadZipFile:
        raise AppInputError("The uploaded archive is not a valid ZIP file.") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if sum(m.file_size for m in members) > MAX_ZIP_TOTAL_BYTES:
        raise AppInputError(f"The ZIP unpacks to more than {MAX_ZIP_TOTAL_BYTES // 2**20} MB; send fewer images.")
    index: dict[str, Any] = {"": archive}
    for member in members:
        key = _zip_key(member.filename)
        index.setdefault("path:" + key, member)
        index.setdefault("name:" + key.rsplit("/", 1)[-1], []).append(member)
    return index


def _zip_key(name: str) -> str:
    """A ZIP member name or CSV reference as a lookup key: "/", "." and ".." parts dropped. Only ever a
    dictionary key: members are read in memory, never extracted, so no name can reach the file system."""
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", ".", ".."))


def _batch_image_bytes(ref: str, archive: dict[str, Any] | None, images_dir: str | Path | None) -> bytes:
    if not ref:
        raise AppInputError("No image given in this row.")
    if archive is not None:
        key = _zip_key(ref)
        member = archive.get("path:" + key)
        if member is None:  # by file name alone, only when exactly one member has it (never a guess)
            same_name = archive.get("name:" + key.rsplit("/", 1)[-1], [])
            if len(same_name) > 1:
                raise AppInputError(f"{ref!r} matches {len(same_name)} files in the ZIP "
                                    f"({', '.join(m.filename for m in same_name[:3])}); give its path inside the ZIP.")
            member = same_name[0] if same_name else None
        if member is not None:
            if member.file_size > MAX_ZIP_MEMBER_BYTES:
                raise AppInputError(f"{member.filename} in the ZIP is over {MAX_ZIP_MEMBER_BYTES // 2**20} MB.")
            try:
                return archive[""].read(member)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # CRC error, encrypted member
                raise AppInputError(f"{member.filename} cannot be read from the ZIP ({exc}).") from None
    if images_dir is None:
        raise AppInputError(f"{ref!r} is not in the uploaded ZIP." if archive is not None
                            else "Upload a ZIP with the images, or give an images folder.")
    folder = Path(images_dir).expanduser().resolve()
    path = (folder / ref).resolve()
    if not path.is_relative_to(folder):  # "../x.jpg" or "/etc/x": only files inside the folder
        raise AppInputError(f"{ref!r} points outside the images folder {folder}.")
    if not path.is_file():
        raise AppInputError(f"{ref!r} is not in the ZIP and {path} is not a file.")
    if path.stat().st_size > MAX_IMAGE_UPLOAD_BYTES:
        raise AppInputError(f"{path} is over {MAX_IMAGE_UPLOAD_MB} MB.")
    return path.read_bytes()


def predict_batch(predictor: Any, items: Sequence[BatchItem], batch_size: int = 16) -> list[dict[str, Any]]:
    """Predict every usable row; rows with an error keep it. Returns one result row per item."""
    usable = [item for item in items if item.error is None]
    predictions = predictor.predict([i.image for i in usable], [i.text for i in usable],
                                    batch_size=batch_size) if usable else []
    by_row = {item.row: p for item, p in zip(usable, predictions)}
    labels = list(predictor.labels)
    rows = []
    for item in items:
        row: dict[str, Any] = {"row": item.row, "image": item.image_ref, "text": item.text}
        prediction = by_row.get(item.row)
        if prediction is None:
            row.update({"label": None, **{f"p_{label}": None for label in labels}, "uncertainty": None,
                        "error": item.error})
        else:
            probs = prob_dict(prediction.probs, labels)
            row.update({"label": prediction.label, **{f"p_{label}": round(probs[label], 6) for label in labels},
                        "uncertainty": round(float(prediction.uncertainty), 6), "error": None})
        rows.append(row)
    return rows


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """UTF-8 CSV of result rows (for the download button)."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return out.getvalue().encode("utf-8")


# ----------------------------------------------------------------------------- prediction display

def prob_dict(value: Any, labels: Sequence[str]) -> dict[str, float]:
    """Probabilities as {label: p} from a dict, a sequence, a numpy array or a tensor."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        value = value.tolist()
    values = list(value)
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = list(values[0])
    return {label: float(v) for label, v in zip(labels, values)}


VIEWS = (("final", "probs", "the label CLARA gives (after the feedback step)"),
         ("prediction head", "pred_probs", "the prediction head before the feedback step"),
         ("verification head", "verify_probs", "the second head, trained to agree with the first"),
         ("text only", "text_only_probs", "the model with the image removed"),
         ("image only", "image_only_probs", "the model with the text removed"))


def prediction_views(prediction: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """What each head and each single modality says: one row per view with its probabilities."""
    rows = []
    for name, attribute, meaning in VIEWS:
        probs = prob_dict(getattr(prediction, attribute, None), labels)
        if not probs:
            continue
        says = max(probs, key=probs.get)
        rows.append({"view": name, "says": says, "agrees with final": None, **probs, "meaning": meaning})
    final = rows[0]["says"] if rows else None
    for row in rows:
        row["agrees with final"] = row["says"] == final
    return rows


def agreement_summary(views: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain-language notes on which views agree with the final label."""
    by_name = {v["view"]: v for v in views}
    final = by_name.get("final", {}).get("says")
    notes = []
    verify = by_name.get("verification head")
    if verify:
        notes.append(f"The verification head {'agrees' if verify['says'] == final else 'disagrees'} "
                     f"(it says {verify['says']}).")
    text_only, image_only = by_name.get("text only"), by_name.get("image only")
    if text_only and image_only:
        if text_only["says"] == image_only["says"] == final:
            notes.append(f"Text alone and image alone both say {final}: either modality suffices here.")
        elif text_only["says"] != final and image_only["says"] != final:
            notes.append(f"Neither modality alone gives {final} (text only: {text_only['says']}, image only: "
                         f"{image_only['says']}): the decision needs both.")
        else:
            leader = "text" if text_only["says"] == final else "image"
            notes.append(f"Only the {leader} alone gives {final} (text only: {text_only['says']}, image only: "
                         f"{image_only['says']}).")
    return notes


def highlight_words_html(words: Sequence[str], scores: Sequence[float] | np.ndarray) -> str:
    """Words as HTML spans shaded by score: green for evidence for the class, red against.

    Every word is HTML-escaped, so any text is safe to render.
    """
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64).reshape(-1))
    peak = float(np.abs(values).max()) if values.size else 0.0
    spans = []
    for word, score in zip(words, values):
        strength = abs(score) / peak if peak > 0 else 0.0
        colour = "0, 160, 60" if score >= 0 else "220, 40, 40"
        spans.append(f'<span title="{score:+.4f}" style="background: rgba({colour}, {0.75 * strength:.2f}); '
                     f'padding: 1px 3px; margin: 1px; border-radius: 3px; line-height: 1.9;">'
                     f"{html.escape(word)}</span>")
    return " ".join(spans)


# ----------------------------------------------------------------------------- examples gallery

EXAMPLES_FILE = "examples.json"


@dataclass
class Example:
    name: str
    image_path: Path
    text: str  # the post text
    note: str = ""  # what the example shows (e.g. its true label)
    label: str | None = None


def load_examples(examples_dir: str | Path) -> list[Example]:
    """The bundled gallery: `examples.json` lists {name, image, text, note, label} entries."""
    examples_dir = Path(examples_dir)
    listing = _read_json(examples_dir / EXAMPLES_FILE)
    if not isinstance(listing, list):
        return []
    examples = []
    for entry in listing:
        if not isinstance(entry, dict) or "image" not in entry:
            continue
        path = examples_dir / Path(str(entry["image"])).name  # never outside the examples folder
        if path.is_file():
            examples.append(Example(name=str(entry.get("name", path.stem)), image_path=path,
                                    text=str(entry.get("text", "")), note=str(entry.get("note", "")),
                                    label=entry.get("label")))
    return examples


def safe_display_name(name: str | None, limit: int = 60) -> str:
    """An uploaded file's name reduced to harmless characters, only ever for display."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", os.path.basename(name or "upload"))[:limit]
    return cleaned or "upload"
