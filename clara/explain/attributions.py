"""Captum attributions of the target-class probability to words and pixels.

Text: integrated gradients on the output of the text encoder's embedding block (after its
LayerNorm, where the path from the padding baseline is smooth), one score per word. Image:
integrated gradients on `pixel_values` from the dataset-mean image, and occlusion with windows
of k x k patches aligned to the model's grid. Every IG result carries its completeness delta and
doubles its steps until `ExplainSettings.converged`. Only the attributed modality's encoder runs
per step, and the shared model is left as found (one hook, for the calling thread only). The
method in detail and why: docs/METHOD.md, "Attributions".
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

from clara.explain.attention import PatchGrid, WordMap, patch_grid, structural_special_ids
from clara.explain.settings import EXPLAIN_DEFAULTS, ExplainSettings
from clara.model.backbones import text_backbone

PROBABILITY_OUTPUT = "softmax probability of the target class"
TEXT_BASELINE = "special tokens kept, all other tokens replaced by the padding id (attention mask unchanged)"
IMAGE_BASELINE = "zeros in normalised pixel space, i.e. the dataset-mean colour image"


@dataclass
class TextAttribution:
    """Integrated-gradients scores of one sample's tokens and words."""
    target_index: int
    token_scores: np.ndarray  # [T]
    word_scores: np.ndarray  # [W]
    convergence_delta: float
    n_steps: int
    layer: str  # module path of the embedding layer
    method: str = "IntegratedGradients on the text embedding block's output"
    baseline: str = TEXT_BASELINE
    output: str = PROBABILITY_OUTPUT
    output_change: float | None = None  # f(input) - f(baseline), what the delta is measured against
    converged: bool | None = None  # ExplainSettings.converged(delta, output_change)
    steps_tried: tuple[int, ...] = ()  # steps of each try, the last one kept
    integration: str = EXPLAIN_DEFAULTS.integration


@dataclass
class ImageAttribution:
    """A pixel-attribution heatmap of one sample, per pixel of the model's view and per patch."""
    target_index: int
    pixel_scores: np.ndarray  # [S, S], summed over colour channels
    patch_scores: np.ndarray  # [g, g], summed over each patch's pixels
    convergence_delta: float | None  # None for occlusion (no completeness property)
    n_steps: int | None
    method: str
    baseline: str = IMAGE_BASELINE
    output: str = PROBABILITY_OUTPUT
    output_change: float | None = None  # IG: f(input) - f(baseline); None for occlusion
    converged: bool | None = None
    steps_tried: tuple[int, ...] = ()
    integration: str | None = None


# IG steps per batched forward/backward pass on CPU (docs/BENCHMARKS.md: larger batches run the
# full-size encoders' matmuls more efficiently; memory stays ~1-2 GiB at this size).
CPU_INTERNAL_BATCH = 32


def default_internal_batch_size(device: torch.device | str) -> int:
    """IG steps (or occlusion windows) per pass: CPU_INTERNAL_BATCH on CPU, by memory on a GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_INTERNAL_BATCH
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return 128 if total_gib >= 40 else 32


def find_word_embeddings(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the text encoder's token-embedding table, through any peft wrappers."""
    candidates: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.split(".")[-1] == "word_embeddings":
            candidates.setdefault(id(module), name)
    if not candidates:  # other naming: ask the text encoder for its input embeddings
        for name, module in model.named_modules():
            getter = getattr(module, "get_input_embeddings", None)
            if name and callable(getter):
                try:
                    embedding = getter()
                except (NotImplementedError, AttributeError):
                    continue
                if isinstance(embedding, nn.Embedding):
                    path = next((n for n, m in model.named_modules() if m is embedding), None)
                    if path:
                        candidates.setdefault(id(embedding), path)
    if len(candidates) != 1:
        found = sorted(candidates.values()) or "none"
        raise ValueError(f"expected exactly one text word-embedding layer in {type(model).__name__}, "
                         f"found {found}")
    path = next(iter(candidates.values()))
    return path, model.get_submodule(path)


def find_text_embedding_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the text encoder's embedding block: the one clara/model/backbones.py names for
    `model.text`'s architecture, else the parent of its word-embedding table."""
    text = getattr(model, "text", None)
    entry = text_backbone(str(getattr(getattr(text, "config", None), "model_type", None)))
    if entry is not None:
        base = text.get_base_model() if hasattr(text, "get_base_model") else text
        block = base.get_submodule(entry.embedding_block)
        return next(name for name, module in model.named_modules() if module is block), block
    table_path, _ = find_word_embeddings(model)
    parent_path = table_path.rpartition(".")[0]
    if not parent_path:
        raise ValueError(f"the word-embedding table {table_path!r} has no enclosing embedding block")
    return parent_path, model.get_submodule(parent_path)


