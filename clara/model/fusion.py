"""Fusion of the vision tokens and the text tokens into one vector per post.

`TokenCoAttentionFusion` (the paper's): text tokens attend to image tokens and image tokens to
the unpadded text tokens, layer by layer; both streams are mean-pooled and averaged, and each
layer's per-head weights can be returned for attention maps and relevancy. `PooledFusion` (the
notebooks', both variants; module names follow their state-dict keys, docs/FIDELITY.md): the
pooled text vector attends to the pooled vision vector. All attention goes through
`cross_attention` over `nn.MultiheadAttention` parameters (SDPA on the fast path).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FusionAttentions:
    """Per-layer, per-head attention weights of the token co-attention fusion.

    `text_to_image[l]`: [B, heads, T, P] (text queries over image keys; P = 1 + grid², CLS first).
    `image_to_text[l]`: [B, heads, P, T] (image queries over text keys; padded keys are exactly 0).
    Rows sum to 1. The tensors are the ones used in the forward computation, so gradients of the
    output with respect to them exist (Chefer et al. relevancy).
    """
    text_to_image: list[torch.Tensor]
    image_to_text: list[torch.Tensor]


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens whose `mask` is 1: [B, T, H], [B, T] -> [B, H]."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def cross_attention(attn: nn.MultiheadAttention, query: torch.Tensor, context: torch.Tensor,
                    context_padding: torch.Tensor | None = None,
                    need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`query` [B, Q, D] attends to `context` [B, K, D] with `attn`'s weights (batch first).

    `context_padding` [B, K] is True where a key is padding. Computes what `attn(query, context,
    context, key_padding_mask=context_padding)` computes; with `need_weights` it also returns the
    per-head softmax weights [B, heads, Q, K] (before attention dropout), which stay in the
    autograd graph: the output is computed from that very tensor.
    """
    batch, n_query, dim = query.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

    q = split_heads(F.linear(query, w_q, b_q))
    k = split_heads(F.linear(context, w_k, b_k))
    v = split_heads(F.linear(context, w_v, b_v))
    dropout = attn.dropout if attn.training else 0.0
    weights = None
    if need_weights:
        scores = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
        if context_padding is not None:
            scores = scores.masked_fill(context_padding[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        mixed = F.dropout(weights, dropout, training=dropout > 0) @ v
    else:
        keep = None if context_padding is None else ~context_padding[:, None, None, :]
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
    mixed = mixed.transpose(1, 2).reshape(batch, n_query, dim)
    return attn.out_proj(mixed), weights


def feed_forward(dim: int, dropout: float) -> nn.Sequential:
    """The 4x GELU FFN of a transformer block; its Linears sit at indices 0 and 3 (notebook keys)."""
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim),
                         nn.Dropout(dropout))


class CrossAttentionBlock(nn.Module):
    """Post-norm block: query stream <- LayerNorm(x + attend(x, context)), then LayerNorm(x + FFN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_padding: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = cross_attention(self.attn, query, context, context_padding, need_weights)
        x = self.norm1(query + attended)
        return self.norm2(x + self.ffn(x)), weights


class CoAttentionLayer(nn.Module):
    """One bidirectional layer: both streams are updated from the other's input to this layer."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.text_to_image = CrossAttentionBlock(dim, heads, dropout)
        self.image_to_text = CrossAttentionBlock(dim, heads, dropout)

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_padding: torch.Tensor, need_weights: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        new_text, text_weights = self.text_to_image(text, image, None, need_weights)
        new_image, image_weights = self.image_to_text(image, text, text_padding, need_weights)
        return new_text, new_image, text_weights, image_weights


