"""The one entry point: `Explainer(predictor).explain(image, text, target=None, methods=...)`.

Returns an `Explanation` of plain numpy arrays and Python values (nothing attached to a graph).
Each method is also callable on its own (`prepare` once, then `attention`, `relevancy`,
`text_attributions`, `image_attributions`, `occlusion`, `modality_share`, `deletion`), so the
app can compute them separately and show progress.

The explainer keeps no per-call state on itself or on the model: one instance (and the model
it wraps) can serve several threads. It never switches the model between train and eval mode;
the model must already be in eval mode (Predictor does that), otherwise dropout would make
every explanation random, which is refused with an error. It runs on the predictor's own
prepared model (LoRA merged) at the predictor's precision (`predictor.autocast()`); its defaults
are `clara.explain.settings.EXPLAIN_DEFAULTS`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from clara.data.images import ImageSource, open_image
from clara.jsonio import to_jsonable
from clara.explain.attention import (AttentionMaps, NoFusionAttentionError, PatchGrid, WordMap, attention_maps,
                                     build_word_map, overlay, patch_grid)
from clara.explain.attributions import (ImageAttribution, TextAttribution, default_internal_batch_size,
                                        encoder_tokens, image_integrated_gradients, image_occlusion,
                                        text_integrated_gradients)
from clara.explain.faithfulness import DeletionCurve, deletion_curves, modality_removal_drops
from clara.explain.relevancy import Relevancy, co_attention_relevancy
from clara.explain.settings import EXPLAIN_DEFAULTS, METHODS, ExplainSettings
SHARE_BY_ATTRIBUTION = ("integrated-gradients attribution mass: sum over words of |text LIG score| vs "
                        "sum over patches of |image IG score|, each as a fraction of the two")
SHARE_BY_REMOVAL = ("modality removal: |p(x) - p(text replaced by padding)| vs |p(x) - p(image replaced by "
                    "the mean image)| for the target class, each as a fraction of the two")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExplainInput:
    """One sample encoded for the model, with its words and the model's prediction.

    Tensors are detached inputs (batch of one); reuse one ExplainInput across method calls.
    """
    text: str
    pixel_values: torch.Tensor  # [1, 3, S, S]
    input_ids: torch.Tensor  # [1, T]
    attention_mask: torch.Tensor  # [1, T]
    words: WordMap
    grid: PatchGrid
    probs: np.ndarray  # [classes]
    label_index: int  # predicted
    target_index: int  # explained class (default: the predicted one)
    original_size: tuple[int, int]  # (width, height) of the original image
    text_truncated: bool
    vision_tokens: torch.Tensor | None = None  # the encoders' outputs (detached): the side held fixed
    text_tokens: torch.Tensor | None = None  # while the other modality is attributed


@dataclass
class ModalityShare:
    """How much of the decision for the target class comes from the text vs the image."""
    text: float  # fraction in [0, 1]; text + image = 1 (NaN when both masses are 0)
    image: float
    text_mass: float
    image_mass: float
    method: str


@dataclass
class Explanation:
    """Everything computed for one image + text, as plain arrays and values."""
    text: str
    labels: list[str]
    label: str  # predicted
    label_index: int
    probs: dict[str, float]
    target: str  # explained class
    target_index: int
    words: list[str]
    tokens: list[str]
    token_to_word: np.ndarray  # [T], -1 for special/padding tokens
    grid_size: int
    patch_size: int
    image_size: int
    original_size: tuple[int, int]
    text_truncated: bool
    attention: AttentionMaps | None = None
    relevancy: Relevancy | None = None
    text_ig: TextAttribution | None = None
    image_ig: ImageAttribution | None = None
    occlusion: ImageAttribution | None = None
    modality_share: ModalityShare | None = None
    deletion: list[DeletionCurve] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not computed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per method

    def heatmaps(self) -> dict[str, np.ndarray]:
        """Patch-grid heatmaps per computed method, ready for `overlay`."""
        maps: dict[str, np.ndarray] = {}
        if self.attention is not None:
            maps["attention"] = self.attention.text_to_image_map()
        if self.relevancy is not None:
            maps["relevancy"] = self.relevancy.patch_scores
        if self.image_ig is not None:
            maps["image_ig"] = self.image_ig.patch_scores
        if self.occlusion is not None:
            maps["occlusion"] = self.occlusion.patch_scores
        return maps

    def word_scores(self) -> dict[str, np.ndarray]:
        """Per-word scores per computed method."""
        scores: dict[str, np.ndarray] = {}
        if self.attention is not None:
            scores["attention"] = self.attention.image_to_text_weights()
        if self.relevancy is not None:
            scores["relevancy"] = self.relevancy.word_scores
        if self.text_ig is not None:
            scores["text_ig"] = self.text_ig.word_scores
        return scores

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: prediction, per-word and per-patch scores, deltas, shares, curves."""
        result: dict[str, Any] = {
            "text": self.text, "labels": self.labels, "label": self.label, "probs": self.probs,
            "target": self.target, "words": self.words, "grid_size": self.grid_size,
            "patch_size": self.patch_size, "image_size": self.image_size,
            "original_size": list(self.original_size), "text_truncated": self.text_truncated,
            "word_scores": _jsonable(self.word_scores()), "patch_scores": _jsonable(self.heatmaps()),
            "kinds": {"attention": "attention", "relevancy": "explanation"},
            "skipped": self.skipped, "timings_s": self.timings,
        }
        for name in ("relevancy", "text_ig", "image_ig", "occlusion"):
            value = getattr(self, name)
            if value is not None:
                result[name] = {k: v for k, v in _jsonable(asdict(value)).items()
                                if k in ("method", "baseline", "output", "convergence_delta", "n_steps", "layer",
                                         "kind", "cls_score", "output_change", "converged", "steps_tried",
                                         "integration")}
        if self.modality_share is not None:
            result["modality_share"] = _jsonable(asdict(self.modality_share))
        result["deletion"] = [_jsonable(asdict(curve)) for curve in self.deletion]
        return result


