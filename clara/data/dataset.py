"""Torch Dataset over loaded samples, the collator that tokenizes and batches them, and the
in-order loader that evaluation (and training's validation) reads a split with."""
from __future__ import annotations

import threading

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from .image_cache import normalize_pixels
from .images import open_image
from .types import Sample

# The batch keys CLARAModel.forward takes (a Collator batch also holds labels and ids).
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask")
# A fast tokenizer sets its padding / truncation state on the shared Rust object before each call:
# two threads calling it with different settings get each other's lengths. Every call holds this.
TOKENIZER_LOCK = threading.RLock()


def truncated_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[bool]:
    """Per text, whether it has more than `max_length` tokens (special tokens included), i.e. is cut."""
    with TOKENIZER_LOCK:
        lengths = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [len(ids) > max_length for ids in lengths]


class CLARADataset(Dataset):
    """Items `{"pixel_values": [3,S,S] float tensor, "text": str, "label": int, "id": str}`.

    Images are opened with `open_image` at each access; an unreadable one raises ImageError
    naming the file (load_dataset with check_images=True has already skipped those). With an
    `image_cache` (clara.data.image_cache.ImageCache) "pixel_values" is instead the cached uint8
    crop [3,S,S]; the Collator normalises the whole batch (`Collator(normalize=transform)`).
    """

    def __init__(self, samples: Sequence[Sample], image_transform: Callable[[Any], torch.Tensor],
                 image_cache: Any | None = None):
        self.samples = list(samples)
        self.image_transform = image_transform
        self.image_cache = image_cache

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Label index per item, in order (for class weights and samplers)."""
        return [sample.label for sample in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        pixels = (self.image_cache.crop(sample.image_path) if self.image_cache is not None
                  else self.image_transform(open_image(sample.image_path)))
        return {
            "pixel_values": pixels,
            "text": sample.text,
            "label": sample.label,
            "id": sample.id,
        }


class Collator:
    """Batch items: stack images, tokenize all texts in one tokenizer call.

    Texts are padded to the longest in the batch (truncated to `max_length` tokens), or to
    `max_length` when `pad_to_max_length` (the notebooks' choice). Returns
    `{"pixel_values": [B,3,S,S], "input_ids": [B,T], "attention_mask": [B,T], "labels": [B],
    "ids": list[str]}`; "labels" is left out when the items carry no label (label None).
    uint8 crops (from an image cache) are scaled and normalised in one batched operation with
    `normalize` (the ImageTransform whose mean/std apply), giving the same values as the transform.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128, pad_to_max_length: bool = False,
                 normalize: Any | None = None):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_max_length = pad_to_max_length
        self.normalize = normalize

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        with TOKENIZER_LOCK:
            encoded = self.tokenizer(
                [item["text"] for item in items],
                padding="max_length" if self.pad_to_max_length else "longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=False,
            )
        pixels = torch.stack([item["pixel_values"] for item in items])
        if pixels.dtype == torch.uint8:
            if self.normalize is None:
                raise ValueError("the items hold uint8 image crops (an image cache); build the Collator "
                                 "with normalize=<the ImageTransform> so they are normalised")
            pixels = normalize_pixels(pixels, self.normalize)
        batch: dict[str, Any] = {
            "pixel_values": pixels,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "ids": [item["id"] for item in items],
        }
        labels = [item.get("label") for item in items]
        if all(label is not None for label in labels):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


def build_collator(data_cfg: DataConfig, tokenizer: Any, normalize: Any | None = None) -> Collator:
    """The Collator the data config describes (max_text_length, pad_to_max_length)."""
    return Collator(tokenizer, max_length=data_cfg.max_text_length, pad_to_max_length=data_cfg.pad_to_max_length,
                    normalize=normalize)


def build_eval_loader(samples: Sequence[Sample], image_transform: Callable[[Any], torch.Tensor], collator: Collator,
                      batch_size: int, image_cache: Any | None = None, num_workers: int = 0,
                      pin_memory: bool = False) -> DataLoader:
    """A split's posts in order (no shuffling), for evaluation and validation."""
    return DataLoader(CLARADataset(samples, image_transform, image_cache), batch_size=batch_size, shuffle=False,
                      collate_fn=collator, num_workers=num_workers, pin_memory=pin_memory)
