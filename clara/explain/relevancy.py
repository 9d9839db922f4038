"""Class-specific relevancy for co-attention (Chefer, Gur & Wolf, ICCV 2021).

"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers": four relevancy maps, text-text R_tt [T, T], image-image R_ii [P, P], text-image
R_ti [T, P] and image-text R_it [P, T], start as R_tt = I, R_ii = I, R_ti = 0, R_it = 0 and are
updated per attention layer with the gradient-weighted attention

    Ā = E_heads[(∇A ⊙ A)^+]        (∇A = d logit_target / dA)

For a co-attention layer whose queries are modality s and keys modality q (rules 10 and 11):

    R_sq += R̄_ss^T · Ā_sq · R̄_qq         R_ss += Ā_sq · R_qs

where R̄ is the self-relevancy with its identity removed, rows normalised to sum to 1, and the
identity added back (the paper's residual normalisation; rows without any relevancy yet stay I).
CLARA's fusion has two such directions per layer (text queries over image keys and image
queries over text keys), computed from the same layer input, so both updates of a layer use
the relevancy maps as they were before that layer. The fusion contains no self-attention, and
the relevancy starts at the encoders' output tokens (the encoders' own attention is not
propagated).

Read-out: CLARA classifies from the mean of the (unpadded) text tokens and the mean of all
image tokens, averaged; the relevancy of each token for the target class is therefore the
same average over the rows of R (text rows: valid tokens only), with the identity (each token's
trivial relevancy for itself) removed so that 0 means "no evidence". The result is labelled
"explanation", unlike the raw weights in attention.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clara.explain.attention import PatchGrid, WordMap, check_fusion_attentions, patch_grid

EXPLANATION_KIND = "explanation"
METHOD_NAME = ("gradient-weighted co-attention relevancy (Chefer et al. 2021, bi-modal rules 10-11; "
               "heads averaged, positive part)")


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


def propagate_co_attention(text_to_image: list[torch.Tensor], text_to_image_grads: list[torch.Tensor | None],
                           image_to_text: list[torch.Tensor], image_to_text_grads: list[torch.Tensor | None]
                           ) -> dict[str, torch.Tensor]:
    """Apply rules 10-11 layer by layer; attentions are per layer [heads, T, P] and [heads, P, T].

    Returns {"text_text", "text_image", "image_text", "image_image"}.
    """
    n_text, n_image = text_to_image[0].shape[-2:]
    like = text_to_image[0]
    r_tt = torch.eye(n_text, dtype=like.dtype, device=like.device)
    r_ii = torch.eye(n_image, dtype=like.dtype, device=like.device)
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


def attention_gradients(score: torch.Tensor, attentions: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """d score / d A for each returned attention tensor A (None where the score does not depend on it).

    `nn.MultiheadAttention` returns its weights as a view made AFTER they were used, so the view
    itself is off the output path; differentiating w.r.t. the view's base (the tensor that was
    used) and reading the gradient back through the view's strides gives the intended gradient.
    """
    sources = [a._base if a._base is not None else a for a in attentions]
    grads = torch.autograd.grad(score, sources, allow_unused=True)
    mapped: list[torch.Tensor | None] = []
    for attention, source, grad in zip(attentions, sources, grads):
        if grad is not None and source is not attention:
            grad = grad.as_strided(attention.size(), attention.stride(),
                                   attention.storage_offset() - source.storage_offset())
        mapped.append(grad)
    return mapped


def co_attention_relevancy(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, target: int, words: WordMap) -> Relevancy:
    """Relevancy of one sample's tokens and patches for class `target`.

    Gradients are taken with `torch.autograd.grad` (see `attention_gradients`) on a copy of the pixels that requires grad
    (so the graph exists even if every weight is frozen); no hooks, no `.grad` left on weights.
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"relevancy explains one sample; got a batch of {input_ids.shape[0]}")
    grid: PatchGrid = patch_grid(model)
    pixels = pixel_values.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask,
                       output_attentions=True)
        check_fusion_attentions(output.attentions, grid)
        t2i, i2t = list(output.attentions.text_to_image), list(output.attentions.image_to_text)
        score = output.logits[0, int(target)]
        grads = attention_gradients(score, t2i + i2t)
    n_layers = len(t2i)
    maps = propagate_co_attention([a[0].detach().float() for a in t2i],
                                  [None if g is None else g[0].float() for g in grads[:n_layers]],
                                  [a[0].detach().float() for a in i2t],
                                  [None if g is None else g[0].float() for g in grads[n_layers:]])
    text_scores, image_scores = pooled_readout(maps, attention_mask[0].detach())
    token_scores = text_scores.cpu().numpy()
    image_scores_np = image_scores.cpu().numpy()
    return Relevancy(
        target_index=int(target),
        token_scores=token_scores,
        word_scores=words.pool(token_scores, reduce="sum"),
        patch_scores=image_scores_np[1:].reshape(grid.grid_size, grid.grid_size),
        cls_score=float(image_scores_np[0]),
        **{name: value.cpu().numpy() for name, value in maps.items()},
    )
