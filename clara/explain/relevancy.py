"""Class-specific relevancy for co-attention (Chefer, Gur & Wolf, ICCV 2021).

Four relevancy maps (text-text, image-image, text-image, image-text) start at I / 0 and are
updated with the gradient-weighted attention Ā = E_heads[(∇A ⊙ A)^+] through every
self-attention layer of both encoders (rule 6), then through the co-attention fusion (rules
10-11); the read-out follows CLARA's pooling. Each encoder's attention is found through its entry
in clara/model/backbones.py (returned by DeBERTa, recomputed beside SDPA for CLIP, SigLIP,
RoBERTa and XLM-R, with ∇A = ∇O·Vᵀ), by temporary hooks that act only for the calling thread and
never change a module's output. The method in detail: docs/METHOD.md, "Relevancy".
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from clara.explain.attention import PatchGrid, WordMap, check_fusion_attentions, patch_grid
from clara.explain.attributions import find_text_embedding_layer
from clara.model.backbones import AttentionLayout, text_backbone, vision_backbone

EXPLANATION_KIND = "explanation"
METHOD_NAME = ("gradient-weighted attention relevancy (Chefer et al. 2021): self-attention rule through every "
               "vision and text encoder layer, bi-modal rules 10-11 through the co-attention fusion; heads "
               "averaged, positive part")


@dataclass
class Relevancy:
    """Class-specific relevancy of one sample's text tokens and image patches."""
    target_index: int
    token_scores: np.ndarray  # [T]
    word_scores: np.ndarray  # [W]
    patch_scores: np.ndarray  # [g, g]
    cls_score: float | None  # relevancy of the vision encoder's CLS token (None: it has none, SigLIP)
    text_text: np.ndarray  # R_tt [T, T]
    text_image: np.ndarray  # R_ti [T, N]; N image tokens: CLS first when there is one, then the patches
    image_text: np.ndarray  # R_it [N, T]
    image_image: np.ndarray  # R_ii [N, N]
    layers: dict[str, int] = field(default_factory=dict)  # attention layers propagated, per stack
    method: str = METHOD_NAME
    kind: str = EXPLANATION_KIND


def gradient_weighted_attention(attention: torch.Tensor, gradient: torch.Tensor | None) -> torch.Tensor:
    """Ā = mean over heads of (∇A ⊙ A) clamped at 0; `attention` is [heads, Q, K]."""
    if gradient is None:  # the target does not depend on this attention
        return torch.zeros(attention.shape[1:], dtype=attention.dtype, device=attention.device)
    return (gradient * attention).clamp(min=0).mean(dim=0)


def normalise_self_relevancy(relevancy: torch.Tensor) -> torch.Tensor:
    """R̄ = (R - I) with rows summing to 1, plus I; rows of R - I that are all zero stay zero."""
    eye = torch.eye(relevancy.shape[-1], dtype=relevancy.dtype, device=relevancy.device)
    residual = relevancy - eye
    row_sums = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(row_sums > 0, residual / row_sums.clamp(min=torch.finfo(relevancy.dtype).tiny),
                           torch.zeros_like(residual))
    return residual + eye


def propagate_self_attention(attentions: list[torch.Tensor], gradients: list[torch.Tensor | None]) -> torch.Tensor:
    """Rule 6 over one encoder's layers ([heads, N, N] each), from R = I: R += Ā · R per layer."""
    n_tokens = attentions[0].shape[-1]
    relevancy = torch.eye(n_tokens, dtype=attentions[0].dtype, device=attentions[0].device)
    for attention, gradient in zip(attentions, gradients, strict=True):
        relevancy = relevancy + gradient_weighted_attention(attention, gradient) @ relevancy
    return relevancy