def _jsonable(value: Any) -> Any:
    return to_jsonable(value, nonfinite_as_none=True)  # strict JSON: NaN / inf become null


def resolve_target(target: int | str | None, labels: Sequence[str], predicted: int) -> int:
    """Class index from None (the predicted class), a label name or an index."""
    if target is None:
        return int(predicted)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in labels:
            raise ValueError(f"unknown target label {target!r}; labels: {', '.join(labels)}")
        return list(labels).index(target)
    index = int(target)
    if not 0 <= index < len(labels):
        raise ValueError(f"target index {index} is out of range for {len(labels)} labels ({', '.join(labels)})")
    return index


class Explainer:
    """Explanations of a `clara.inference.Predictor`'s model for single image + text posts."""

    def __init__(self, predictor: Any, n_steps: int | None = None, internal_batch_size: int | None = None,
                 deletion_points: int | None = None, deletion_random_orders: int | None = None,
                 seed: int | None = None, max_steps: int | None = None, settings: ExplainSettings = EXPLAIN_DEFAULTS):
        """Arguments left None take `settings`' values; `n_steps` is the first round of the adaptive
        integrated gradients (raising `max_steps` with it when it is larger)."""
        given = dict(n_steps=n_steps, internal_batch_size=internal_batch_size, deletion_points=deletion_points,
                     deletion_random_orders=deletion_random_orders, seed=seed, max_steps=max_steps)
        changes = {key: value for key, value in given.items() if value is not None}
        if n_steps is not None:
            changes["nodes_per_segment"] = min(settings.nodes_per_segment, int(n_steps))
            if max_steps is None:
                changes["max_steps"] = max(settings.max_steps, int(n_steps))
        self.predictor = predictor
        self.settings = dataclasses.replace(settings, **changes)

    @property
    def n_steps(self) -> int:
        return self.settings.n_steps

    @property
    def internal_batch_size(self) -> int | None:
        return self.settings.internal_batch_size

    @property
    def deletion_points(self) -> int | None:
        return self.settings.deletion_points

    @property
    def deletion_random_orders(self) -> int:
        return self.settings.deletion_random_orders

    @property
    def seed(self) -> int:
        return self.settings.seed

    def _precision(self) -> contextlib.AbstractContextManager:
        """The predictor's precision context (bf16 autocast or none); thread-local."""
        context = getattr(self.predictor, "autocast", None)
        return context() if callable(context) else contextlib.nullcontext()

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    @property
    def tokenizer(self) -> Any:
        return self.predictor.tokenizer

    @property
    def labels(self) -> list[str]:
        return list(self.predictor.labels)

    @property
    def device(self) -> torch.device:
        return torch.device(self.predictor.device)

    def batch_size(self) -> int:
        return self.internal_batch_size or default_internal_batch_size(self.device)

    # ------------------------------------------------------------------ inputs
    def prepare(self, image: ImageSource, text: str, target: int | str | None = None) -> ExplainInput:
        """Encode one post as the predictor does, merge its words, predict, resolve the target."""
        if self.model.training:
            raise RuntimeError("the model is in training mode (dropout on): explanations need model.eval(), "
                               "which Predictor.from_checkpoint sets")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the text is empty: explanations need a non-empty text")
        picture = open_image(image)
        batch = self.predictor.encode([picture], [text])
        # Plain copies on the model's device, outside any inference-mode context of the caller.
        pixel_values, input_ids, attention_mask = (
            batch[key].detach().clone().to(self.device) for key in ("pixel_values", "input_ids", "attention_mask"))
        grid = patch_grid(self.model)
        if tuple(pixel_values.shape[-2:]) != (grid.image_size, grid.image_size):
            raise ValueError(f"predictor.encode gave {tuple(pixel_values.shape[-2:])} pixels but model.image_stats "
                             f"says {grid.image_size}")
        words = build_word_map(self.tokenizer, text, input_ids[0].tolist(), attention_mask[0].tolist())
        with torch.no_grad(), self._precision():
            vision_tokens, text_tokens = encoder_tokens(self.model, pixel_values, input_ids, attention_mask)
            logits = self.model.decide(vision_tokens, text_tokens, attention_mask).logits
        probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy().astype(np.float64)
        predicted = int(probs.argmax())
        return ExplainInput(text=text, pixel_values=pixel_values, input_ids=input_ids,
                            attention_mask=attention_mask, words=words, grid=grid, probs=probs,
                            label_index=predicted, target_index=resolve_target(target, self.labels, predicted),
                            original_size=picture.size, text_truncated=bool(batch["text_truncated"][0]),
                            vision_tokens=vision_tokens, text_tokens=text_tokens)

    def _target(self, inputs: ExplainInput, target: int | str | None) -> int:
        return inputs.target_index if target is None else resolve_target(target, self.labels, inputs.label_index)

    # ------------------------------------------------------------------ methods
    def attention(self, inputs: ExplainInput) -> AttentionMaps:
        """Raw cross-modal attention, both directions, every layer and head (labelled "attention")."""
        with self._precision():
            return attention_maps(self.model, inputs.pixel_values, inputs.input_ids, inputs.attention_mask, inputs.words)

    def relevancy(self, inputs: ExplainInput, target: int | str | None = None) -> Relevancy:
        """Chefer et al. relevancy through both encoders' self-attention and the co-attention fusion, for the
        target class (labelled "explanation")."""
        with self._precision():
            return co_attention_relevancy(self.model, inputs.pixel_values, inputs.input_ids, inputs.attention_mask,
                                          self._target(inputs, target), inputs.words)

    def text_attributions(self, inputs: ExplainInput, target: int | str | None = None,
                          n_steps: int | None = None) -> TextAttribution:
        """Layer integrated gradients per word, with the convergence delta; `n_steps`: exactly that many
        steps, else the settings' adaptive schedule."""
        with self._precision():
            return text_integrated_gradients(self.model, self.tokenizer, inputs.pixel_values, inputs.input_ids,
                                             inputs.attention_mask, self._target(inputs, target), inputs.words,
                                             n_steps=n_steps, internal_batch_size=self.batch_size(),
                                             vision_tokens=inputs.vision_tokens, settings=self.settings)

    def image_attributions(self, inputs: ExplainInput, target: int | str | None = None,
                           n_steps: int | None = None) -> ImageAttribution:
        """Integrated gradients per pixel and per patch, with the convergence delta; `n_steps`: exactly
        that many steps, else the settings' adaptive schedule."""
        with self._precision():
            return image_integrated_gradients(self.model, inputs.pixel_values, inputs.input_ids,
                                              inputs.attention_mask, self._target(inputs, target), n_steps=n_steps,
                                              internal_batch_size=self.batch_size(), text_tokens=inputs.text_tokens,
                                              settings=self.settings)

    def occlusion(self, inputs: ExplainInput, target: int | str | None = None) -> ImageAttribution:
        """Probability drop when 2x2-patch windows (one-patch stride) are replaced by the mean image."""
        with self._precision():
            return image_occlusion(self.model, inputs.pixel_values, inputs.input_ids, inputs.attention_mask,
                                   self._target(inputs, target), internal_batch_size=self.batch_size(),
                                   text_tokens=inputs.text_tokens)

    def modality_share(self, inputs: ExplainInput, target: int | str | None = None,
                       text_ig: TextAttribution | None = None, image_ig: ImageAttribution | None = None
                       ) -> ModalityShare:
        """Text vs image share: from IG attribution mass when both IG results are given, else by removal."""
        index = self._target(inputs, target)
        if text_ig is not None and image_ig is not None:
            if text_ig.target_index != index or image_ig.target_index != index:
                raise ValueError("the IG results given were computed for another target class")
            text_mass = float(np.abs(text_ig.word_scores).sum())
            image_mass = float(np.abs(image_ig.patch_scores).sum())
            return share_from_masses(text_mass, image_mass, SHARE_BY_ATTRIBUTION)
        with self._precision():
            _, text_drop, image_drop = modality_removal_drops(
                self.model, self.tokenizer, inputs.pixel_values, inputs.input_ids, inputs.attention_mask,
                torch.tensor([index], device=self.device))
        return share_from_masses(abs(float(text_drop[0])), abs(float(image_drop[0])), SHARE_BY_REMOVAL)

    def deletion(self, inputs: ExplainInput, patch_scores: Mapping[str, np.ndarray],
                 word_scores: Mapping[str, np.ndarray], target: int | str | None = None) -> list[DeletionCurve]:
        """Deletion curves for the given rankings (method -> scores) plus a random order per modality."""
        with self._precision():
            return deletion_curves(self.model, self.tokenizer, inputs.pixel_values, inputs.input_ids,
                                   inputs.attention_mask, self._target(inputs, target), inputs.grid, inputs.words,
                                   dict(patch_scores), dict(word_scores), n_random=self.deletion_random_orders,
                                   seed=self.seed, max_points=self.deletion_points, batch_size=self.batch_size())

    # ------------------------------------------------------------------ all at once
    def explain(self, image: ImageSource, text: str, target: int | str | None = None,
                methods: Iterable[str] | None = None, progress: Progress | None = None) -> Explanation:
        """Compute the requested methods (default: the settings' `methods`, deletion curves off) for one
        post; `progress(method, done, total)` is called before each."""
        requested = list(dict.fromkeys(self.settings.methods if methods is None else methods))
        unknown = [m for m in requested if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown explanation method(s) {unknown}; choose from: {', '.join(METHODS)}")
        start = time.perf_counter()
        inputs = self.prepare(image, text, target)
        result = self._empty_explanation(inputs)
        result.timings["prepare"] = time.perf_counter() - start
        for done, method in enumerate(requested):
            if progress is not None:
                progress(method, done, len(requested))
            start = time.perf_counter()
            try:
                self._run_method(method, inputs, result)
            except NoFusionAttentionError as exc:  # pooled fusion: recorded, not substituted
                result.skipped[method] = str(exc)
                continue
            result.timings[method] = time.perf_counter() - start
        if progress is not None:
            progress("done", len(requested), len(requested))
        return result

    def _run_method(self, method: str, inputs: ExplainInput, result: Explanation) -> None:
        if method == "attention":
            result.attention = self.attention(inputs)
        elif method == "relevancy":
            result.relevancy = self.relevancy(inputs)
        elif method == "text_ig":
            result.text_ig = self.text_attributions(inputs)
        elif method == "image_ig":
            result.image_ig = self.image_attributions(inputs)
        elif method == "occlusion":
            result.occlusion = self.occlusion(inputs)
        elif method == "modality_share":
            result.modality_share = self.modality_share(inputs, text_ig=result.text_ig, image_ig=result.image_ig)
        elif method == "deletion":
            result.deletion = self.deletion(inputs, result.heatmaps(), result.word_scores())

    def _empty_explanation(self, inputs: ExplainInput) -> Explanation:
        labels = self.labels
        return Explanation(
            text=inputs.text, labels=labels, label=labels[inputs.label_index], label_index=inputs.label_index,
            probs={label: float(p) for label, p in zip(labels, inputs.probs)},
            target=labels[inputs.target_index], target_index=inputs.target_index,
            words=list(inputs.words.words), tokens=list(inputs.words.tokens),
            token_to_word=inputs.words.token_to_word.copy(), grid_size=inputs.grid.grid_size,
            patch_size=inputs.grid.patch_size, image_size=inputs.grid.image_size,
            original_size=inputs.original_size, text_truncated=inputs.text_truncated)


def share_from_masses(text_mass: float, image_mass: float, method: str) -> ModalityShare:
    total = text_mass + image_mass
    text = text_mass / total if total > 0 else float("nan")
    return ModalityShare(text=text, image=1.0 - text if total > 0 else float("nan"),
                         text_mass=text_mass, image_mass=image_mass, method=method)


def overlay_image(image: ImageSource, heatmap: np.ndarray, alpha: float = 0.5,
                  image_size: int | None = None) -> np.ndarray:
    """`overlay` for any image source (path, bytes, PIL); see clara.explain.attention.overlay."""
    picture = image if isinstance(image, Image.Image) else open_image(image)
    return overlay(picture, heatmap, alpha=alpha, image_size=image_size)
