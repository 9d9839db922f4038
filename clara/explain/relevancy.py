"""Class-specific relevancy for co-attention (Chefer, Gur & Wolf, ICCV 2021).

"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers": four relevancy maps, text-text R_tt [T, T], image-image R_ii [N, N], text-image
R_ti [T, N] and image-text R_it [N, T] (N = 1 + P image tokens, CLS first), start as R_tt = I,
R_ii = I, R_ti = 0, R_it = 0 and are updated per attention layer, in the order the model runs
them, with the gradient-weighted attention

    Ā = E_heads[(∇A ⊙ A)^+]        (∇A = d logit_target / dA)

Self-attention layer of modality s (rule 6; R_sq stays 0 here because the encoders run before
any cross-modal mixing, so rule 7 adds nothing):

    R_ss += Ā_ss · R_ss

This runs over every layer of both encoders: the CLIP vision tower's self-attention (image
tokens) and DeBERTa's disentangled self-attention (text tokens), so the relevancy follows how
each encoder mixed its tokens before the fusion saw them.

Co-attention layer whose queries are modality s and keys modality q (rules 10 and 11):

    R_sq += R̄_ss^T · Ā_sq · R̄_qq         R_ss += Ā_sq · R_qs

where R̄ is the self-relevancy with its identity removed, rows normalised to sum to 1, and the
identity added back (the paper's residual normalisation; rows without any relevancy yet stay I).
CLARA's fusion has two such directions per layer (text queries over image keys and image
queries over text keys), computed from the same layer input, so both updates of a layer use
the relevancy maps as they were before that layer. The projections between the encoders and the
fusion act per token and carry the relevancy unchanged.

Read-out: CLARA classifies from the mean of the (unpadded) text tokens and the mean of all
image tokens, averaged; the relevancy of each input token for the target class is therefore the
same average over the rows of R (text rows: valid tokens only), with the identity (each token's
trivial relevancy for itself) removed so that 0 means "no evidence". Patch scores are the image
columns after CLS (CLS is reported apart). The result is labelled "explanation", unlike the raw
weights in attention.py.

Getting the encoders' attention with its gradient, without touching the shared model: hooks
are added for the duration of one call, act only for the calling thread, never change any
module's output, and are removed afterwards (other threads' forward passes are unaffected).
- DeBERTa computes its attention probabilities explicitly; a pre-hook asks its
  `DisentangledSelfAttention` modules to return them (the flag the module already takes).
- CLIP may run SDPA/flash attention, which keeps no probabilities, and switching
  `config._attn_implementation` would change the model for every thread. The hooks record
  each layer's input and the per-head output O = A·V (the input of `out_proj`); A is recomputed
  as softmax(q·kᵀ·scale) from the layer's own q/k projections (LoRA included; the vision tower
  has no attention mask and the model is in eval mode, so no dropout), and since A reaches the
  target only through O, ∇A = ∇O · Vᵀ per head, exactly.
- A prepared model's weights are all frozen, so nothing would put the text tower on the autograd
  graph: a hook on the text embedding block hands the calling thread's text encoder a copy of the
  block's output that requires grad (same values).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPAttention
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

from clara.explain.attention import PatchGrid, WordMap, check_fusion_attentions, patch_grid
from clara.explain.attributions import find_text_embedding_layer

EXPLANATION_KIND = "explanation"
METHOD_NAME = ("gradient-weighted attention relevancy (Chefer et al. 2021): self-attention rule through every "
               "CLIP vision and DeBERTa layer, bi-modal rules 10-11 through the co-attention fusion; heads "
               "averaged, positive part")


@dataclass
class Relevancy:
    """Class-specific relevancy of one sample's text tokens and image patches."""
    target_index: int
    token_scores: np.ndarray  # [T]
    word_scores: np.ndarray  # [W]
    patch_scores: np.ndarray  # [g, g]
    cls_score: float  # relevancy of CLIP's CLS token
    text_text: np.ndarray  # R_tt [T, T]
    text_image: np.ndarray  # R_ti [T, 1+P]
    image_text: np.ndarray  # R_it [1+P, T]
    image_image: np.ndarray  # R_ii [1+P, 1+P]
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

    Returns (text token scores [T], image token scores [1+P]), identity contributions removed.
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
class _ClipLayerRecord:
    """One CLIP attention call: probabilities A [B, H, N, N], values V [B, H, N, d], and the
    per-head output O [B, N, H*d] that is on the graph."""
    attention: torch.Tensor
    values: torch.Tensor
    heads_output: torch.Tensor


@dataclass
class EncoderAttentions:
    """What the encoder hooks recorded during one forward pass of the calling thread."""
    n_vision_layers: int
    n_text_layers: int
    vision: list[_ClipLayerRecord] = field(default_factory=list)
    text: list[torch.Tensor] = field(default_factory=list)  # DeBERTa probabilities [B, H, T, T], on the graph

    def check_complete(self) -> None:
        """Raise unless each encoder ran exactly once (every layer recorded once)."""
        if len(self.vision) != self.n_vision_layers or len(self.text) != self.n_text_layers:
            raise RuntimeError(f"recorded {len(self.vision)}/{self.n_vision_layers} vision and "
                               f"{len(self.text)}/{self.n_text_layers} text attention layers: relevancy needs "
                               "one forward pass that runs both encoders once")


