"""The training fast paths the measurements keep (docs/BENCHMARKS.md, "training fast paths"), applied
in one place for the training loop and the benchmark; `train.fast_paths=false` turns them off.
Together they change a step by rounding and by the dropout masks drawn (the trimmed table draws
fewer, and on CPU the masks come from another draw), not what is learned (the quality runs).

- frozen encoder Linear/Conv2d weights cast once to the autocast dtype (bf16/fp16), kept beside the
  fp32 parameters: autocast re-casts a weight that needs no gradient at every call, and this is the
  same cast, made once (same arithmetic; the checkpoint and the parameters stay fp32);
- fused AdamW where torch has the kernel for the device (CPU and CUDA);
- the vision tower's eager attention on CPU: torch's CPU SDPA backward costs more than the whole
  eager attention at ViT-B/32's 50 tokens;
- DeBERTa's relative-position attention over the span a batch's texts reach
  (clara.model.relative_span; also on for prediction);
- on CPU, nn.Dropout's masks drawn from 16 random bits per element (`bits_dropout`): torch's CPU
  `bernoulli_` is serial and draws one random number per element, and the ~170 masks of a step were
  13-16 % of it. Same keep probability to within 2**-17, scaled by the exact one; another random stream.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from clara.model.relative_span import trim_relative_spans
from clara.precision import AUTOCAST_DTYPES

CPU_VISION_ATTENTION = "eager"  # the vision tower's attention when training on CPU (module docstring)
MASK_LEVELS = 1 << 16  # bits_dropout: each element keeps or drops by one of 2**16 equally likely int16 values


@dataclass(frozen=True)
class FastPaths:
    """What `apply_fast_paths` did to one training model (logged, and kept in metrics.json)."""
    enabled: bool
    frozen_weight_casts: int = 0  # frozen Linear/Conv2d modules reading a once-cast copy under autocast
    cast_dtype: str | None = None
    vision_attention: str | None = None  # set for training; None: the encoder's own default
    fused_optimizer: bool = False
    trimmed_relative_spans: int = 0  # DeBERTa encoders whose relative-position span follows the text length
    bits_dropouts: int = 0  # nn.Dropout modules drawing their masks with bits_dropout (CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.enabled:
            return "off (train.fast_paths=false)"
        parts = [f"fused AdamW {'on' if self.fused_optimizer else 'off (no kernel for this device)'}"]
        if self.frozen_weight_casts:
            parts.append(f"{self.frozen_weight_casts} frozen encoder weights cast once to {self.cast_dtype}")
        if self.vision_attention:
            parts.append(f"vision attention {self.vision_attention}")
        if self.trimmed_relative_spans:
            parts.append("DeBERTa relative positions trimmed to the texts' span")
        if self.bits_dropouts:
            parts.append(f"{self.bits_dropouts} dropouts drawing 16-bit masks")
        return ", ".join(parts)


def _params(module: nn.Linear | nn.Conv2d) -> list[nn.Parameter]:
    return [p for p in (module.weight, module.bias) if p is not None]


def _frozen(module: nn.Linear | nn.Conv2d) -> bool:
    """Neither the weight nor the bias trains (the once-cast copy stands for both)."""
    return not any(p.requires_grad for p in _params(module))


class _OnceCastForward:
    """A frozen Linear/Conv2d's forward that, under autocast, reads a copy of its weight and bias in
    the autocast dtype, made at the first such call (the cast autocast would make at every call);
    the module's own forward otherwise (no autocast, or the weight trainable). A weight moved,
    changed in place or read at another autocast dtype is cast anew."""

    def __init__(self, module: nn.Linear | nn.Conv2d):
        self.module = module
        self.key: tuple[Any, ...] | None = None  # (dtype, device, versions) the copy was made at
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type) or not _frozen(module):
            return type(module).forward(module, x)
        dtype = torch.get_autocast_dtype(device_type)
        key = (dtype, module.weight.device, tuple(p._version for p in _params(module)))
        if key != self.key:
            self.weight = module.weight.detach().to(dtype)
            self.bias = None if module.bias is None else module.bias.detach().to(dtype)
            self.key = key
        if isinstance(module, nn.Linear):
            return F.linear(x, self.weight, self.bias)
        return module._conv_forward(x, self.weight, self.bias)


def cast_frozen_weights(modules: Iterable[nn.Module]) -> int:
    """Give every frozen nn.Linear / nn.Conv2d among `modules` (and their children) a once-cast copy
    of its weights for autocast (_OnceCastForward); returns how many."""
    count = 0
    for root in modules:
        for module in root.modules():
            if type(module) in (nn.Linear, nn.Conv2d) and _frozen(module):
                module.forward = _OnceCastForward(module)
                count += 1
    return count


def release_frozen_weight_casts(model: nn.Module) -> int:
    """Drop the once-cast copies (before the frozen weights start training, or to free memory)."""
    count = 0
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), _OnceCastForward):
            del module.forward
            count += 1
    return count


def bits_dropout(x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """Training-mode dropout whose mask comes from 16 random bits per element: 64-bit words from
    the default generator, read as four int16 each, an element kept when its int16 falls among the
    round((1 - p) * 2**16) lowest values, and the kept ones scaled by the inverse of exactly that
    rate, rounded to x's dtype as torch's own dropout rounds 1 / (1 - p): the expectation is x up
    to that rounding. A fraction of torch's `bernoulli_` cost on CPU (one random word per four
    elements instead of one draw per element)."""
    kept_levels = round((1 - p) * MASK_LEVELS)
    if not 0 < kept_levels < MASK_LEVELS:  # p within 2**-17 of 0 or 1: torch's own
        return F.dropout(x, p, training=True, inplace=inplace)
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
    levels = words.view(torch.int16)[:count].view(x.shape)
    noise = (levels < kept_levels - MASK_LEVELS // 2).to(x.dtype).mul_(MASK_LEVELS / kept_levels)
    return x.mul_(noise) if inplace else x * noise


class _BitsDropoutForward:
    """An nn.Dropout's forward through `bits_dropout` in training; the module's own in eval or at p = 0."""

    def __init__(self, module: nn.Dropout):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        if not module.training or module.p == 0:
            return type(module).forward(module, x)
        return bits_dropout(x, module.p, module.inplace)


def use_bits_dropout(model: nn.Module) -> int:
    """Route every nn.Dropout with p > 0 in `model` through bits_dropout (_BitsDropoutForward);
    returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout and module.p > 0 \
                and not isinstance(module.__dict__.get("forward"), _BitsDropoutForward):
            module.forward = _BitsDropoutForward(module)
            count += 1
    return count


