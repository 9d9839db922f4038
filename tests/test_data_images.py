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
from clara.data.images import ImageFolderIndex, verify_images


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
