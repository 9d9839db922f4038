"""A decoded-image cache: each image's resized, center-cropped uint8 pixels, stored once per
dataset in a memory-mapped array, so training epochs skip JPEG decoding and resizing.

    cache = ImageCache.build([s.image_path for s in samples], transform, cache_dir)
    crop = cache.crop(path)          # uint8 tensor [3, S, S], a view of the memory map
    pixels = normalize_pixels(batch_uint8, transform)   # float32, batched, same values as `transform`

The crop is exactly what `ImageTransform` computes before its float conversion (the resize runs
on uint8 there too), so `normalize_pixels(crop)` equals `transform(open_image(path))` bit for bit.

Layout of `cache_dir`: `<key>.npy` (uint8 [N, 3, S, S], opened with numpy's memmap) and
`<key>.json` (format version, crop size, and per file: path, byte size, mtime_ns, row). The key
hashes the image size and the resolved list of paths, so different datasets or splits never
share files. On `build`, every listed file is stat-ed; rows whose size or mtime changed are
decoded again in place, and a missing or unreadable manifest rebuilds the whole array. The
manifest is written last, so an interrupted build is rebuilt next time rather than trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .images import ImageTransform, open_image

CACHE_FORMAT_VERSION = 1


DECODE_CHUNK = 256  # images decoded per round of the thread pool (bounds the results held at once)


def decode_threads() -> int:
    """Threads that decode images while the cache is built: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/clara/images` (default `~/.cache/clara/images`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clara" / "images"


def uint8_crop_transform(transform: ImageTransform) -> Any:
    """The resize + center-crop steps of `transform` (its uint8 part), as one callable."""
    from torchvision.transforms import v2

    steps = list(transform.transform.transforms)
    expected = (v2.ToImage, v2.Resize, v2.CenterCrop)
    if len(steps) < 3 or not all(isinstance(step, kind) for step, kind in zip(steps, expected)):
        raise TypeError(f"ImageTransform steps changed ({steps}); update clara.data.image_cache to match")
    return v2.Compose(steps[:3])


def normalize_pixels(pixels: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """uint8 crops [..., 3, S, S] -> the float32 values `transform` gives (scale to [0, 1], then
    normalise with its mean and std); batched, on whatever device `pixels` is on."""
    from torchvision.transforms.v2 import functional as F

    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalize_pixels expects uint8 crops, got {pixels.dtype}")
    return F.normalize(F.to_dtype(pixels, torch.float32, scale=True), mean=transform.mean, std=transform.std)


def _fingerprint(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class ImageCache:
    """Read access to a built cache: `crop(path)` -> uint8 tensor [3, S, S]."""

    def __init__(self, array: np.ndarray, rows: dict[str, int], image_size: int, array_path: Path):
        self.array = array
        self.rows = rows
        self.image_size = image_size
        self.array_path = array_path

    def __len__(self) -> int:
        return len(self.rows)

    def crop(self, path: str | os.PathLike) -> torch.Tensor:
        key = str(Path(path).resolve())
        row = self.rows.get(key)
        if row is None:
            raise KeyError(f"image {path} is not in the cache {self.array_path}; build the cache over "
                           "every image the dataset uses")
        # A copy: the memory map is read-only and torch warns about non-writable arrays.
        return torch.from_numpy(np.array(self.array[row]))

    @classmethod
    def build(cls, paths: Sequence[str | os.PathLike], transform: ImageTransform,
              cache_dir: str | os.PathLike | None = None, progress: bool = False) -> "ImageCache":
        """Open the cache for `paths` under `cache_dir` (default `default_cache_dir()`), decoding
        only the images that are new or changed since it was written.

        Raises clara.data.ImageError naming the file for an image that cannot be decoded (the
        dataset loader has normally skipped those already).
        """
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        resolved = [str(Path(p).resolve()) for p in paths]
        unique = list(dict.fromkeys(resolved))
        size = transform.image_size
        digest = hashlib.sha256(json.dumps([size, unique]).encode("utf-8")).hexdigest()[:20]
        array_path, manifest_path = folder / f"{digest}.npy", folder / f"{digest}.json"
        current = {path: _fingerprint(Path(path)) for path in unique}
        shape = (len(unique), 3, size, size)

        stored = _read_manifest(manifest_path, size)
        if stored is not None and array_path.is_file():
            array = np.lib.format.open_memmap(array_path, mode="r+")
            if array.shape != shape:
                stored = None
        if stored is None or not array_path.is_file():
            stored = {}
            array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
        stale = [row for row, path in enumerate(unique) if stored.get(path) != list(current[path])]
        if stale:
            manifest_path.unlink(missing_ok=True)  # an interrupted update must not look complete
            crop = uint8_crop_transform(transform)
            bar: Any = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=len(stale), desc=f"caching {len(stale)} images at {size} px", unit="img")
            # Pillow releases the GIL while it decodes and resizes: threads decode in parallel, each
            # image once, in bounded chunks (each row is written by one thread).
            with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
                for start in range(0, len(stale), DECODE_CHUNK):
                    chunk = stale[start:start + DECODE_CHUNK]
                    for row, pixels in zip(chunk, pool.map(lambda r: crop(open_image(unique[r])).numpy(), chunk)):
                        array[row] = pixels
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
            array.flush()
            _write_manifest(manifest_path, size, unique, current)
        del array
        readonly = np.load(array_path, mmap_mode="r")
        return cls(readonly, {path: row for row, path in enumerate(unique)}, size, array_path)


def _read_manifest(path: Path, image_size: int) -> dict[str, list[int]] | None:
    """Per-path [size, mtime_ns] of a complete cache, or None if there is none usable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if raw.get("version") != CACHE_FORMAT_VERSION or raw.get("image_size") != image_size:
        return None
    return {entry["path"]: [entry["bytes"], entry["mtime_ns"]] for entry in raw.get("files", [])}


def _write_manifest(path: Path, image_size: int, paths: list[str], fingerprints: dict[str, tuple[int, int]]) -> None:
    files = [{"path": p, "row": row, "bytes": fingerprints[p][0], "mtime_ns": fingerprints[p][1]}
             for row, p in enumerate(paths)]
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"version": CACHE_FORMAT_VERSION, "image_size": image_size, "files": files}),
                         encoding="utf-8")
    temporary.replace(path)
