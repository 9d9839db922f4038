"""DeBERTa-v2/v3's relative-position attention over the positions a batch can use, not all of them.

transformers' DeBERTa projects its whole relative-position table (2 × 256 rows for v3) through
query_proj and key_proj in every layer, copies it per sample and multiplies every token with every
row, then gathers the 2·L − 1 columns that a text of L tokens can reach (|i − j| < L). For a tweet
(~48 tokens) that is a fifth of the table, and the rest was ~22 % of a full-size training step
(docs/BENCHMARKS.md). `trim_relative_spans` makes each encoder forward use the rows around the
table's centre that its relative positions reach: the gathered scores are the same rows' (fp32:
bit-identical in the tests), and the dropout on the table then draws fewer masks. The span is kept
per thread, so threads sharing one model (a Predictor in the app) each use their own texts' span.
"""
from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DebertaV2Encoder,
    DisentangledSelfAttention,
)

_ACTIVE = threading.local()  # per thread: {id(_TrimmedSpan): span} of the encoder forwards running in it


class TrimmableDisentangledSelfAttention(DisentangledSelfAttention):
    """DeBERTa's attention whose `pos_ebd_size` is its encoder's span during a trimmed forward."""

    @property
    def pos_ebd_size(self) -> int:
        owner = self.__dict__.get("_clara_span_owner")
        span = owner.current() if owner is not None else None
        return self.__dict__["_clara_full_pos_ebd_size"] if span is None else span

    @pos_ebd_size.setter
    def pos_ebd_size(self, value: int) -> None:
        self.__dict__["_clara_full_pos_ebd_size"] = value


class _TrimmedSpan:
    """The `forward` and `get_rel_embedding` that one DebertaV2Encoder reads while trimmed (module docstring)."""

    def __init__(self, encoder: DebertaV2Encoder):
        self.encoder = encoder
        self.attentions = [layer.attention.self for layer in encoder.layer]
        self.full = self.attentions[0].pos_ebd_size  # rows = 2 × full; row full + r is relative position r
        for attention in self.attentions:
            full = attention.__dict__.pop("pos_ebd_size")
            attention.__class__ = TrimmableDisentangledSelfAttention
            attention.pos_ebd_size = full
            attention._clara_span_owner = self
        encoder.forward = self.forward  # no hooks: the explainers' own hooks are counted (tests)
        encoder.get_rel_embedding = self.rel_embedding
        encoder._clara_trimmed_span = self

    def current(self) -> int | None:
        """The span of this thread's forward through the encoder, None outside one (or untrimmed)."""
        return getattr(_ACTIVE, "spans", {}).get(id(self))

    def recomputes_in_backward(self) -> bool:
        """Gradient checkpointing re-runs the layers in backward, outside this forward (and on CUDA
        in autograd's own thread), where the span is not set: those forwards keep the whole table."""
        return self.encoder.training and torch.is_grad_enabled() and any(
            getattr(module, "gradient_checkpointing", False) is True for module in self.encoder.modules())

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The encoder's own forward, at the span its relative positions reach."""
        encoder = self.encoder
        # (attention_mask, output_hidden_states, output_attentions, query_states, relative_pos, ...)
        query_states = kwargs.get("query_states", args[3] if len(args) > 3 else None)
        relative_pos = kwargs.get("relative_pos", args[4] if len(args) > 4 else None)
        positions = encoder.get_rel_pos(hidden_states, query_states, relative_pos)
        span = int(positions.abs().max()) + 1
        if span >= self.full or self.recomputes_in_backward():
            return type(encoder).forward(encoder, hidden_states, *args, **kwargs)
        spans = _ACTIVE.__dict__.setdefault("spans", {})
        spans[id(self)] = span  # index r + span into rows [full - span, full + span) is row full + r
        try:
            return type(encoder).forward(encoder, hidden_states, *args, **kwargs)
        finally:
            spans.pop(id(self), None)

    def rel_embedding(self) -> torch.Tensor | None:
        encoder = self.encoder
        if not encoder.relative_attention:
            return None
        rows = encoder.rel_embeddings.weight
        span = self.current()
        if span is not None:
            rows = rows[self.full - span:self.full + span]
        if "layer_norm" in encoder.norm_rel_ebd:  # per row, so the rows kept are normalised as before
            rows = encoder.LayerNorm(rows)
        return rows

    def remove(self) -> None:
        for attention in self.attentions:
            full = attention.__dict__.pop("_clara_full_pos_ebd_size")
            del attention.__dict__["_clara_span_owner"]
            attention.__class__ = DisentangledSelfAttention
            attention.pos_ebd_size = full
        del self.encoder.forward
        del self.encoder.get_rel_embedding
        del self.encoder._clara_trimmed_span


def trim_relative_spans(model: nn.Module) -> int:
    """Trim the relative-position span of every DeBERTa-v2/v3 encoder in `model` that uses
    relative attention (idempotent); returns how many are trimmed."""
    count = 0
    for module in model.modules():
        if isinstance(module, DebertaV2Encoder) and module.relative_attention:
            if getattr(module, "_clara_trimmed_span", None) is None:
                _TrimmedSpan(module)
            count += 1
    return count


def untrim_relative_spans(model: nn.Module) -> int:
    """Undo trim_relative_spans (transformers' full span again); returns how many were trimmed."""
    trimmed = [m._clara_trimmed_span for m in model.modules() if getattr(m, "_clara_trimmed_span", None) is not None]
    for span in trimmed:
        span.remove()
    return len(trimmed)