def propagate_co_attention(text_to_image: list[torch.Tensor], text_to_image_grads: list[torch.Tensor | None],
                           image_to_text: list[torch.Tensor], image_to_text_grads: list[torch.Tensor | None],
                           text_text: torch.Tensor | None = None, image_image: torch.Tensor | None = None
                           ) -> dict[str, torch.Tensor]:
    """Apply rules 10-11 layer by layer; attentions are per layer [heads, T, N] and [heads, N, T].

    `text_text` / `image_image`: the self-relevancy the encoders left (default I).
    Returns {"text_text", "text_image", "image_text", "image_image"}.
    """
    n_text, n_image = text_to_image[0].shape[-2:]
    like = text_to_image[0]
    r_tt = torch.eye(n_text, dtype=like.dtype, device=like.device) if text_text is None else text_text
    r_ii = torch.eye(n_image, dtype=like.dtype, device=like.device) if image_image is None else image_image
    r_ti = torch.zeros(n_text, n_image, dtype=like.dtype, device=like.device)
    r_it = torch.zeros(n_image, n_text, dtype=like.dtype, device=like.device)
    for a_ti, g_ti, a_it, g_it in zip(text_to_image, text_to_image_grads, image_to_text, image_to_text_grads):
        cam_ti = gradient_weighted_attention(a_ti, g_ti)  # text queries over image keys
        cam_it = gradient_weighted_attention(a_it, g_it)  # image queries over text keys
        r_tt_bar, r_ii_bar = normalise_self_relevancy(r_tt), normalise_self_relevancy(r_ii)
        add_ti = r_tt_bar.T @ cam_ti @ r_ii_bar
        add_tt = cam_ti @ r_it
        add_it = r_ii_bar.T @ cam_it @ r_tt_bar
        add_ii = cam_it @ r_ti
        r_ti, r_tt, r_it, r_ii = r_ti + add_ti, r_tt + add_tt, r_it + add_it, r_ii + add_ii
    return {"text_text": r_tt, "text_image": r_ti, "image_text": r_it, "image_image": r_ii}


def pooled_readout(maps: dict[str, torch.Tensor], text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token relevancy for CLARA's read-out (mean of valid text rows and of image rows, averaged).

    Returns (text token scores [T], image token scores [N]), identity contributions removed.
    """
    r_tt, r_ti, r_it, r_ii = maps["text_text"], maps["text_image"], maps["image_text"], maps["image_image"]
    weights = text_valid.to(r_tt.dtype)
    weights = weights / weights.sum().clamp(min=1.0)
    eye_t = torch.eye(r_tt.shape[0], dtype=r_tt.dtype, device=r_tt.device)
    eye_i = torch.eye(r_ii.shape[0], dtype=r_ii.dtype, device=r_ii.device)
    text_scores = 0.5 * (weights @ (r_tt - eye_t)) + 0.5 * r_it.mean(dim=0)
    image_scores = 0.5 * (weights @ r_ti) + 0.5 * (r_ii - eye_i).mean(dim=0)
    return text_scores * (text_valid > 0).to(r_tt.dtype), image_scores


def attention_gradients(score: torch.Tensor, attentions: list[torch.Tensor],
                        others: Sequence[torch.Tensor] = ()) -> list[torch.Tensor | None]:
    """d score / d A for each returned attention tensor A (None where the score does not depend on it),
    followed by d score / d X for each tensor X of `others`, all from one backward pass.

    `nn.MultiheadAttention` returns its weights as a view made AFTER they were used, so the view
    itself is off the output path; differentiating w.r.t. the view's base (the tensor that was
    used) and reading the gradient back through the view's strides gives the intended gradient.
    """
    sources = [a._base if a._base is not None else a for a in attentions]
    grads = torch.autograd.grad(score, sources + list(others), allow_unused=True)
    mapped: list[torch.Tensor | None] = []
    for attention, source, grad in zip(attentions, sources, grads):
        if grad is not None and source is not attention:
            grad = grad.as_strided(attention.size(), attention.stride(),
                                   attention.storage_offset() - source.storage_offset())
        mapped.append(grad)
    return mapped + list(grads[len(attentions):])


# ---------------------------------------------------------------------- encoder self-attention

@dataclass
class RecomputedAttention:
    """One self-attention call run without kept probabilities (SDPA): A [B, H, N, N] recomputed from
    the layer's q/k, values V [B, H, N, d], and the per-head output O [B, N, H*d] that is on the graph."""
    attention: torch.Tensor
    values: torch.Tensor
    heads_output: torch.Tensor


# A layer as recorded: its probabilities on the graph (returned by the module), or recomputed.
LayerAttention = torch.Tensor | RecomputedAttention


@dataclass
class EncoderAttentions:
    """What the encoder hooks recorded during one forward pass of the calling thread, per tower."""
    n_vision_layers: int
    n_text_layers: int
    vision: list[LayerAttention] = field(default_factory=list)
    text: list[LayerAttention] = field(default_factory=list)

    def check_complete(self) -> None:
        """Raise unless each encoder ran exactly once (every layer recorded once)."""
        if len(self.vision) != self.n_vision_layers or len(self.text) != self.n_text_layers:
            raise RuntimeError(f"recorded {len(self.vision)}/{self.n_vision_layers} vision and "
                               f"{len(self.text)}/{self.n_text_layers} text attention layers: relevancy needs "
                               "one forward pass that runs both encoders once")


