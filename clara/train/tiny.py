"""The tiny model setting: tiny encoders plus a fusion and heads scaled down to match them.

`model.encoders=tiny` alone keeps the preset's 512-wide fusion and heads, which then dominate a
training step (issue 14: the fusion's backward is ~40 % of it). Tests, the demos and smoke runs
train with these overrides instead; they are config overrides like any others, so a checkpoint's
config.json records them.
"""
from __future__ import annotations

TINY_MODEL: dict[str, str] = {
    "model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4", "model.head_hidden_dim": "64",
}


def tiny_model_args() -> list[str]:
    """TINY_MODEL as the `--set key=value` arguments of the training and evaluation scripts."""
    return [arg for key, value in TINY_MODEL.items() for arg in ("--set", f"{key}={value}")]