def fused_adamw_supported(device: torch.device | str) -> bool:
    """Whether this torch has a fused AdamW kernel for `device`'s type."""
    return torch.device(device).type in _get_fused_kernels_supported_devices()


def build_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW, fused when `fused` (FastPaths.fused_optimizer)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def set_vision_attention(model: nn.Module, implementation: str) -> bool:
    """The vision tower's attention implementation (transformers' `set_attn_implementation`); False
    when the tower cannot switch."""
    backbone = getattr(getattr(model, "vision", None), "backbone", None)
    if backbone is None or not hasattr(backbone, "set_attn_implementation"):
        return False
    backbone.set_attn_implementation(implementation)
    return backbone.config._attn_implementation == implementation


def apply_fast_paths(model: nn.Module, mixed_precision: str, device: torch.device | str,
                     enabled: bool = True) -> FastPaths:
    """Apply the fast paths to a training `model` that will run on `device` at Accelerate's
    `mixed_precision` (`no` | `bf16` | `fp16`), before its optimizer is built (`build_optimizer`
    with FastPaths.fused_optimizer) and once its frozen set is final."""
    if not enabled:
        return FastPaths(enabled=False)
    device = torch.device(device)
    towers = [tower for tower in (getattr(model, "vision", None), getattr(model, "text", None)) if tower is not None]
    casts = cast_frozen_weights(towers) if mixed_precision in AUTOCAST_DTYPES else 0
    attention = CPU_VISION_ATTENTION if device.type == "cpu" and set_vision_attention(model, CPU_VISION_ATTENTION) \
        else None
    return FastPaths(enabled=True, frozen_weight_casts=casts, cast_dtype=mixed_precision if casts else None,
                     vision_attention=attention, fused_optimizer=fused_adamw_supported(device),
                     trimmed_relative_spans=trim_relative_spans(model),
                     bits_dropouts=use_bits_dropout(model) if device.type == "cpu" else 0)
