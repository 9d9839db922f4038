"""Where the model runs and at what precision: the one place both are decided, for training,
evaluation, prediction, explanation and the benchmark (as open_clip_train/precision.py is for open_clip).

`auto` means bf16 on a GPU and, on a CPU, what a start-up probe measured: a small fp32 and bf16
matmul timed once per process (`cpu_precision_probe`), bf16 only where it runs clearly faster
(CPUs with bf16 units: AVX-512 BF16 / AMX) and the encoders are wide enough for it to pay. The same
policy decides training's `train.mixed_precision=auto` (`resolve_training_precision`).
`CLARA_PRECISION=fp32|bf16|auto` overrides what `auto` resolves to. Measurements: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

# Precision names: the config's (`no`, `bf16`, `fp16`) and the benchmark's `fp32`, which means `no`.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_ENV = "CLARA_PRECISION"
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
# bf16 is chosen only when the probe's matmul runs at least this much faster than in fp32 (casts
# and the non-matmul work eat part of the gain in a whole model).
MIN_BF16_SPEEDUP = 1.3
# A bf16 matmul this much slower than fp32 on the small screening shape is an emulated path
# (no bf16 units): the full-size shape is then not timed (it would take seconds).
EMULATED_SLOWDOWN = 4.0
# Encoders narrower than this run slower under bf16 autocast whatever the CPU: its per-op casts cost
# more than the small matmuls gain (the tiny demo: 118 vs 62 ms per post, docs/BENCHMARKS.md).
MIN_BF16_HIDDEN_SIZE = 256
SCREEN_SHAPE = (32, 128, 128)  # (rows, inner, columns): ~1 MFLOP, milliseconds even when emulated
PROBE_SHAPE = (64, 768, 3072)  # 64 tokens through a ViT-B / DeBERTa-base MLP projection
PROBE_REPEATS = 20
SCREEN_REPEATS = 5


def default_device() -> torch.device:
    """cuda when torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class PrecisionProbe:
    """What the start-up probe measured on this CPU and what it chose."""
    capability: str  # torch.backends.cpu.get_cpu_capability()
    precision: str  # "bf16" | "fp32"
    reason: str
    fp32_ms: float | None = None  # best time of one F.linear at `shape`
    bf16_ms: float | None = None
    shape: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_cpu_precision(capability: str, fp32_s: float | None, bf16_s: float | None,
                         min_speedup: float = MIN_BF16_SPEEDUP) -> tuple[str, str]:
    """(precision, reason) from the timed matmuls: bf16 when it runs >= `min_speedup` times faster."""
    if fp32_s is None or bf16_s is None or fp32_s <= 0 or bf16_s <= 0:
        return "fp32", f"bf16 matmul not timed on this CPU ({capability})"
    speedup = fp32_s / bf16_s
    if speedup >= min_speedup:
        return "bf16", f"bf16 matmul {speedup:.1f}x faster than fp32 ({capability}; threshold {min_speedup}x)"
    return "fp32", f"bf16 matmul only {speedup:.2f}x the speed of fp32 ({capability}; threshold {min_speedup}x)"


def time_linear(shape: tuple[int, int, int], repeats: int = PROBE_REPEATS) -> tuple[float, float]:
    """Best-of-`repeats` seconds of one `F.linear` ([rows, inner] input, [columns, inner] weight: what
    the encoders run) in fp32 and in bf16, the two timed in turn after one untimed call each; the best
    time is the one least disturbed by other processes on a shared machine."""
    rows, inner, columns = shape
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(rows, inner, generator=generator)
    weight = torch.randn(columns, inner, generator=generator)
    pairs = {torch.float32: (inputs, weight), torch.bfloat16: (inputs.bfloat16(), weight.bfloat16())}
    best = {dtype: float("inf") for dtype in pairs}
    for dtype, (x, w) in pairs.items():
        torch.nn.functional.linear(x, w)
    for _ in range(repeats):
        for dtype, (x, w) in pairs.items():
            started = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best[dtype] = min(best[dtype], time.perf_counter() - started)
    return best[torch.float32], best[torch.bfloat16]