def text_baseline_ids(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    """`input_ids` with every token that carries text (unknown tokens included) replaced by the padding id."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ValueError("the tokenizer has no padding token; the text baseline replaces words by it")
    special = torch.tensor(sorted(structural_special_ids(tokenizer)), dtype=input_ids.dtype, device=input_ids.device)
    keep = torch.isin(input_ids, special)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def class_probabilities(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, classes] softmax of CLARA's final logits."""
    output = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    return torch.softmax(output.logits.float(), dim=-1)


def encoder_tokens(model: nn.Module, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The encoders' tokens, detached, for the inputs given (None for an encoder not run): the fixed
    side of a one-modality attribution."""
    with torch.no_grad():
        vision_tokens, text_tokens = model.encode(pixel_values, input_ids, attention_mask,
                                                  vision=pixel_values is not None, text=input_ids is not None)
    return (None if vision_tokens is None else vision_tokens.detach(),
            None if text_tokens is None else text_tokens.detach())


def text_side_probabilities(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            vision_tokens: torch.Tensor) -> torch.Tensor:
    """[B, classes] probabilities with the text encoder run and the image side given as its tokens."""
    _, text_tokens = model.encode(None, input_ids, attention_mask, vision=False)
    vision_tokens = vision_tokens.expand(input_ids.shape[0], *vision_tokens.shape[1:])
    return torch.softmax(model.decide(vision_tokens, text_tokens, attention_mask).logits.float(), dim=-1)


def image_side_probabilities(model: nn.Module, pixel_values: torch.Tensor, text_tokens: torch.Tensor,
                             attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, classes] probabilities with the vision encoder run and the text side given as its tokens."""
    vision_tokens, _ = model.encode(pixel_values, None, None, text=False)
    batch = pixel_values.shape[0]
    text_tokens = text_tokens.expand(batch, *text_tokens.shape[1:])
    attention_mask = attention_mask.expand(batch, *attention_mask.shape[1:])
    return torch.softmax(model.decide(vision_tokens, text_tokens, attention_mask).logits.float(), dim=-1)


class _OutputOverride:
    """A thread-local stand-in for one shared module's output: while `hooked`, a forward pass in the
    owning thread records the module's output (`recorded`) or, when `values` is set, returns those
    instead; other threads see no change."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.owner = threading.get_ident()
        self.values: torch.Tensor | None = None
        self.recorded: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != self.owner:
            return None
        if self.values is not None:
            return self.values
        self.recorded = output
        return None

    @contextmanager
    def hooked(self) -> Iterator["_OutputOverride"]:
        handle = self.module.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()


@dataclass
class PathIntegral:
    """Integrated gradients along the straight path from a baseline to the input, summed over segments."""
    attributions: torch.Tensor  # [1, ...] like the input
    delta: float  # sum(attributions) - output_change
    output_change: float  # f(input) - f(baseline)
    steps: int  # gradient evaluations
    steps_tried: tuple[int, ...]  # evaluations after each refinement round
    converged: bool


def integrate_path(start: torch.Tensor, end: torch.Tensor, values: Callable[[torch.Tensor], torch.Tensor],
                   attribute: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], settings: ExplainSettings,
                   n_steps: int | None, batch: int) -> PathIntegral:
    """Composite quadrature of IG over [0, 1], refined where the completeness check says it is wrong.

    The path p(a) = start + a (end - start) is cut into segments; IG over [a, b] is IG with baseline
    p(a) and input p(b) (`attribute(lows, highs, nodes)` does a batch of segments with `nodes` Captum
    quadrature nodes each), and completeness holds per segment: its attributions must sum to
    f(p(b)) - f(p(a)) (`values(points)` gives f). The segment deltas add up to the total delta, so
    while the total is not `settings.converged`, the segments with the largest |delta| are halved
    (a batch's worth per round) until `settings.max_steps` evaluations. A sharp step of f along the
    path (a trained model's saturating softmax) gets the nodes it needs instead of raising them
    everywhere. `n_steps` given: one segment with exactly that many nodes.
    """
    fixed = n_steps is not None
    nodes = int(n_steps) if fixed else settings.nodes_per_segment
    count = 1 if fixed else max(1, settings.n_steps // nodes)
    budget = nodes if fixed else max(settings.max_steps, nodes * count)

    def points(alphas: list[float]) -> torch.Tensor:
        weights = torch.tensor(alphas, dtype=start.dtype, device=start.device).view(-1, *[1] * (start.dim() - 1))
        return start + weights * (end - start)

    # Segment lengths grow by `path_grading` from the baseline end: trained models often reach most of
    # their output change within the first few percent of the path (docs/BENCHMARKS.md).
    lengths = [settings.path_grading ** i for i in range(count)]
    edges = [0.0] + [sum(lengths[:i + 1]) / sum(lengths) for i in range(count)]
    edges[-1] = 1.0
    with torch.no_grad():
        f = dict(zip(edges, values(points(edges)).double().tolist()))
    segments = list(zip(edges[:-1], edges[1:]))
    pieces: dict[tuple[float, float], torch.Tensor] = {}
    sums: dict[tuple[float, float], float] = {}

    def run(new: list[tuple[float, float]]) -> None:
        lows, highs = points([a for a, _ in new]), points([b for _, b in new])
        result = attribute(lows, highs, nodes).detach()
        for index, segment in enumerate(new):
            pieces[segment] = result[index:index + 1]
            sums[segment] = float(result[index].double().sum())

    run(segments)
    steps, tried = nodes * len(segments), [nodes * len(segments)]
    change = f[1.0] - f[0.0]
    while True:
        deltas = {seg: sums[seg] - (f[seg[1]] - f[seg[0]]) for seg in segments}
        delta = sum(deltas.values())
        converged = settings.converged(delta, change)
        per_round = min(max(1, batch // (2 * nodes)), (budget - steps) // (2 * nodes))
        if converged or per_round < 1:
            break
        worst = sorted(segments, key=lambda seg: abs(deltas[seg]), reverse=True)[:per_round]
        middles = [(a + b) / 2 for a, b in worst]
        with torch.no_grad():
            f.update(zip(middles, values(points(middles)).double().tolist()))
        halves = [half for (a, b), m in zip(worst, middles) for half in ((a, m), (m, b))]
        run(halves)
        segments = sorted(set(segments) - set(worst) | set(halves))
        steps += nodes * len(halves)
        tried.append(steps)
    total = torch.stack([pieces[seg][0] for seg in segments]).sum(dim=0, keepdim=True)
    return PathIntegral(attributions=total, delta=delta, output_change=change, steps=steps,
                        steps_tried=tuple(tried), converged=converged)


def text_integrated_gradients(model: nn.Module, tokenizer, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor, target: int, words: WordMap, n_steps: int | None = None,
                              internal_batch_size: int | None = None, vision_tokens: torch.Tensor | None = None,
                              settings: ExplainSettings = EXPLAIN_DEFAULTS) -> TextAttribution:
    """Integrated gradients of the target probability w.r.t. the text embedding block's output (what
    Captum's LayerIntegratedGradients computes, run as IG over that output so that the path can be
    cut into segments: `integrate_path`).

    `n_steps`: exactly that many steps; None: `settings`' adaptive refinement. `vision_tokens`: the
    vision encoder's output for `pixel_values` (computed here when not given)."""
    layer_path, embedding = find_text_embedding_layer(model)
    batch = internal_batch_size or settings.internal_batch_size or default_internal_batch_size(input_ids.device)
    if vision_tokens is None:
        vision_tokens, _ = encoder_tokens(model, pixel_values=pixel_values)
    baseline_ids = text_baseline_ids(tokenizer, input_ids)
    override = _OutputOverride(embedding)

    def forward(layer_values: torch.Tensor, mask: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        override.values = layer_values  # the embedding block returns these instead of looking ids up
        try:
            ids = input_ids.expand(layer_values.shape[0], -1)  # only their shape is read
            return text_side_probabilities(model, ids, mask, vision)
        finally:
            override.values = None

    def values(points: torch.Tensor) -> torch.Tensor:
        return forward(points, attention_mask.expand(points.shape[0], -1), vision_tokens)[:, int(target)]

    ig = IntegratedGradients(forward)

    def attribute(lows: torch.Tensor, highs: torch.Tensor, nodes: int) -> torch.Tensor:
        n = lows.shape[0]
        return ig.attribute(inputs=highs, baselines=lows, target=int(target), n_steps=nodes,
                            additional_forward_args=(attention_mask.expand(n, -1),
                                                     vision_tokens.expand(n, *vision_tokens.shape[1:])),
                            method=settings.integration, internal_batch_size=max(batch, n))

    with override.hooked():
        with torch.no_grad():  # the block's outputs for the input and the baseline: the path's two ends
            text_side_probabilities(model, torch.cat([input_ids, baseline_ids]), attention_mask.expand(2, -1),
                                    vision_tokens)
        ends = override.recorded.detach()
        override.recorded = None
        result = integrate_path(ends[1:2], ends[0:1], values, attribute, settings, n_steps, batch)
    token_scores = result.attributions.float().sum(dim=-1)[0].cpu().numpy()
    return TextAttribution(target_index=int(target), token_scores=token_scores,
                           word_scores=words.pool(token_scores, reduce="sum"), convergence_delta=result.delta,
                           n_steps=result.steps, layer=layer_path, output_change=result.output_change,
                           converged=result.converged, steps_tried=result.steps_tried,
                           integration=settings.integration)


def _patch_sums(pixel_scores: torch.Tensor, grid: PatchGrid) -> np.ndarray:
    g, p = grid.grid_size, grid.patch_size
    return pixel_scores.reshape(g, p, g, p).sum(dim=(1, 3)).cpu().numpy()


def _image_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    def forward(pixels: torch.Tensor, text_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image_side_probabilities(model, pixels, text_tokens, mask)
    return forward


def image_integrated_gradients(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                               attention_mask: torch.Tensor, target: int, n_steps: int | None = None,
                               internal_batch_size: int | None = None, text_tokens: torch.Tensor | None = None,
                               settings: ExplainSettings = EXPLAIN_DEFAULTS) -> ImageAttribution:
    """Integrated gradients of the target probability w.r.t. the (normalised) pixels (`integrate_path`).

    `n_steps`: exactly that many steps; None: `settings`' adaptive refinement. `text_tokens`: the text
    encoder's output for `input_ids` (computed here when not given)."""
    grid = patch_grid(model)
    batch = internal_batch_size or settings.internal_batch_size or default_internal_batch_size(pixel_values.device)
    if text_tokens is None:
        _, text_tokens = encoder_tokens(model, input_ids=input_ids, attention_mask=attention_mask)
    pixels = pixel_values.detach().clone()
    forward = _image_forward(model)
    ig = IntegratedGradients(forward)

    def values(points: torch.Tensor) -> torch.Tensor:
        return forward(points, text_tokens, attention_mask)[:, int(target)]

    def attribute(lows: torch.Tensor, highs: torch.Tensor, nodes: int) -> torch.Tensor:
        n = lows.shape[0]
        return ig.attribute(inputs=highs, baselines=lows, target=int(target), n_steps=nodes,
                            additional_forward_args=(text_tokens.expand(n, *text_tokens.shape[1:]),
                                                     attention_mask.expand(n, -1)),
                            method=settings.integration, internal_batch_size=max(batch, n))

    result = integrate_path(torch.zeros_like(pixels), pixels, values, attribute, settings, n_steps, batch)
    pixel_scores = result.attributions.float()[0].sum(dim=0)
    return ImageAttribution(target_index=int(target), pixel_scores=pixel_scores.cpu().numpy(),
                            patch_scores=_patch_sums(pixel_scores, grid), convergence_delta=result.delta,
                            n_steps=result.steps, method="IntegratedGradients on pixel_values",
                            output_change=result.output_change, converged=result.converged,
                            steps_tried=result.steps_tried, integration=settings.integration)


def image_occlusion(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, target: int, internal_batch_size: int | None = None,
                    window_patches: int = 2, text_tokens: torch.Tensor | None = None) -> ImageAttribution:
    """Drop in target probability when `window_patches` x `window_patches` patches are replaced by the
    mean image (Captum Occlusion, one-patch stride); each patch gets the mean drop of its windows.
    `text_tokens`: the text encoder's output (computed here when not given; it does not change)."""
    grid = patch_grid(model)
    if not 1 <= int(window_patches) <= grid.grid_size:
        raise ValueError(f"window_patches={window_patches}: use 1 to the grid size {grid.grid_size}")
    batch = internal_batch_size or default_internal_batch_size(pixel_values.device)
    if text_tokens is None:
        _, text_tokens = encoder_tokens(model, input_ids=input_ids, attention_mask=attention_mask)
    p = grid.patch_size
    window = int(window_patches) * p
    pixels = pixel_values.detach().clone()
    with torch.no_grad():
        attributions = Occlusion(_image_forward(model)).attribute(
            inputs=pixels, sliding_window_shapes=(pixels.shape[1], window, window), strides=(pixels.shape[1], p, p),
            baselines=0.0, target=int(target), additional_forward_args=(text_tokens, attention_mask),
            perturbations_per_eval=batch)
    # Captum gives each pixel the mean drop of the windows covering it, constant within a patch.
    per_pixel = attributions.detach().float()[0, 0]
    g = grid.grid_size
    patch_scores = per_pixel.reshape(g, p, g, p).mean(dim=(1, 3)).cpu().numpy()
    return ImageAttribution(target_index=int(target), pixel_scores=per_pixel.cpu().numpy(),
                            patch_scores=patch_scores, convergence_delta=None, n_steps=None,
                            method=f"Occlusion, {window}x{window} windows ({window_patches}x{window_patches} patches) "
                                   f"sliding by one {p}-pixel patch")
