"""The decoded-image cache: same pixels as the uncached transform, rebuilt when a file changes."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clara.data import CLARADataset, Collator, ImageTransform
from clara.data.image_cache import ImageCache, normalize_pixels
from clara.data.images import open_image
from clara.data.types import Sample
from clara.model.encoders import train_wordpiece_tokenizer

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def write_photo(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A noisy JPEG of `size` (width, height), so resizing has real work to do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    sizes = [(120, 90), (64, 100), (48, 48), (200, 150)]
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / "images" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        write_photo(path, i, size)
        paths.append(path)
    return paths


@pytest.fixture()
def transform() -> ImageTransform:
    return ImageTransform(32, MEAN, STD)


def test_cached_crops_equal_the_uncached_transform(photos, transform, tmp_path):
    cache = ImageCache.build(photos, transform, tmp_path / "cache")
    assert len(cache) == 4
    for path in photos:
        crop = cache.crop(path)
        assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32)
        expected = transform(open_image(path))
        # bit-identical: the transform also resizes in uint8 before converting to float
        assert torch.equal(normalize_pixels(crop, transform), expected)


def test_dataset_and_collator_give_the_same_batch_with_and_without_cache(photos, transform, tmp_path):
    samples = [Sample(id=str(i), text="a b", image_path=p, label=i % 3) for i, p in enumerate(photos)]
    collator = Collator(train_wordpiece_tokenizer(["a b"], 300), max_length=8, normalize=transform)
    cache = ImageCache.build(photos, transform, tmp_path / "cache")
    plain = collator([CLARADataset(samples, transform)[i] for i in range(4)])
    cached_items = [CLARADataset(samples, transform, cache)[i] for i in range(4)]
    assert cached_items[0]["pixel_values"].dtype == torch.uint8
    cached = collator(cached_items)
    assert torch.equal(plain["pixel_values"], cached["pixel_values"])
    with pytest.raises(ValueError, match="normalize="):
        Collator(collator.tokenizer, max_length=8)(cached_items)


def test_a_changed_file_is_decoded_again_and_others_are_kept(photos, transform, tmp_path):
    folder = tmp_path / "cache"
    ImageCache.build(photos, transform, folder)
    [array_file] = folder.glob("*.npy")
    write_photo(photos[1], seed=99, size=(64, 100))  # new content, same name
    stat = photos[1].stat()
    os.utime(photos[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # mtime surely moves
    # Mark an untouched row, to see that it is not decoded again.
    marked = np.load(array_file, mmap_mode="r+")
    marked[0, 0, 0, 0] = 255 - marked[0, 0, 0, 0]
    marked.flush()
    del marked
    rebuilt = ImageCache.build(photos, transform, folder)
    assert torch.equal(normalize_pixels(rebuilt.crop(photos[1]), transform), transform(open_image(photos[1])))
    kept = rebuilt.crop(photos[0])
    assert not torch.equal(normalize_pixels(kept, transform), transform(open_image(photos[0])))  # row 0 untouched
    assert list(folder.glob("*.npy")) == [array_file]


def test_an_interrupted_build_is_rebuilt(photos, transform, tmp_path):
    folder = tmp_path / "cache"
    ImageCache.build(photos, transform, folder)
    [manifest] = folder.glob("*.json")
    manifest.unlink()  # what a build killed before its last write leaves
    [array_file] = folder.glob("*.npy")
    np.lib.format.open_memmap(array_file, mode="r+")[:] = 0
    rebuilt = ImageCache.build(photos, transform, folder)
    assert torch.equal(normalize_pixels(rebuilt.crop(photos[2]), transform), transform(open_image(photos[2])))


def test_other_sizes_and_path_lists_get_their_own_files_and_unknown_paths_are_refused(photos, transform, tmp_path):
    folder = tmp_path / "cache"
    ImageCache.build(photos, transform, folder)
    ImageCache.build(photos, ImageTransform(16, MEAN, STD), folder)
    small = ImageCache.build(photos[:2], transform, folder)
    assert len(list(folder.glob("*.npy"))) == 3
    with pytest.raises(KeyError, match="not in the cache"):
        small.crop(photos[3])
