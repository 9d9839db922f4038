"""Predictions from a checkpoint: the one entry point the scripts and the app use.

    predictor = Predictor.from_checkpoint("checkpoints/clara_mvsa_single_best")
    [prediction] = predictor.predict(["post.jpg"], ["what a day"])
    prediction.label, prediction.probs["positive"]

Images may be PIL images, paths or bytes (opened with clara.data.images.open_image). An empty
text is allowed: the image then carries the evidence (text_only_probs shows how little the text
said). A text longer than the model's max length is truncated, as in training, and flagged with
`text_truncated=True`.

The predictor holds no per-call mutable state: the model is put in eval mode once and every
call runs under torch.inference_mode, so one cached instance can serve several threads.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image

from clara.config import Config
from clara.data.dataset import MODEL_INPUTS
from clara.data.images import model_image_transform, open_image

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]


@dataclass(frozen=True)
class Prediction:
    """One post's prediction; every `*_probs` maps label -> probability."""
    label: str
    label_index: int
    probs: dict[str, float]  # final (after feedback)
    uncertainty: float
    pred_probs: dict[str, float]  # prediction head on the fused vector
    verify_probs: dict[str, float] | None  # verification head (None if the model has none)
    text_only_probs: dict[str, float]  # inference-time ablation: text alone
    image_only_probs: dict[str, float]  # inference-time ablation: image alone
    text_truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def truncated_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[bool]:
    """Per text, whether it has more than `max_length` tokens (special tokens included), i.e. is cut."""
    lengths = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [len(ids) > max_length for ids in lengths]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quantize_linear_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """int8 dynamic quantisation (weights int8, activations quantised per batch) of every plain
    `nn.Linear` except LoRA's small adapter matrices (peft reads their `.weight`)."""
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on CPU only, not on {device}")
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    targets = {name: default_dynamic_qconfig for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and ".lora_" not in name}
    with warnings.catch_warnings():
        # torch 2.14 announces that torch.ao quantisation moves to torchao (not a dependency of ours);
        # the user cannot act on it, docs/BENCHMARKS.md records it
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(model, qconfig_spec=targets, dtype=torch.qint8, inplace=True)


class Predictor:
    """A model, its tokenizer and preprocessing, ready to predict image + text posts."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: Config, labels: Sequence[str],
                 device: str | torch.device | None = None, info: dict[str, Any] | None = None,
                 quantize: bool = False):
        """`quantize=True` (CPU only, opt-in): int8 dynamic quantisation of the frozen Linear layers,
        faster on CPU at a small accuracy cost measured in docs/BENCHMARKS.md. It replaces modules
        of `model` in place, so pass a model that nothing else uses."""
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        if quantize:
            self.model = quantize_linear_int8(self.model, self.device)
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(labels)
        self.info = dict(info or {})
        self.image_transform = model_image_transform(model)
        self.max_length = config.data.max_text_length
        from clara.data.dataset import Collator

        self.collator = Collator(tokenizer, max_length=self.max_length,
                                 pad_to_max_length=config.data.pad_to_max_length)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        overrides: dict[str, Any] | None = None, quantize: bool = False) -> "Predictor":
        """Load a checkpoint folder (clara.checkpoint.load_checkpoint); device: cuda if available, else cpu.
        `quantize`: int8 dynamic quantisation (CPU only; see __init__)."""
        from clara.checkpoint import load_checkpoint

        device = torch.device(device) if device is not None else default_device()
        loaded = load_checkpoint(path, device=device, overrides=overrides)
        return cls(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, device, loaded.info, quantize=quantize)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _check_inputs(images: Sequence[ImageInput], texts: Sequence[str]) -> None:
        for name, value in (("images", images), ("texts", texts)):
            if isinstance(value, (str, bytes, bytearray, Image.Image)) or not isinstance(value, Sequence):
                raise TypeError(f"{name} must be a list (one entry per post), got {type(value).__name__}")
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts: one of each per post")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, not a string")

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts have more tokens (special tokens included) than the model reads."""
        return truncated_texts(self.tokenizer, texts, self.max_length)

    def encode(self, images: Sequence[ImageInput], texts: Sequence[str]) -> dict[str, Any]:
        """The model-ready batch: pixel_values [B,3,S,S], input_ids / attention_mask [B,T] on the
        predictor's device, plus "text_truncated" (list of bool). Raises ImageError for an image
        that cannot be opened, ValueError for lists of different lengths."""
        self._check_inputs(images, texts)
        if not len(texts):
            raise ValueError("nothing to encode: no posts given")
        items = [{"pixel_values": self.image_transform(open_image(image)), "text": text, "label": None,
                  "id": str(index)} for index, (image, text) in enumerate(zip(images, texts))]
        batch = self.collator(items)
        encoded: dict[str, Any] = {key: batch[key].to(self.device) for key in MODEL_INPUTS}
        encoded["text_truncated"] = self.truncated(texts)
        return encoded

    # ------------------------------------------------------------------ prediction
    def _as_dicts(self, probs: torch.Tensor) -> list[dict[str, float]]:
        return [{name: float(p) for name, p in zip(self.labels, row)} for row in probs.tolist()]

    def predict(self, images: Sequence[ImageInput], texts: Sequence[str], batch_size: int = 16) -> list[Prediction]:
        """One Prediction per (image, text) pair, in order."""
        self._check_inputs(images, texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        predictions: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            predictions.extend(self._predict_batch(images[start:start + batch_size], texts[start:start + batch_size]))
        return predictions

    def _predict_batch(self, images: Sequence[ImageInput], texts: Sequence[str]) -> list[Prediction]:
        batch = self.encode(images, texts)
        inputs = {key: batch[key] for key in MODEL_INPUTS}
        with torch.inference_mode():
            # The encoders (nearly all the cost) run once; fusion and heads once per reading.
            vision_tokens, text_tokens = self.model.encode(**inputs)
            mask = inputs["attention_mask"]
            out = self.model.decide(vision_tokens, text_tokens, mask)
            text_only = self.model.decide(None, text_tokens, mask, ablation="text_only").probs
            image_only = self.model.decide(vision_tokens, None, mask, ablation="image_only").probs
        probs = self._as_dicts(out.probs.float().cpu())
        pred_probs = self._as_dicts(out.pred_logits.float().softmax(-1).cpu())
        verify_probs = (self._as_dicts(out.verify_logits.float().softmax(-1).cpu())
                        if out.verify_logits is not None else [None] * len(texts))
        text_only_probs = self._as_dicts(text_only.float().cpu())
        image_only_probs = self._as_dicts(image_only.float().cpu())
        indices = out.probs.argmax(-1).tolist()
        uncertainty = out.uncertainty.float().reshape(len(texts)).tolist()
        return [Prediction(label=self.labels[idx], label_index=int(idx), probs=probs[i], uncertainty=float(uncertainty[i]),
                           pred_probs=pred_probs[i], verify_probs=verify_probs[i], text_only_probs=text_only_probs[i],
                           image_only_probs=image_only_probs[i], text_truncated=bool(batch["text_truncated"][i]))
                for i, idx in enumerate(indices)]
