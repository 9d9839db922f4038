"""Safe image opening, image-file lookup and CLIP-style preprocessing.

Every image clara reads goes through `open_image`: it refuses, from the header, sizes that
would take unbounded memory to decode or resize (the limits below), fully decodes the file (so
truncated or corrupt files fail here, not inside a training step), shrinks it to what the model
needs, applies the EXIF orientation, composites any transparency onto white and returns an RGB
image. Problems raise `ImageError`, which names the file and the problem; callers skip and
report such posts, they never substitute an image.

torch/torchvision are imported only when an `ImageTransform` is built, so that loading and
summarising a dataset (scripts/data_summary.py) does not pay for importing torch.
"""
from __future__ import annotations

import io
import math
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Union

from PIL import Image, ImageOps

# Largest image (width x height) clara decodes: 64 megapixels, e.g. 8000 x 8000. Tweet images are
# well under 4 MP; anything far larger is a mistake or a decompression bomb. PIL's own guard
# warns above this many pixels and refuses above twice as many; open_image turns both into
# ImageError and also refuses anything over its `max_pixels` argument.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Longest side and widest aspect ratio decoded. The model resizes the shorter side to its input
# size (224 px), so a 1 x 400,000 strip would become 224 x 89,600,000 pixels (gigabytes): the
# ratio bounds that resize, the side bounds a strip's decode.
MAX_IMAGE_SIDE = 12_000
MAX_ASPECT_RATIO = 20
# Right after decoding, images are shrunk by a whole factor (JPEG: decoded at 1/2, 1/4 or 1/8
# scale; others: PIL `reduce`) while their shorter side stays at least this long: twice the
# largest encoder input clara builds (224 px), so the model's own resize still antialiases.
MIN_KEPT_SHORTER_SIDE = 448
# Modes PIL's `reduce` averages correctly; others (palette, 1-bit, 16-bit, a transparent colour
# key) become RGB or RGBA first.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F")

# Extensions tried, in this order, when looking up `<id>.<ext>`; the content decides the real
# format (a PNG named .jpg opens fine).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

ImageSource = Union[str, os.PathLike, bytes, bytearray, IO[bytes], Image.Image]

# warnings.catch_warnings() swaps a process-wide filter list; holding this lock while PIL parses
# the header keeps concurrent open_image calls (verify_images uses threads) from interleaving
# those swaps. Decoding, the slow part, runs outside the lock.
_WARNINGS_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used; `source` names the file, `problem` says what is wrong."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"cannot use image {source}: {problem}")
        self.source = source
        self.problem = problem


def describe_source(source: ImageSource) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    name = getattr(source, "name", None)
    return str(name) if name else "<file object>"


def open_image(source: ImageSource, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image; return it as RGB with its EXIF orientation applied.

    `source` is a path, the file's bytes, a binary file object (e.g. a Streamlit upload) or an
    already opened PIL image. Transparent pixels are composited onto white; CMYK, palette,
    grey and 16-bit images are converted to RGB. Images whose shorter side is at least twice
    MIN_KEPT_SHORTER_SIDE come back shrunk by a whole factor. Raises ImageError naming the source
    for a missing, empty, truncated or corrupt image, or one over max_pixels, MAX_IMAGE_SIDE or
    MAX_ASPECT_RATIO (checked from the header, before decoding).
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, name, max_pixels)
        return _to_rgb(_apply_exif_orientation(_shrink(source, name), name), name)
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as file:
                return _decode(file, name, max_pixels)
        if isinstance(source, (bytes, bytearray)):
            return _decode(io.BytesIO(source), name, max_pixels)
        return _decode(source, name, max_pixels)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except OSError as exc:  # permission denied, a folder, ...
        raise ImageError(name, f"cannot read the file ({exc.strerror or exc})") from None


def _decode(file: IO[bytes], name: str, max_pixels: int | None) -> Image.Image:
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)  # reads the header only
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(name, f"too many pixels, possibly a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not an image file PIL can identify (empty, corrupt or an unsupported format)") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ImageError(name, f"corrupt image header ({type(exc).__name__}: {exc})") from None
    with image:
        _check_size(image.width, image.height, name, max_pixels)
        scale = MIN_KEPT_SHORTER_SIDE / min(image.size)
        if scale <= 0.5:  # JPEG only (a no-op for other formats): decode at a reduced DCT scale
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        try:
            image.load()  # full decode: truncated or corrupt data fails here
        except Exception as exc:  # OSError "image file is truncated", SyntaxError, ValueError, ...
            raise ImageError(name, f"cannot decode the image data ({type(exc).__name__}: {exc})") from None
        # Shrunk before the copies that orientation and RGB conversion make.
        return _to_rgb(_apply_exif_orientation(_shrink(image, name), name), name)