class _ProjectedFusion(nn.Module):
    """Shared by both fusions: the projections to `hidden_dim` and the pooled single-modality vectors
    used by the text-only / image-only / no-co-attention ablations."""

    def __init__(self, vision_dim: int, text_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.v_proj = nn.Linear(vision_dim, hidden_dim)
        self.t_proj = nn.Linear(text_dim, hidden_dim)

    def pool_vision(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Projected mean of all vision tokens: [B, P, Dv] -> [B, H]."""
        return self.v_proj(vision_tokens.mean(dim=1))

    def pool_text(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Projected mean of the unpadded text tokens: [B, T, Dt] -> [B, H]."""
        return self.t_proj(masked_mean(text_tokens, text_mask))

    def merge_without_coattention(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor,
                                  text_mask: torch.Tensor) -> torch.Tensor:
        """The "w/o co-attention" ablation's fused vector, as every notebook computes it
        (MVSA-Single cells 22-23): F.layer_norm(0.5 * (pooled vision + pooled text)), no affine."""
        mean = 0.5 * (self.pool_vision(vision_tokens) + self.pool_text(text_tokens, text_mask))
        return F.layer_norm(mean, (self.hidden_dim,))


class TokenCoAttentionFusion(_ProjectedFusion):
    """The paper's token-level bidirectional co-attention (see the module docstring)."""

    def __init__(self, vision_dim: int, text_dim: int, hidden_dim: int = 512, layers: int = 2, heads: int = 8,
                 dropout: float = 0.1):
        super().__init__(vision_dim, text_dim, hidden_dim)
        self.layers = nn.ModuleList([CoAttentionLayer(hidden_dim, heads, dropout) for _ in range(layers)])

    def forward(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                output_attentions: bool = False) -> tuple[torch.Tensor, FusionAttentions | None]:
        """[B, P, Dv], [B, T, Dt], [B, T] (1 = real token) -> fused [B, H] and optional attentions."""
        text_padding = ~text_mask.bool()
        text = self.t_proj(text_tokens)
        image = self.v_proj(vision_tokens)
        attentions = FusionAttentions([], []) if output_attentions else None
        for layer in self.layers:
            text, image, text_weights, image_weights = layer(text, image, text_padding, output_attentions)
            if attentions is not None:
                attentions.text_to_image.append(text_weights)
                attentions.image_to_text.append(image_weights)
        fused = (masked_mean(text, text_mask) + image.mean(dim=1)) / 2
        return fused, attentions


class PooledFusion(_ProjectedFusion):
    """The notebooks' fusion of pooled vectors.

    variant "single" (MVSA-Single, HFM): `blocks.<i>` are post-norm blocks in which the text
    vector attends to the vision vector; the fused vector is the text stream.
    variant "multiple" (MVSA-Multiple, cell 10): `cross.<i>` is one attention module per layer
    used in both directions: the text attends to the vision vector (normed by `norms.<2i>`), then
    the vision vector attends to that just-updated text (`norms.<2i+1>`); `fuse` = Linear(2H -> H),
    LayerNorm, GELU, Dropout on the concatenation [vision, text].
    """

    def __init__(self, vision_dim: int, text_dim: int, hidden_dim: int = 512, layers: int = 2, heads: int = 8,
                 dropout: float = 0.1, variant: str = "single"):
        super().__init__(vision_dim, text_dim, hidden_dim)
        if variant not in ("single", "multiple"):
            raise ValueError(f"PooledFusion variant {variant!r} is not one of: single, multiple")
        self.variant = variant
        if variant == "single":
            self.blocks = nn.ModuleList([CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(layers)])
        else:
            self.cross = nn.ModuleList([nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
                                        for _ in range(layers)])
            self.norms = nn.ModuleList([nn.LayerNorm(hidden_dim) for _ in range(2 * layers)])
            self.fuse = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                      nn.Dropout(dropout))

    def forward(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                output_attentions: bool = False) -> tuple[torch.Tensor, None]:
        """Same signature as the token fusion; attentions are always None (one key per side)."""
        text = self.pool_text(text_tokens, text_mask).unsqueeze(1)
        vision = self.pool_vision(vision_tokens).unsqueeze(1)
        if self.variant == "single":
            for block in self.blocks:
                text, _ = block(text, vision)
            return text.squeeze(1), None
        for index, attn in enumerate(self.cross):
            text = self.norms[2 * index](text + cross_attention(attn, text, vision)[0])
            vision = self.norms[2 * index + 1](vision + cross_attention(attn, vision, text)[0])  # updated text
        return self.fuse(torch.cat([vision, text], dim=-1).squeeze(1)), None
