"""Weights read from a checkpoint, checked before they reach the model: every tensor must have the
dtype the code builds for it (`load_state_dict` would silently cast int8 or float16 values) and
hold only finite numbers (NaN or inf weights give NaN probabilities for every post). Keys and
shapes are checked by `clara.checkpoint.folder`."""
from __future__ import annotations

from collections.abc import Mapping

import torch


class WeightsError(ValueError):
    """Stored tensors the model cannot use; the message names the tensor."""


def check_weights(stored: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Raise WeightsError for the first stored tensor whose dtype differs from `expected`'s (the
    model's own tensors, by key) or that holds NaN/inf."""
    other_dtype = [key for key, tensor in stored.items() if key in expected and tensor.dtype != expected[key].dtype]
    if other_dtype:
        key = other_dtype[0]
        more = f" (and {len(other_dtype) - 1} more tensors)" if len(other_dtype) > 1 else ""
        raise WeightsError(f"tensor {key}{more} is stored as {_dtype(stored[key])} but the model holds "
                           f"{_dtype(expected[key])}: the weights were converted, or written by other code")
    for key, tensor in stored.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(f"tensor {key} holds {bad:,} NaN/inf values (of {tensor.numel():,}): "
                                   "damaged weights; use another checkpoint or retrain")


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
