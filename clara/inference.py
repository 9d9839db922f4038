"""Predictions from a checkpoint: the one entry point the scripts and the app use.

    predictor = Predictor.from_pretrained("checkpoints/clara_mvsa_single_best")
    [prediction] = predictor.predict(["post.jpg"], ["what a day"])  # .label, .probs["positive"]

Images: PIL images, paths or bytes. An empty text is allowed (the image carries the evidence); a
text longer than the model reads is truncated, as in training, and flagged `text_truncated`. No
per-call mutable state (eval mode once, torch.inference_mode per call): one cached instance can
serve several threads. A loaded checkpoint is prepared once (`prepare_for_inference`: LoRA folded
into the base weights, dropout off, weights frozen) and runs at the precision `clara.precision`
chooses for this machine (`predictor.path` says which; measurements: docs/BENCHMARKS.md).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from clara.checkpoint import load_checkpoint
from clara.config import Config
from clara.data.dataset import MODEL_INPUTS, build_collator, truncated_texts
from clara.data.images import model_image_transform, open_image
from clara.model.relative_span import trim_relative_spans
from clara.precision import autocast, default_device, resolve_precision

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


@dataclass(frozen=True)
class InferencePath:
    """Which code path a Predictor runs: what the benchmark records and the app may show."""
    precision: str  # "fp32" | "bf16" (autocast) | "int8" (dynamic quantisation, fp32 activations)
    lora: str  # "merged" (folded into the base weights) | "adapters" (run beside them)
    weights: str  # how the encoders' Linear / Conv2d weights are stored
    reason: str  # why this precision

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and put the base layer back in its place (peft's
    merge, as `merge_and_unload` does, also for the adapters injected without a PeftModel wrapper).
    In place; returns how many layers were merged. Outputs equal the unmerged model's up to float
    rounding (tests/test_inference.py)."""
    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer) or not name:
            continue
        module.merge(safe_merge=True)  # safe_merge: refuse adapters whose sum is not finite
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, module.get_base_layer())
        merged += 1
    return merged


def encoder_width(model: nn.Module) -> int | None:
    """The widest encoder's hidden size (what decides whether bf16 can pay), None if unknown."""
    widths = [getattr(getattr(model, "vision", None), "hidden_size", None),
              getattr(getattr(getattr(model, "text", None), "config", None), "hidden_size", None)]
    widths = [int(w) for w in widths if isinstance(w, int)]
    return max(widths) if widths else None


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoders' Linear and Conv2d layers (where nearly all the arithmetic is)."""
    towers = [getattr(model, name) for name in ("vision", "text") if isinstance(getattr(model, name, None), nn.Module)]
    return [m for tower in towers for m in tower.modules() if type(m) in (nn.Linear, nn.Conv2d)]


def quantize_linear_int8(model: nn.Module, device: torch.device) -> nn.Module:
    """int8 dynamic quantisation (weights int8 per output channel, activations quantised per batch) of
    every plain `nn.Linear` except LoRA's small adapter matrices (peft reads their `.weight`; after
    `merge_lora` there are none). Per channel: merged weights quantised per tensor moved the demo's
    probabilities by up to 0.17, per channel 0.07 (docs/BENCHMARKS.md)."""
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on CPU only, not on {device}")
    targets = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
               if type(module) is nn.Linear and ".lora_" not in name}
    with warnings.catch_warnings():
        # torch 2.14 announces that torch.ao quantisation moves to torchao, which measured slower
        # here (docs/BENCHMARKS.md); the user cannot act on the notice
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(model, qconfig_spec=targets, dtype=torch.qint8, inplace=True)


def prepare_for_inference(model: nn.Module, device: str | torch.device, precision: str = "fp32",
                          quantize: bool = False) -> nn.Module:
    """The one preparation of a model for prediction and explanation, in place (pass a model nothing
    else uses, never the training copy): on `device`, eval mode (dropout off), LoRA folded into the base
    weights (`merge_lora`), DeBERTa's relative-position span trimmed to the text (`trim_relative_spans`),
    every parameter frozen; `precision="bf16"` stores the encoders' Linear and
    Conv2d weights in bf16 (exactly what bf16 autocast would cast them to on every call, once);
    `quantize` then applies int8 dynamic quantisation (CPU, fp32 activations)."""
    device = torch.device(device)
    if quantize and precision != "fp32":
        raise ValueError(f"int8 quantisation runs with fp32 activations, not precision={precision!r}")
    model = model.to(device).eval()
    merge_lora(model)
    trim_relative_spans(model)  # DeBERTa: only the relative positions a text reaches (same scores)
    for param in model.parameters():
        param.requires_grad_(False)
    if precision == "bf16":
        for layer in _encoder_layers(model):
            layer.to(torch.bfloat16)
    if quantize:
        model = quantize_linear_int8(model, device)
    return model


class Predictor:
    """A model, its tokenizer and preprocessing, ready to predict image + text posts."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: Config, labels: Sequence[str],
                 device: str | torch.device | None = None, info: dict[str, Any] | None = None,
                 quantize: bool = False, precision: str | None = None, prepare: bool = False):
        """`precision`: `fp32`, `bf16` (autocast) or `auto`; None reads CLARA_PRECISION (default
        `auto`: the machine's probe, for encoders wide enough; clara.precision.resolve_precision). `prepare=True` (what
        `from_checkpoint` does) runs `prepare_for_inference` on `model` in place: pass a model nothing
        else uses. Without it the model is only switched to eval mode and left as it is (it may be
        trained further), and bf16 runs as autocast over its fp32 weights. `quantize=True` (CPU only,
        opt-in; implies `prepare` and fp32 activations): int8 dynamic quantisation of the Linear layers."""
        self.device = torch.device(device) if device is not None else default_device()
        if quantize:
            self.precision, reason = "fp32", "int8 dynamic quantisation (fp32 activations)"
        else:
            self.precision, reason = resolve_precision(precision, self.device, encoder_width(model))
        if prepare or quantize:
            self.model = prepare_for_inference(model, self.device, self.precision, quantize=quantize)
        else:
            self.model = model.to(self.device).eval()
        weights = ("int8 (Linear), fp32 (Conv2d)" if quantize else
                   "bf16" if self.precision == "bf16" and (prepare or quantize) else "fp32")
        self.path = InferencePath(precision="int8" if quantize else self.precision,
                                  lora="merged" if prepare or quantize else "adapters",
                                  weights=weights, reason=reason)
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(labels)
        self.info = dict(info or {})
        self.image_transform = model_image_transform(model)
        self.max_length = config.data.max_text_length
        self.collator = build_collator(config.data, tokenizer)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        overrides: dict[str, Any] | None = None, quantize: bool = False,
                        precision: str | None = None, merge: bool = True) -> "Predictor":
        """Load a checkpoint folder (clara.checkpoint.load_checkpoint); device: cuda if available, else cpu.
        The loaded model is prepared for inference (LoRA merged; `merge=False` keeps the adapters and
        their fp32 weights, for comparisons). `precision`, `quantize`: see __init__."""
        device = torch.device(device) if device is not None else default_device()
        loaded = load_checkpoint(path, device=device, overrides=overrides)
        return cls(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, device, loaded.info,
                   quantize=quantize, precision=precision, prepare=merge)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context every forward pass of `self.model` runs in (thread-local, so threads
        sharing the predictor are unaffected); the explainers use it too."""
        return autocast(self.precision, self.device)

    from_pretrained = from_checkpoint  # the Hugging Face name (as CLARAModel.from_pretrained)

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
        with torch.inference_mode(), self.autocast():
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
