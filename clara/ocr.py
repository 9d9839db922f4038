"""Reading the text in a meme image. Two engines, in order of preference:

- rapidocr (PP-OCR models on onnxruntime; the models ship inside the pip wheel, so it works
  offline right after `pip install -r requirements.txt`);
- tesseract (the system binary plus pytesseract), with preprocessing variants suited to white
  outlined captions over a photo, each read and scored, the best kept.

`read_image_text(image)` uses the first engine installed; `available_ocr_engines()` says which are.
"""
from __future__ import annotations

import functools
import importlib.util
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

OCR_MIN_SIDE = 600  # tesseract reads letters best at ~30 px; meme images are often small...
OCR_MAX_UPSCALE = 3.0  # ...but blowing up a thumbnail only feeds it noise
OCR_WHITE, OCR_DARK = 200, 100  # grey levels of a meme's letter fill and of its outline
OCR_MIN_WORD_CONFIDENCE = 60.0  # below this, tesseract's "words" on a photo are mostly texture
OCR_GOOD_ENOUGH = 80.0  # mean word confidence at which the remaining variants are not tried
OCR_TIMEOUT_S = 15  # per tesseract run
OCR_EDGE_JUNK = "‘’“”\"'`|_~"  # outline fragments read as quotes or bars at a word's edges
OCR_BUDGET_S = 6.0  # no further variant is started after this much time
RAPIDOCR, TESSERACT = "rapidocr", "tesseract"
OCR_ENGINES = (RAPIDOCR, TESSERACT)  # in order of preference
OCR_INSTALL_HINT = ("pip install rapidocr onnxruntime (both in requirements.txt), or install tesseract "
                    "(apt-get install tesseract-ocr, pip install pytesseract)")
RAPIDOCR_MIN_SCORE = 0.5  # rapidocr's own default: lines recognised with less confidence are dropped
_rapidocr_lock = threading.Lock()  # one recognition at a time in a shared server process


class OCRUnavailableError(RuntimeError):
    """No OCR engine is installed (the message says how to install one)."""


@dataclass
class OCRResult:
    text: str
    variant: str  # which preprocessing gave it
    confidence: float  # mean word (tesseract) or line (rapidocr) confidence, 0-100
    tried: dict[str, tuple[str, float]] = field(default_factory=dict)  # variant -> (text, confidence)
    engine: str = TESSERACT  # which engine read it (OCR_ENGINES)


@functools.cache
def rapidocr_available() -> bool:
    """True when rapidocr and onnxruntime import (their models are inside the rapidocr wheel)."""
    if importlib.util.find_spec("rapidocr") is None or importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        import onnxruntime  # noqa: F401  (a broken native install fails here, not at the first image)
        import rapidocr  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def tesseract_available() -> bool:
    """True when pytesseract is installed and the tesseract binary runs."""
    try:
        import pytesseract
        pytesseract.get_tesseract_version()
    except Exception:  # ImportError, TesseractNotFoundError, a broken install
        return False
    return True


def available_ocr_engines() -> list[str]:
    """The installed OCR engines, most preferred first."""
    checks = {RAPIDOCR: rapidocr_available, TESSERACT: tesseract_available}
    return [engine for engine in OCR_ENGINES if checks[engine]()]


def read_image_text(image: Image.Image, engine: str | None = None) -> OCRResult:
    """The text in `image`, read by `engine` (default: the first installed of OCR_ENGINES).

    Raises OCRUnavailableError when that engine (or, by default, every engine) is not installed.
    """
    installed = available_ocr_engines()
    if engine is not None and engine not in OCR_ENGINES:
        raise ValueError(f"unknown OCR engine {engine!r}; choose from: {', '.join(OCR_ENGINES)}")
    chosen = engine or (installed[0] if installed else None)
    if chosen is None or chosen not in installed:
        what = f"the OCR engine {chosen} is" if chosen else "no OCR engine is"
        raise OCRUnavailableError(f"{what} not installed: {OCR_INSTALL_HINT}")
    return rapidocr_text(image) if chosen == RAPIDOCR else ocr_meme_text(image)


@functools.cache
def _rapidocr_engine() -> Any:
    from rapidocr import RapidOCR

    # The default config reads the models shipped in the wheel; "warning" keeps its per-model INFO lines quiet.
    return RapidOCR(params={"Global.log_level": "warning", "Global.text_score": RAPIDOCR_MIN_SCORE})


def rapidocr_text(image: Image.Image) -> OCRResult:
    """Read the text in an image with rapidocr (PP-OCR detection + recognition); one line per text box,
    top to bottom. Raises OCRUnavailableError when rapidocr is not installed."""
    if not rapidocr_available():
        raise OCRUnavailableError(f"rapidocr is not installed: {OCR_INSTALL_HINT}")
    with _rapidocr_lock:
        output = _rapidocr_engine()(image.convert("RGB"))
    lines = [(str(text).strip(), float(score)) for text, score in zip(output.txts or (), output.scores or ())]
    lines = [(text, score) for text, score in lines if text and score >= RAPIDOCR_MIN_SCORE]
    text = "\n".join(text for text, _ in lines)
    confidence = 100.0 * float(np.mean([score for _, score in lines])) if lines else 0.0
    variant = "PP-OCR text detection + recognition"
    return OCRResult(text=_tidy_ocr_text(text), variant=variant, confidence=confidence,
                     tried={variant: (text, confidence)}, engine=RAPIDOCR)


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
    stops early once a variant is read with high confidence or after OCR_BUDGET_S seconds. Raises
    OCRUnavailableError (a RuntimeError) when tesseract is not installed.
    """
    if not tesseract_available():
        raise OCRUnavailableError("tesseract is not installed: apt-get install tesseract-ocr (and pip install "
                                  "pytesseract)")
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