def _check_size(width: int, height: int, name: str, max_pixels: int | None) -> None:
    """Refuse, before decoding, a size whose decode or resize would take unbounded memory."""
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(name, f"{width}x{height} = {pixels:,} pixels is over the limit of {max_pixels:,}")
    if pixels == 0:
        raise ImageError(name, "image has zero width or height")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ImageError(name, f"{width}x{height}: its longer side is over the limit of {MAX_IMAGE_SIDE:,} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(name, f"{width}x{height} is too thin (aspect ratio over {MAX_ASPECT_RATIO}:1): resizing it "
                               "for the model would take gigabytes")


def _shrink(image: Image.Image, name: str) -> Image.Image:
    """`image` reduced by the largest whole factor that keeps its shorter side >= MIN_KEPT_SHORTER_SIDE."""
    factor = min(image.size) // MIN_KEPT_SHORTER_SIDE
    if factor < 2:
        return image
    try:
        if image.mode not in _REDUCIBLE_MODES or "transparency" in image.info:
            image = image.convert("RGBA" if _has_alpha(image) else "RGB")  # a mode `reduce` cannot average
        return image.reduce(factor)
    except Exception as exc:
        raise ImageError(name, f"cannot convert mode {image.mode} to RGB ({type(exc).__name__}: {exc})") from None


def _apply_exif_orientation(image: Image.Image, name: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block; guessing the orientation would be a silent substitute
        raise ImageError(name, f"unreadable EXIF orientation data ({type(exc).__name__}: {exc})") from None


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB copy of `image`; transparent pixels become white rather than whatever colour they hide."""
    try:
        if not _has_alpha(image):
            return image.convert("RGB")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    except Exception as exc:
        raise ImageError(name, f"cannot convert mode {image.mode} to RGB ({type(exc).__name__}: {exc})") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def verify_images(paths: Sequence[Path], progress: bool = False,
                  max_workers: int | None = None) -> list[ImageError | None]:
    """Decode every image once; return, per path, None if it is usable or the ImageError.

    PIL releases the GIL while decoding, so a few threads speed this up on multi-core machines.
    """
    workers = max_workers or max(1, min(8, os.cpu_count() or 1))

    def check(path: Path) -> ImageError | None:
        try:
            open_image(path).close()
        except ImageError as exc:
            return exc
        return None

    results: Iterable[ImageError | None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(paths), desc="checking images", unit="img")
        return list(results)


class ImageFolderIndex:
    """Finds `<stem>.jpg|.jpeg|.png` (any case) in one folder; lists the folder once, lazily."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._by_stem: dict[str, Path] | None = None

    @property
    def exists(self) -> bool:
        return self.folder.is_dir()

    def find(self, stem: str) -> Path | None:
        if self._by_stem is None:
            self._by_stem = self._scan()
        return self._by_stem.get(stem)

    def _scan(self) -> dict[str, Path]:
        if not self.exists:
            return {}
        rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
        best: dict[str, tuple[int, Path]] = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                order = rank.get(ext.lower())
                if order is None or not entry.is_file():
                    continue
                if stem not in best or order < best[stem][0]:
                    best[stem] = (order, Path(entry.path))
        return {stem: path for stem, (_, path) in best.items()}


class ImageTransform:
    """CLIP-style preprocessing: resize the shorter side (bicubic, antialiased), center-crop to
    `image_size`, scale to [0, 1] and normalise with the encoder's own mean and std.

    Callable on an RGB PIL image (other modes are converted as open_image does) or a uint8
    tensor [3, H, W]; returns a float32 tensor [3, image_size, image_size].
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        import torch
        from torchvision.transforms import InterpolationMode, v2

        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
        self.image_size = int(image_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.transform = v2.Compose([
            v2.ToImage(),
            v2.Resize(self.image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(self.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=self.mean, std=self.std),
        ])

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            image = _to_rgb(image, describe_source(image))
        return self.transform(image)

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


def model_image_transform(model: Any) -> ImageTransform:
    """The preprocessing of a model's vision encoder (`model.image_stats`: size, mean, std), as
    training, evaluation and inference all use it."""
    stats = model.image_stats
    return ImageTransform(stats.size, stats.mean, stats.std)
