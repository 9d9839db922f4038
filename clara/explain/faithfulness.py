"""Faithfulness checks: deletion curves and modality removal.

Deletion curve (Petsiuk et al. 2018 style): remove the units (image patches or words) a method
ranks most relevant first and record the target-class probability after each step. Removing a
unit means the same baseline the attributions use: a patch becomes the dataset-mean image
(zeros in normalised space), a word's tokens become the padding id (attention mask unchanged).
A faithful ranking makes the curve fall fast, i.e. a small area under it; a random order is the
reference.

Modality removal: the drop in target probability when the whole text (or image) is replaced by
its baseline; by IG's completeness this equals the sum of that modality's IG attributions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clara.explain.attention import PatchGrid, WordMap
from clara.explain.attributions import class_probabilities, text_baseline_ids

RANDOM_METHOD = "random"


@dataclass
class DeletionCurve:
    """Target probability as a growing fraction of the ranked units is removed."""
    method: str
    modality: str  # "image" (patches) or "text" (words)
    fractions: np.ndarray  # [n] from 0 to 1
    probs: np.ndarray  # [n]
    auc: float  # area under probs over fractions (trapezoid); smaller = more faithful ranking
    n_units: int


def deletion_steps(n_units: int, max_points: int | None = None) -> np.ndarray:
    """How many units are removed at each point: 0 .. n_units, at most `max_points` points."""
    points = n_units + 1 if max_points is None else min(n_units + 1, max(int(max_points), 2))
    return np.unique(np.rint(np.linspace(0, n_units, points)).astype(np.int64))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Unit indices, most relevant (highest score) first; ties keep index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")


def random_orders(n_units: int, n_orders: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_units) for _ in range(n_orders)]


def _batched_probs(model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                   target: int, batch_size: int) -> np.ndarray:
    probs = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], batch_size):
            end = start + batch_size
            probs.append(class_probabilities(model, pixels[start:end], ids[start:end], mask[start:end])[:, target])
    return torch.cat(probs).cpu().numpy().astype(np.float64)


def _curve(method: str, modality: str, steps: np.ndarray, n_units: int, probs: np.ndarray) -> DeletionCurve:
    fractions = steps / max(n_units, 1)
    return DeletionCurve(method=method, modality=modality, fractions=fractions, probs=probs,
                         auc=float(np.trapezoid(probs, fractions)), n_units=n_units)


def image_deletion_probs(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, target: int, grid: PatchGrid, order: np.ndarray,
                         steps: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Target probability after blanking the first `k` patches of `order`, for each k in `steps`."""
    p, g = grid.patch_size, grid.grid_size
    removed = np.zeros((len(steps), grid.n_patches), dtype=bool)
    for row, k in enumerate(steps):
        removed[row, order[:k]] = True
    # [n, g, g] patch mask -> [n, 1, S, S] pixel mask
    keep = torch.from_numpy(~removed).reshape(-1, 1, g, 1, g, 1).expand(-1, 1, g, p, g, p)
    keep = keep.reshape(len(steps), 1, g * p, g * p).to(pixel_values.device, pixel_values.dtype)
    pixels = pixel_values.detach() * keep
    n = len(steps)
    return _batched_probs(model, pixels, input_ids.expand(n, -1), attention_mask.expand(n, -1), target, batch_size)


def text_deletion_probs(model: torch.nn.Module, tokenizer, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor, target: int, words: WordMap, order: np.ndarray,
                        steps: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Target probability after replacing the first `k` words of `order` by padding, per k in `steps`."""
    baseline = text_baseline_ids(tokenizer, input_ids)[0]
    token_word = torch.from_numpy(words.token_to_word).to(input_ids.device)
    rows = []
    for k in steps:
        removed = torch.isin(token_word, torch.as_tensor(order[:k], dtype=token_word.dtype, device=token_word.device))
        rows.append(torch.where(removed, baseline, input_ids[0]))
    ids = torch.stack(rows)
    n = len(steps)
    return _batched_probs(model, pixel_values.detach().expand(n, -1, -1, -1), ids, attention_mask.expand(n, -1),
                          target, batch_size)


def deletion_curves(model: torch.nn.Module, tokenizer, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, target: int, grid: PatchGrid, words: WordMap,
                    patch_scores: dict[str, np.ndarray], word_scores: dict[str, np.ndarray],
                    n_random: int = 3, seed: int = 0, max_points: int | None = 50,
                    batch_size: int = 8) -> list[DeletionCurve]:
    """One curve per method and modality, plus a "random" curve (mean of `n_random` orders) per modality."""
    curves: list[DeletionCurve] = []
    image_steps = deletion_steps(grid.n_patches, max_points)
    text_steps = deletion_steps(words.n_words, max_points)

    def image_probs(order: np.ndarray) -> np.ndarray:
        return image_deletion_probs(model, pixel_values, input_ids, attention_mask, target, grid, order,
                                    image_steps, batch_size)

    def text_probs(order: np.ndarray) -> np.ndarray:
        return text_deletion_probs(model, tokenizer, pixel_values, input_ids, attention_mask, target, words,
                                   order, text_steps, batch_size)

    for modality, scores_by_method, steps, n_units, probs_for in (
            ("image", patch_scores, image_steps, grid.n_patches, image_probs),
            ("text", word_scores, text_steps, words.n_words, text_probs)):
        if not scores_by_method or n_units == 0:
            continue
        for method, scores in scores_by_method.items():
            if np.asarray(scores).size != n_units:
                raise ValueError(f"{method} gives {np.asarray(scores).size} {modality} scores for {n_units} units")
            curves.append(_curve(method, modality, steps, n_units, probs_for(ranking(scores))))
        random_probs = np.mean([probs_for(order) for order in random_orders(n_units, n_random, seed)], axis=0)
        curves.append(_curve(RANDOM_METHOD, modality, steps, n_units, random_probs))
    return curves


def modality_removal_drops(model: torch.nn.Module, tokenizer, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, targets: torch.Tensor
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: (p(target), p(x) - p(text removed), p(x) - p(image removed)) for a batch."""
    with torch.no_grad():
        full = class_probabilities(model, pixel_values, input_ids, attention_mask)
        no_text = class_probabilities(model, pixel_values, text_baseline_ids(tokenizer, input_ids), attention_mask)
        no_image = class_probabilities(model, torch.zeros_like(pixel_values), input_ids, attention_mask)
    index = targets.reshape(-1, 1).to(full.device)
    p_full, p_text, p_image = (t.gather(1, index)[:, 0].cpu().numpy().astype(np.float64)
                               for t in (full, no_text, no_image))
    return p_full, p_full - p_text, p_full - p_image