def _tower_attention(model: nn.Module, tower: str) -> tuple[AttentionLayout, list[nn.Module], int]:
    """(layout, self-attention modules in order, heads) of `model.<tower>`, from clara/model/backbones.py."""
    module = getattr(model, tower)
    config = getattr(getattr(module, "backbone", module), "config", None)
    model_type = getattr(config, "model_type", None)
    entry = (vision_backbone if tower == "vision" else text_backbone)(str(model_type))
    if entry is None:
        raise ValueError(f"relevancy propagates through the {tower} encoder's self-attention, but "
                         f"clara/model/backbones.py has no entry for its model_type {model_type!r}")
    layout = entry.attention
    # By class name, subclasses included (clara.model.relative_span's DeBERTa attention).
    modules = [m for m in module.modules() if layout.module_class in {c.__name__ for c in type(m).__mro__}]
    if not modules:
        raise ValueError(f"relevancy propagates through the {tower} encoder's self-attention but found no "
                         f"{layout.module_class} in model.{tower} ({model_type})")
    return layout, modules, int(config.num_attention_heads)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*d] -> [B, H, N, d]."""
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


@contextmanager
def recording_encoder_attentions(model: nn.Module, text_mask: torch.Tensor | None = None
                                 ) -> Iterator[EncoderAttentions]:
    """Record the encoders' self-attention (with a route for its gradient) for the calling thread only.

    `text_mask` [B, T] (1 = real token) masks padded keys where the text attention is recomputed.
    Hooks are removed on exit; module outputs are never changed (see the module docstring).
    """
    owner = threading.get_ident()
    towers = {tower: _tower_attention(model, tower) for tower in ("vision", "text")}
    record = EncoderAttentions(n_vision_layers=len(towers["vision"][1]), n_text_layers=len(towers["text"][1]))
    pending_inputs: dict[int, torch.Tensor] = {}

    def remember_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() == owner:
            pending_inputs[id(module)] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def recompute(module: nn.Module, layout: AttentionLayout, heads: int, layers: list[LayerAttention],
                  padding: torch.Tensor | None, heads_output: torch.Tensor) -> None:
        hidden = pending_inputs.pop(id(module))
        with torch.no_grad():
            queries = _split_heads(module.get_submodule(layout.query)(hidden), heads)
            keys = _split_heads(module.get_submodule(layout.key)(hidden), heads)
            values = _split_heads(module.get_submodule(layout.value)(hidden), heads)
            scores = (queries @ keys.transpose(-1, -2)).float() * queries.shape[-1] ** -0.5
            if padding is not None:
                scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
        layers.append(RecomputedAttention(attention=probs, values=values.float(), heads_output=heads_output))

    def hooks_for(module: nn.Module, layout: AttentionLayout, heads: int, layers: list[LayerAttention],
                  padding: torch.Tensor | None) -> list[Any]:
        if layout.returns_probabilities:  # DeBERTa: ask for the probabilities (the flag it takes) and keep them
            def want_probs(m: nn.Module, args: tuple, kwargs: dict):
                if threading.get_ident() != owner:
                    return None
                if len(args) > 2:
                    return (*args[:2], True, *args[3:]), kwargs
                return args, {**kwargs, "output_attentions": True}

            def keep_probs(m: nn.Module, args: tuple, output: tuple) -> None:
                if threading.get_ident() == owner:
                    layers.append(output[1])
            return [module.register_forward_pre_hook(want_probs, with_kwargs=True),
                    module.register_forward_hook(keep_probs)]
        handles = [module.register_forward_pre_hook(remember_input, with_kwargs=True)]
        if layout.heads_output is not None:  # O is the input of the output projection (CLIP, SigLIP)
            def before_output(child: nn.Module, args: tuple) -> None:
                if threading.get_ident() == owner:
                    recompute(module, layout, heads, layers, padding, args[0])
            handles.append(module.get_submodule(layout.heads_output).register_forward_pre_hook(before_output))
        else:  # O is the module's first output (RoBERTa, XLM-R)
            def after_module(m: nn.Module, args: tuple, output: tuple) -> None:
                if threading.get_ident() == owner:
                    recompute(module, layout, heads, layers, padding, output[0])
            handles.append(module.register_forward_hook(after_module))
        return handles

    def text_on_graph(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner or output.requires_grad:
            return None
        return output.detach().requires_grad_(True)

    text_padding = None if text_mask is None else ~text_mask.bool()
    with ExitStack() as stack:  # each hook is removed on exit, even if a later registration fails
        stack.callback(find_text_embedding_layer(model)[1].register_forward_hook(text_on_graph).remove)
        for tower, (layout, modules, heads) in towers.items():
            layers, padding = (record.vision, None) if tower == "vision" else (record.text, text_padding)
            for module in modules:
                for handle in hooks_for(module, layout, heads, layers, padding):
                    stack.callback(handle.remove)
        yield record


def recomputed_attention_gradients(records: list[RecomputedAttention], heads_output_grads: list[torch.Tensor | None]
                                   ) -> list[torch.Tensor | None]:
    """∇A = ∇O · Vᵀ per head ([B, H, N, N]), from the gradient of each layer's per-head output."""
    gradients: list[torch.Tensor | None] = []
    for layer, grad in zip(records, heads_output_grads, strict=True):
        if grad is None:
            gradients.append(None)
            continue
        heads = layer.values.shape[1]
        gradients.append(_split_heads(grad.float(), heads) @ layer.values.transpose(-1, -2))
    return gradients