def _attention_modules(model: nn.Module, kind: type, tower: str) -> list[nn.Module]:
    modules = [m for m in getattr(model, tower).modules() if isinstance(m, kind)]
    if not modules:
        raise ValueError(f"relevancy propagates through the {tower} encoder's self-attention but found no "
                         f"{kind.__name__} in model.{tower}; only CLIP vision and DeBERTa-v2/v3 encoders are "
                         "supported")
    return modules


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*d] -> [B, H, N, d]."""
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


@contextmanager
def recording_encoder_attentions(model: nn.Module) -> Iterator[EncoderAttentions]:
    """Record the encoders' self-attention (with a route for its gradient) for the calling thread only.

    Hooks are removed on exit; module outputs are never changed (see the module docstring).
    """
    owner = threading.get_ident()
    clip_modules = _attention_modules(model, CLIPAttention, "vision")
    deberta_modules = _attention_modules(model, DisentangledSelfAttention, "text")
    record = EncoderAttentions(n_vision_layers=len(clip_modules), n_text_layers=len(deberta_modules))
    pending_inputs: dict[int, torch.Tensor] = {}

    def clip_input(module: CLIPAttention, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() == owner:
            pending_inputs[id(module)] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def clip_heads_output(attention_module: CLIPAttention):
        def hook(out_proj: nn.Module, args: tuple) -> None:
            if threading.get_ident() != owner:
                return
            hidden = pending_inputs.pop(id(attention_module))
            heads = attention_module.num_heads
            with torch.no_grad():
                queries = _split_heads(attention_module.q_proj(hidden), heads)
                keys = _split_heads(attention_module.k_proj(hidden), heads)
                values = _split_heads(attention_module.v_proj(hidden), heads)
                probs = torch.softmax((queries @ keys.transpose(-1, -2)).float() * attention_module.scale, dim=-1)
            record.vision.append(_ClipLayerRecord(attention=probs, values=values.float(), heads_output=args[0]))
        return hook

    def deberta_want_probs(module: DisentangledSelfAttention, args: tuple, kwargs: dict):
        if threading.get_ident() != owner:
            return None
        if len(args) > 2:
            return (*args[:2], True, *args[3:]), kwargs
        return args, {**kwargs, "output_attentions": True}

    def deberta_probs(module: DisentangledSelfAttention, args: tuple, output: tuple) -> None:
        if threading.get_ident() == owner:
            record.text.append(output[1])

    def text_on_graph(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner or output.requires_grad:
            return None
        return output.detach().requires_grad_(True)

    with ExitStack() as stack:  # each hook is removed on exit, even if a later registration fails
        stack.callback(find_text_embedding_layer(model)[1].register_forward_hook(text_on_graph).remove)
        for module in clip_modules:
            stack.callback(module.register_forward_pre_hook(clip_input, with_kwargs=True).remove)
            stack.callback(module.out_proj.register_forward_pre_hook(clip_heads_output(module)).remove)
        for module in deberta_modules:
            stack.callback(module.register_forward_pre_hook(deberta_want_probs, with_kwargs=True).remove)
            stack.callback(module.register_forward_hook(deberta_probs).remove)
        yield record


def clip_attention_gradients(records: list[_ClipLayerRecord], heads_output_grads: list[torch.Tensor | None]
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
        with recording_encoder_attentions(model) as encoders:
            output = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask,
                           output_attentions=True)
        check_fusion_attentions(output.attentions, grid)  # pooled fusion / ablations: NoFusionAttentionError
        encoders.check_complete()
        t2i, i2t = list(output.attentions.text_to_image), list(output.attentions.image_to_text)
        score = output.logits[0, int(target)]
        grads = attention_gradients(score, t2i + i2t + encoders.text,
                                    [layer.heads_output for layer in encoders.vision])
    n_layers, n_text_layers = len(t2i), len(encoders.text)
    fusion_grads = grads[:2 * n_layers]
    text_grads = grads[2 * n_layers:2 * n_layers + n_text_layers]
    vision_grads = grads[2 * n_layers + n_text_layers:]

    def first(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if t is None else t[0].detach().float() for t in tensors]

    image_image = propagate_self_attention(first([layer.attention for layer in encoders.vision]),
                                           first(clip_attention_gradients(encoders.vision, vision_grads)))
    text_text = propagate_self_attention(first(encoders.text), first(text_grads))
    maps = propagate_co_attention(first(t2i), first(fusion_grads[:n_layers]), first(i2t),
                                  first(fusion_grads[n_layers:]), text_text=text_text, image_image=image_image)
    text_scores, image_scores = pooled_readout(maps, attention_mask[0].detach())
    token_scores = text_scores.cpu().numpy()
    image_scores_np = image_scores.cpu().numpy()
    return Relevancy(
        target_index=int(target),
        token_scores=token_scores,
        word_scores=words.pool(token_scores, reduce="sum"),
        patch_scores=image_scores_np[1:].reshape(grid.grid_size, grid.grid_size),
        cls_score=float(image_scores_np[0]),
        layers={"vision_self_attention": len(encoders.vision), "text_self_attention": len(encoders.text),
                "co_attention": n_layers},
        **{name: value.cpu().numpy() for name, value in maps.items()},
    )
