"""clara.ocr: meme captions (white letters, black outline, busy picture) read by rapidocr (the engine
requirements.txt installs) and by tesseract (when installed), and the Predict page's OCR pre-fill."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from clara import ocr
from _app_utils import app_folders, point_app_at, require_or_skip  # noqa: F401 (a fixture)


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
    require_or_skip(ocr.tesseract_available(), "tesseract")
    result = ocr.ocr_meme_text(meme("WHEN THE BUS", "IS LATE AGAIN"))
    assert result.text.split() == ["when", "the", "bus", "is", "late", "again"], result.tried
    assert result.variant == "outlined white text (meme)"
    assert result.confidence > 60


def test_ocr_variants_turn_white_letters_black():
    variants = ocr.meme_ocr_variants(meme("HELLO", "WORLD"))
    assert list(variants) == ["outlined white text (meme)", "white text", "otsu threshold", "inverted grey", "grey"]
    white = variants["outlined white text (meme)"]
    assert min(white.size) == ocr.OCR_MIN_SIDE  # small images are upscaled
    pixels = np.asarray(white)
    assert set(np.unique(pixels)) <= {0, 255}
    # the letters (white in the meme) are a minority of black pixels on a white page
    black_fraction = float((pixels == 0).mean())
    assert 0.005 < black_fraction < 0.2


# ----------------------------------------------------------------------------- rapidocr (requirements.txt)

def bundled_meme() -> tuple[Image.Image, list[str]]:
    """The gallery's meme and the words its caption must give: the cue word of its note, or all of
    its `image_text` when examples.json records it."""
    import json
    from _app_utils import EXAMPLES_DIR

    entry = next(e for e in json.loads((EXAMPLES_DIR / "examples.json").read_text()) if e["name"].startswith("meme_"))
    expected = entry.get("image_text", "").lower().split() or [entry["note"].split("'")[1]]
    return Image.open(EXAMPLES_DIR / entry["image"]).convert("RGB"), expected


def test_rapidocr_reads_the_bundled_meme_offline(monkeypatch):
    """The engine requirements.txt installs reads the meme with the models inside its wheel: no network."""
    import socket

    assert ocr.rapidocr_available(), "rapidocr + onnxruntime are in requirements.txt: pip install -r requirements.txt"

    def no_network(*args, **kwargs):
        raise AssertionError(f"OCR tried to reach the network: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    image, expected = bundled_meme()
    result = ocr.read_image_text(image, engine=ocr.RAPIDOCR)
    assert result.engine == ocr.RAPIDOCR
    assert set(expected) <= set(result.text.split()), result.text
    assert result.text == result.text.lower()  # an upper-case caption is lower-cased for the model
    assert result.confidence > 80


def test_the_preferred_engine_is_used_and_a_missing_one_is_named(monkeypatch):
    monkeypatch.setattr(ocr, "rapidocr_available", lambda: False)
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)
    assert ocr.available_ocr_engines() == []
    try:
        ocr.read_image_text(Image.new("RGB", (32, 32)))
    except ocr.OCRUnavailableError as exc:
        assert "pip install rapidocr onnxruntime" in str(exc)
    else:
        raise AssertionError("no engine installed, yet no OCRUnavailableError")
    monkeypatch.setattr(ocr, "tesseract_available", lambda: True)
    assert ocr.available_ocr_engines() == [ocr.TESSERACT]
    monkeypatch.setattr(ocr, "rapidocr_available", lambda: True)
    assert ocr.available_ocr_engines() == [ocr.RAPIDOCR, ocr.TESSERACT]


def test_predict_page_prefills_the_meme_text_with_only_the_requirements(app_folders, monkeypatch):
    """The Predict page with rapidocr alone (no tesseract): the toggle is on and OCR fills the image text;
    with no engine at all the toggle is off and disabled and the caption says why."""
    from _app_utils import ROOT

    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    assert ocr.rapidocr_available(), "rapidocr + onnxruntime are in requirements.txt: pip install -r requirements.txt"
    point_app_at(app_folders, monkeypatch)
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)
    _, expected = bundled_meme()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at = at.switch_page("pages/predict.py").run()
    meme_index = next(i for i, b in enumerate(at.button) if b.key and b.key.startswith("example_")
                      and "meme" in (b.help or ""))
    assert at.toggle(key="ocr_enabled").value is True
    at = at.button[meme_index].click().run()
    assert not at.exception
    assert set(expected) <= set(at.text_area(key="image_text").value.split())
    assert any("OCR read" in c.value and "rapidocr" in c.value for c in at.caption)

    monkeypatch.setattr(ocr, "rapidocr_available", lambda: False)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at = at.switch_page("pages/predict.py").run()
    toggle = at.toggle(key="ocr_enabled")
    assert toggle.value is False and toggle.proto.disabled
    assert any("OCR is off" in c.value for c in at.caption)