def _encoder_attention_gradients(score: torch.Tensor, fusion: list[torch.Tensor], encoders: EncoderAttentions
                                 ) -> tuple[list[torch.Tensor | None], list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """One backward pass: (d score / d A per fusion attention, [(A, d score / d A)] per encoder layer,
    vision layers first)."""
    layers = encoders.vision + encoders.text
    returned = [layer for layer in layers if isinstance(layer, torch.Tensor)]
    recomputed = [layer for layer in layers if isinstance(layer, RecomputedAttention)]
    grads = attention_gradients(score, fusion + returned, [layer.heads_output for layer in recomputed])
    returned_grads = iter(grads[len(fusion):len(fusion) + len(returned)])
    recomputed_grads = iter(recomputed_attention_gradients(recomputed, grads[len(fusion) + len(returned):]))
    pairs = [(layer, next(returned_grads)) if isinstance(layer, torch.Tensor) else
             (layer.attention, next(recomputed_grads)) for layer in layers]
    return grads[:len(fusion)], pairs


# ---------------------------------------------------------------------- the whole model

def co_attention_relevancy(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, target: int, words: WordMap) -> Relevancy:
    """Relevancy of one sample's tokens and patches for class `target`.

    Gradients are taken with `torch.autograd.grad` on a copy of the pixels that requires grad
    (so the graph exists even if every weight is frozen); no `.grad` is left on the weights and
    the temporary hooks are removed (see `recording_encoder_attentions`).
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"relevancy explains one sample; got a batch of {input_ids.shape[0]}")
    grid: PatchGrid = patch_grid(model)
    pixels = pixel_values.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with recording_encoder_attentions(model, text_mask=attention_mask) as encoders:
            output = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask,
                           output_attentions=True)
        check_fusion_attentions(output.attentions, grid)  # pooled fusion / ablations: NoFusionAttentionError
        encoders.check_complete()
        t2i, i2t = list(output.attentions.text_to_image), list(output.attentions.image_to_text)
        score = output.logits[0, int(target)]
        fusion_grads, encoder_layers = _encoder_attention_gradients(score, t2i + i2t, encoders)
    n_layers, n_vision_layers = len(t2i), len(encoders.vision)

    def first(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if t is None else t[0].detach().float() for t in tensors]

    def self_relevancy(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        return propagate_self_attention(first([a for a, _ in pairs]), first([g for _, g in pairs]))

    image_image = self_relevancy(encoder_layers[:n_vision_layers])
    text_text = self_relevancy(encoder_layers[n_vision_layers:])
    maps = propagate_co_attention(first(t2i), first(fusion_grads[:n_layers]), first(i2t),
                                  first(fusion_grads[n_layers:]), text_text=text_text, image_image=image_image)
    text_scores, image_scores = pooled_readout(maps, attention_mask[0].detach())
    token_scores = text_scores.cpu().numpy()
    image_scores_np = image_scores.cpu().numpy()
    return Relevancy(
        target_index=int(target),
        token_scores=token_scores,
        word_scores=words.pool(token_scores, reduce="sum"),
        patch_scores=image_scores_np[grid.first_patch:].reshape(grid.grid_size, grid.grid_size),
        cls_score=float(image_scores_np[0]) if grid.cls_token else None,
        layers={"vision_self_attention": n_vision_layers, "text_self_attention": len(encoders.text),
                "co_attention": n_layers},
        **{name: value.cpu().numpy() for name, value in maps.items()},
    )