@functools.lru_cache(maxsize=1)
def cpu_precision_probe() -> PrecisionProbe:
    """Time fp32 vs bf16 matmuls once per process (tens of ms on an idle CPU) and decide (decide_cpu_precision)."""
    capability = torch.backends.cpu.get_cpu_capability()
    with torch.inference_mode():
        screen_fp32, screen_bf16 = time_linear(SCREEN_SHAPE, repeats=SCREEN_REPEATS)
        if screen_bf16 > EMULATED_SLOWDOWN * screen_fp32:
            precision, reason = decide_cpu_precision(capability, screen_fp32, screen_bf16)
            return PrecisionProbe(capability, precision, reason + "; screened on the small shape",
                                  screen_fp32 * 1e3, screen_bf16 * 1e3, SCREEN_SHAPE)
        fp32_s, bf16_s = time_linear(PROBE_SHAPE)
    precision, reason = decide_cpu_precision(capability, fp32_s, bf16_s)
    return PrecisionProbe(capability, precision, reason, fp32_s * 1e3, bf16_s * 1e3, PROBE_SHAPE)


def precision_setting(setting: str | None = None) -> str:
    """`setting`, else the CLARA_PRECISION environment variable, else `auto`; checked."""
    chosen = setting if setting is not None else os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    chosen = "fp32" if chosen == "no" else chosen
    if chosen not in INFERENCE_PRECISIONS:
        source = "precision" if setting is not None else PRECISION_ENV
        raise ValueError(f"{source}={chosen!r} is not one of: {', '.join(INFERENCE_PRECISIONS)}")
    return chosen


def resolve_precision(setting: str | None, device: str | torch.device,
                      hidden_size: int | None = None) -> tuple[str, str]:
    """(`fp32` | `bf16`, why) for prediction and explanation on `device`; `setting` None reads
    CLARA_PRECISION (default `auto`): bf16 on a GPU that supports it, the probe's choice on CPU for
    encoders at least MIN_BF16_HIDDEN_SIZE wide (`hidden_size`: the model's widest; None: not checked)."""
    chosen = precision_setting(setting)
    if chosen != "auto":
        return chosen, f"set to {chosen}" + ("" if setting is not None else f" by {PRECISION_ENV}")
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return ("bf16", "GPU with bf16 support") if supported else ("fp32", "GPU without bf16 support")
    if device.type != "cpu":
        return "fp32", f"no precision probe for {device.type}"
    if hidden_size is not None and hidden_size < MIN_BF16_HIDDEN_SIZE:
        return "fp32", f"encoders {hidden_size} wide: too narrow for bf16 to pay (< {MIN_BF16_HIDDEN_SIZE})"
    probe = cpu_precision_probe()
    return probe.precision, f"probe: {probe.reason}"


def resolve_training_precision(setting: str, device: str | torch.device | None = None,
                               hidden_size: int | None = None) -> tuple[str, str]:
    """(Accelerate's `mixed_precision`: `no` | `bf16` | `fp16`, why) for the config's `train.mixed_precision`.

    `auto` follows `resolve_precision` (one policy, one probe): bf16 on a GPU that supports it, and on a
    CPU the probe's choice for encoders at least MIN_BF16_HIDDEN_SIZE wide (`hidden_size`, e.g.
    clara.model.encoders.configured_encoder_width; None, unknown: fp32 unless CLARA_PRECISION=bf16). Other settings pass
    through. device: default_device()."""
    if setting != "auto":
        return setting, f"train.mixed_precision={setting}"
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu" and hidden_size is None and precision_setting() == "auto":
        return "no", "auto: encoder width unknown, so fp32"
    precision, reason = resolve_precision(None, device, hidden_size)
    return ("bf16" if precision == "bf16" else "no"), f"auto: {reason}"


def resolve_mixed_precision(setting: str, device: str | torch.device | None = None,
                            hidden_size: int | None = None) -> str:
    """`resolve_training_precision`'s precision alone (the config's `train.mixed_precision` for Accelerate)."""
    return resolve_training_precision(setting, device, hidden_size)[0]


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for `bf16` / `fp16` on `device`; a no-op context for `no` / `fp32`."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
