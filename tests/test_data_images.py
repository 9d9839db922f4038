"""open_image (formats, modes, EXIF, broken files, bombs) and the CLIP-style ImageTransform."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from _data_fixtures import BLUE, RED, image_bytes
from clara.data import MAX_IMAGE_PIXELS, ImageError, ImageTransform, open_image
from clara.data.images import (MAX_ASPECT_RATIO, MAX_IMAGE_SIDE, MIN_KEPT_SHORTER_SIDE, ImageFolderIndex,
                               verify_images)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no real pixel data): enough to trip size checks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def close(pixel, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


@pytest.mark.parametrize("kind", ["jpeg", "png", "gif", "cmyk", "grey16"])
def test_formats_and_modes_become_rgb(tmp_path, kind):
    path = tmp_path / "x.jpg"  # every kind under a .jpg name: the content decides
    path.write_bytes(image_bytes(kind))
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (8, 8)
    if kind in ("jpeg", "png", "gif", "cmyk"):
        assert close(image.getpixel((4, 4)), RED, tolerance=25)


@pytest.mark.parametrize("kind", ["rgba", "palette_transparent"])
def test_transparency_is_composited_on_white(kind):
    image = open_image(image_bytes(kind))
    assert image.mode == "RGB"
    assert image.getpixel((1, 4)) == (255, 255, 255)  # transparent left half
    assert image.getpixel((6, 4)) == RED


def test_exif_orientation_is_applied():
    image = open_image(image_bytes("exif_rotated"))
    assert image.size == (4, 8)  # stored 8x4 with orientation 6 (rotate 90 clockwise)
    assert close(image.getpixel((2, 1)), RED) and close(image.getpixel((2, 6)), BLUE)


def test_sources_bytes_fileobj_and_pil(tmp_path):
    data = image_bytes("png")
    assert open_image(io.BytesIO(data)).size == (8, 8)
    assert open_image(bytearray(data)).size == (8, 8)
    rgba = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("kind, problem", [
    ("truncated", "image file is truncated"),
    ("empty", "not an image file PIL can identify"),
    ("garbage", "not an image file PIL can identify"),
])
def test_broken_files_raise_image_error_naming_the_file(tmp_path, kind, problem):
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(image_bytes(kind))
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert str(info.value).startswith(f"cannot use image {path}: ")
    assert problem in info.value.problem
    assert info.value.source == str(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "none.jpg")
    with pytest.raises(ImageError, match="cannot read the file"):
        open_image(tmp_path)


def test_pixel_limits():
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 64_000_000
    with pytest.raises(ImageError, match="8x8 = 64 pixels is over the limit of 63"):
        open_image(image_bytes("png"), max_pixels=63)
    # Over twice PIL's limit: PIL's DecompressionBombError, turned into ImageError.
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(png_header_only(20_000, 20_000))
    # Between the limit and twice it: PIL only warns; open_image refuses it all the same.
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(png_header_only(9_000, 9_000))
    with pytest.raises(ImageError, match="2000x2000 = 4,000,000 pixels is over the limit of 1,000,000"):
        open_image(png_header_only(2_000, 2_000), max_pixels=1_000_000)


def test_verify_images_reports_per_path(tmp_path):
    paths = []
    for kind in ("jpeg", "truncated", "png", "empty"):
        paths.append(tmp_path / f"{kind}.jpg")
        paths[-1].write_bytes(image_bytes(kind))
    results = verify_images(paths, max_workers=2)
    assert [r is None for r in results] == [True, False, True, False]
    assert results[1].source == str(paths[1])


def test_image_folder_index_prefers_jpg_then_png(tmp_path):
    for name in ("1.png", "1.jpg", "2.PNG", "3.txt", "4.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    index = ImageFolderIndex(tmp_path)
    assert index.find("1").name == "1.jpg"
    assert index.find("2").name == "2.PNG"
    assert index.find("3") is None
    assert index.find("4").name == "4.jpeg"
    assert ImageFolderIndex(tmp_path / "missing").find("1") is None


def test_image_transform_resizes_crops_and_normalises():
    transform = ImageTransform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    wide = Image.new("RGB", (32, 16), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 4, 16))  # a blue strip the center crop removes
    out = transform(wide)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(8, 8), atol=1e-3)
    assert torch.allclose(out[1], -torch.ones(8, 8), atol=1e-3)
    clip = ImageTransform(224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    grey = clip(Image.new("L", (300, 500), 128))  # non-RGB input converted first
    assert grey.shape == (3, 224, 224)
    assert torch.allclose(grey[0, 0, 0], torch.tensor((128 / 255 - 0.48145466) / 0.26862954), atol=1e-3)
    assert "image_size=224" in repr(clip)
    with pytest.raises(ValueError, match="3 values"):
        ImageTransform(8, mean=(0.5,), std=(0.5,))


def test_side_and_aspect_limits_are_checked_from_the_header():
    """Header-only PNGs (no pixel data): the refusal comes before any decoding is tried."""
    assert (MAX_IMAGE_SIDE, MAX_ASPECT_RATIO) == (12_000, 20)
    with pytest.raises(ImageError, match="1x400000: its longer side is over the limit of 12,000 pixels"):
        open_image(png_header_only(1, 400_000))
    with pytest.raises(ImageError, match=r"12000x1 is too thin \(aspect ratio over 20:1\)"):
        open_image(png_header_only(12_000, 1))
    with pytest.raises(ImageError, match=r"50x1001 is too thin"):
        open_image(png_header_only(50, 1001))
    with pytest.raises(ImageError, match="cannot decode"):  # within every limit: decoding is tried (and fails)
        open_image(png_header_only(50, 1000))
    with pytest.raises(ImageError, match="too thin"):  # an already decoded PIL image is held to the same limits
        open_image(Image.new("RGB", (2100, 100)))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _halves(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (0, 0, width // 2, height))  # left half blue
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_large_images_are_shrunk_right_after_decoding(fmt):
    # 2000x1000: the shorter side (1000) holds MIN_KEPT_SHORTER_SIDE (448) twice -> halved
    image = open_image(_encoded(_halves(2000, 1000), fmt))
    assert image.size == (1000, 500) and image.mode == "RGB"
    assert close(image.getpixel((100, 250)), BLUE, 20) and close(image.getpixel((900, 250)), RED, 20)
    assert open_image(_encoded(_halves(895, 2000), fmt)).size == (895, 2000)  # 895 < 2 x 448: kept
    assert open_image(_halves(2000, 4000)).size == (500, 1000)  # a PIL image too (factor 4)
    shorter = min(open_image(_encoded(_halves(4000, 1800), fmt)).size)  # JPEG: decoded at 1/2 or 1/4 scale
    assert MIN_KEPT_SHORTER_SIDE <= shorter < 2 * MIN_KEPT_SHORTER_SIDE


def test_shrinking_keeps_orientation_transparency_and_palette_colours():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise: the stored left half ends on top
    rotated = open_image(_encoded(_halves(2000, 1000), "JPEG", exif=exif.tobytes()))
    assert rotated.size == (500, 1000)
    assert close(rotated.getpixel((250, 100)), BLUE, 20) and close(rotated.getpixel((250, 900)), RED, 20)
    palette = _halves(1000, 1000).convert("P", palette=Image.ADAPTIVE, colors=4)
    blue_index = palette.getpixel((0, 0))
    shrunk = open_image(_encoded(palette, "PNG", transparency=blue_index))  # blue becomes transparent
    assert shrunk.size == (500, 500)
    assert shrunk.getpixel((100, 250)) == (255, 255, 255) and close(shrunk.getpixel((400, 250)), RED, 2)


def test_a_shrunk_image_still_fills_the_model_input():
    clip = ImageTransform(224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert clip(open_image(_encoded(_halves(4000, 3000), "PNG"))).shape == (3, 224, 224)
