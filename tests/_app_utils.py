"""Files the app tests upload: good images in each accepted format and the bad uploads the app must
refuse with a message (a text file named .png, a truncated JPEG, a 20000x20000 image, an empty file);
and the folders the app tests point the app at (copies of the bundled demos, never a user's runs)."""
from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from clara.catalog import DEMO_FOLDERS
from clara_app.state import CHECKPOINTS_ENV, RESULTS_ENV

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "checkpoints" / "demo"
EXAMPLES_DIR = ROOT / "examples"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30),
                **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def animated_gif_bytes(colours: list[tuple[int, int, int]], size: tuple[int, int] = (32, 32)) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def truncated_jpeg_bytes() -> bytes:
    """A real photo-like JPEG cut in half: the header is fine, the pixel data ends early."""
    noisy = Image.effect_noise((256, 256), 60).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def text_renamed_png_bytes() -> bytes:
    return b"id,text\n1,this is a CSV file renamed to picture.png\n"


def huge_png_bytes(side: int = 20000) -> bytes:
    """A valid grey PNG of side x side black pixels (400 megapixels when decoded, ~0.4 MB on disk).

    The decompressed image data is all zero bytes (filter byte 0 + black pixels on every row), so
    one deflate segment of zeros, ended by a full flush (which resets the compressor's history),
    is repeated instead of compressing 400 MB.
    """
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    total = side * (side + 1)
    repeats = 100
    while total % repeats:
        repeats -= 1
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate
    segment = compressor.compress(b"\x00" * (total // repeats)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_empty_block = b"\x03\x00"  # BFINAL=1, fixed Huffman, end-of-block
    adler = (total % 65521) << 16 | 1  # Adler-32 of `total` zero bytes
    idat = b"\x78\xda" + segment * repeats + final_empty_block + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_UPLOADS = {
    "text renamed .png": ("notes.png", text_renamed_png_bytes, "not a PNG, JPEG, WebP or GIF image"),
    "truncated JPEG": ("photo.jpg", truncated_jpeg_bytes, "damaged or incomplete"),
    "20000x20000 PNG": ("huge.png", huge_png_bytes, "too large"),
    "empty file": ("empty.png", lambda: b"", "empty (0 bytes)"),
}


def require_demo() -> None:
    if not (DEMO_CHECKPOINT / "config.json").is_file():
        pytest.fail("checkpoints/demo/ is missing: run python scripts/make_demo_checkpoint.py")


def require_or_skip(available: bool, what: str) -> None:
    """Skip when a system tool is missing locally; in CI (CI=true) it must be there."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


def tool_exists(name: str) -> bool:
    return shutil.which(name) is not None


@dataclass(frozen=True)
class AppFolders:
    """The checkpoints and results folders the app tests point the app at."""
    checkpoints: Path
    results: Path

    @property
    def demo(self) -> Path:
        return self.checkpoints / DEMO_FOLDERS["mvsa_single"]


def bundled_app_folders(root: Path) -> AppFolders:
    """Copies of the bundled demo checkpoints (catalog.DEMO_FOLDERS) and an empty results folder
    under `root`: never the working tree's checkpoints/ and results/, where a user's own runs land."""
    require_demo()
    folders = AppFolders(root / "checkpoints", root / "results")
    for name in DEMO_FOLDERS.values():
        if (ROOT / "checkpoints" / name / "config.json").is_file():
            shutil.copytree(ROOT / "checkpoints" / name, folders.checkpoints / name)
    folders.results.mkdir(parents=True)
    return folders


def point_app_at(folders: AppFolders, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the app (clara_app.state) read only `folders` for this test."""
    monkeypatch.setenv(CHECKPOINTS_ENV, str(folders.checkpoints))
    monkeypatch.setenv(RESULTS_ENV, str(folders.results))


@pytest.fixture(scope="session")
def app_folders(tmp_path_factory: pytest.TempPathFactory) -> AppFolders:
    """One copy of the bundled demos for the whole test session (import this fixture to use it)."""
    return bundled_app_folders(tmp_path_factory.mktemp("app_folders"))
