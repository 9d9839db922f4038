"""Raw cross-modal attention of the token co-attention fusion, and what displays it.

- `PatchGrid` / `patch_grid(model)`: the image-token layout, derived from `model.image_stats`
  (7x7 for patch32 and 14x14 for patch16 at 224 px; CLS token first, or none), never hard-coded.
- `WordMap` / `build_word_map(...)`: sub-word tokens merged back to the whitespace-separated
  words of the text (special and padding tokens dropped), with the token -> word mapping.
- `fusion_attentions(...)` (batched) and `attention_maps(...)` (one sample, as `AttentionMaps`):
  the fusion's attention weights in both directions. They are labelled "attention": weights
  of the forward pass, not a class-specific explanation (see relevancy.py for that).
- `crop_box(...)` and `overlay(...)`: a heatmap over the model's (resized, center-cropped) view
  drawn onto the ORIGINAL image; pixels outside the crop get no heat.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from clara.data.dataset import TOKENIZER_LOCK
from clara.explain.colours import SEQUENTIAL_NAME

ATTENTION_KIND = "attention"


# --------------------------------------------------------------------------- patch grid
@dataclass(frozen=True)
class PatchGrid:
    """Layout of the vision encoder's image tokens: CLS first when `cls_token` (CLIP; SigLIP has
    none), then `grid_size**2` patches row-major."""
    image_size: int
    patch_size: int
    grid_size: int
    cls_token: bool = True

    @property
    def n_patches(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def first_patch(self) -> int:
        """Index of the first patch among the image tokens (1 after a CLS token, else 0)."""
        return int(self.cls_token)

    @property
    def n_image_tokens(self) -> int:
        return self.n_patches + self.first_patch

    def patch_box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of patch `index` (row-major) in model-input pixels, x1/y1 exclusive."""
        row, col = divmod(int(index), self.grid_size)
        p = self.patch_size
        return col * p, row * p, (col + 1) * p, (row + 1) * p


def _side(value: Any, what: str) -> int:
    """A square side from an int, a (h, w) pair or a {"height", "width"} dict."""
    if isinstance(value, dict):
        value = (value.get("height"), value.get("width"))
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"model.image_stats.{what}={value!r}: only square images and patches are supported")
        value = value[0]
    return int(value)


def patch_grid(model: torch.nn.Module) -> PatchGrid:
    """The patch grid of `model`'s vision encoder, from `model.image_stats`."""
    stats = getattr(model, "image_stats", None)
    if stats is None:
        raise AttributeError(f"{type(model).__name__} has no image_stats; explanations need the "
                             "model's image size and patch size (clara.model.create_model sets them)")
    size = _side(stats.size, "size")
    patch = _side(stats.patch_size, "patch_size")
    grid = getattr(stats, "grid_size", None)
    grid = _side(grid, "grid_size") if grid is not None else size // patch
    if grid * patch != size:
        raise ValueError(f"model.image_stats: image size {size} is not grid {grid} x patch {patch}")
    cls_token = bool(getattr(stats, "cls_token", True))
    return PatchGrid(image_size=size, patch_size=patch, grid_size=grid, cls_token=cls_token)


# --------------------------------------------------------------------------- words
@dataclass
class WordMap:
    """The words of a text and which model tokens make up each one."""
    words: list[str]
    tokens: list[str]  # every token of the model input, special and padding ones included
    token_to_word: np.ndarray  # [T] int: word index, -1 for special and padding tokens

    @property
    def n_words(self) -> int:
        return len(self.words)

    def word_tokens(self, word: int) -> np.ndarray:
        return np.flatnonzero(self.token_to_word == word)

    def membership(self) -> np.ndarray:
        """[T, W] 0/1 matrix: token t belongs to word w."""
        matrix = np.zeros((len(self.token_to_word), self.n_words), dtype=np.float64)
        rows = np.flatnonzero(self.token_to_word >= 0)
        matrix[rows, self.token_to_word[rows]] = 1.0
        return matrix

    def pool(self, token_values: np.ndarray, axis: int = -1, reduce: str = "sum") -> np.ndarray:
        """Combine per-token values along `axis` into per-word values (sum or mean over sub-words)."""
        values = np.moveaxis(np.asarray(token_values, dtype=np.float64), axis, -1)
        matrix = self.membership()
        pooled = values @ matrix
        if reduce == "mean":
            pooled = pooled / np.maximum(matrix.sum(axis=0), 1.0)
        elif reduce != "sum":
            raise ValueError(f"reduce={reduce!r}: use 'sum' or 'mean'")
        return np.moveaxis(pooled, -1, axis)


def structural_special_ids(tokenizer: Any) -> set[int]:
    """Ids of special tokens that carry no text (CLS, SEP, PAD, ...). The unknown token is not one
    of them: it stands for a real word the vocabulary lacks."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.discard(getattr(tokenizer, "unk_token_id", None))
    return special


_WORD_MARKERS = ("\u2581", "\u0120")  # sentencepiece "▁", byte-level BPE "Ġ"


def build_word_map(tokenizer: Any, text: str, input_ids: Sequence[int],
                   attention_mask: Sequence[int] | None = None) -> WordMap:
    """Map the model tokens of `text` back to its whitespace-separated words.

    Uses the fast tokenizer's character offsets when re-tokenizing `text` gives the same ids
    (words then keep their original spelling and match "word index among whitespace tokens");
    otherwise merges by sub-word markers ("##" continuations, "▁"/"Ġ" word starts).
    Words that lost all their tokens to truncation are left out.
    """
    ids = [int(i) for i in input_ids]
    mask = [1] * len(ids) if attention_mask is None else [int(m) for m in attention_mask]
    tokens = list(tokenizer.convert_ids_to_tokens(ids))
    special = structural_special_ids(tokenizer)
    content = [m == 1 and i not in special for i, m in zip(ids, mask)]
    offsets = _token_offsets(tokenizer, text, ids, mask)
    if offsets is not None:
        words, raw = _words_from_offsets(text, offsets, content)
    else:
        words, raw = _words_from_markers(tokens, content)
    # Keep only words that own at least one token, renumbered in order.
    used = sorted({w for w in raw if w >= 0})
    renumber = {old: new for new, old in enumerate(used)}
    token_to_word = np.array([renumber.get(w, -1) for w in raw], dtype=np.int64)
    return WordMap(words=[words[w] for w in used], tokens=tokens, token_to_word=token_to_word)


def _token_offsets(tokenizer: Any, text: str, ids: list[int], mask: list[int]) -> list[tuple[int, int]] | None:
    n_valid = sum(mask)
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        with TOKENIZER_LOCK:
            encoding = tokenizer(text, truncation=True, max_length=max(n_valid, 1),
                                 return_offsets_mapping=True, add_special_tokens=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    valid_ids = [i for i, m in zip(ids, mask) if m == 1]
    if list(encoding["input_ids"]) != valid_ids:
        return None
    spans = iter(encoding["offset_mapping"])
    return [tuple(next(spans)) if m == 1 else (0, 0) for m in mask]


def _words_from_offsets(text: str, offsets: list[tuple[int, int]], content: list[bool]) -> tuple[list[str], list[int]]:
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    char_word = np.full(len(text) + 1, -1, dtype=np.int64)
    for index, (start, end) in enumerate(spans):
        char_word[start:end] = index
    raw: list[int | None] = []
    for (start, end), is_content in zip(offsets, content):
        if not is_content:
            raw.append(-1)
            continue
        hits = char_word[start:end]
        hits = hits[hits >= 0]
        raw.append(int(hits[0]) if len(hits) else None)  # None: a bare marker token, e.g. "▁"
    return [text[s:e] for s, e in spans], _attach_bare_tokens(raw)


def _words_from_markers(tokens: list[str], content: list[bool]) -> tuple[list[str], list[int]]:
    wordpiece = any(t.startswith("##") for t, c in zip(tokens, content) if c)
    marked = any(t.startswith(_WORD_MARKERS) for t, c in zip(tokens, content) if c)
    words: list[str] = []
    raw: list[int] = []
    for token, is_content in zip(tokens, content):
        if not is_content:
            raw.append(-1)
            continue
        if wordpiece:
            starts = not token.startswith("##")
            piece = token[2:] if not starts else token
        elif marked:
            starts = token.startswith(_WORD_MARKERS)
            piece = token.lstrip("".join(_WORD_MARKERS))
        else:
            starts, piece = True, token
        if starts or not words:
            words.append(piece)
        else:
            words[-1] += piece
        raw.append(len(words) - 1)
    return words, raw


def _attach_bare_tokens(raw: list[int | None]) -> list[int]:
    """A token without word characters belongs to the next word (or the previous at the end)."""
    resolved = list(raw)
    following = -1
    for index in range(len(resolved) - 1, -1, -1):
        if resolved[index] is None:
            resolved[index] = following
        elif resolved[index] >= 0:
            following = resolved[index]
    previous = -1
    for index, word in enumerate(raw):
        if word is None and resolved[index] == -1:
            resolved[index] = previous
        if word is not None and word >= 0:
            previous = word
    return [int(w) for w in resolved]


# --------------------------------------------------------------------------- attention
def _model_inputs(pixel_values: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class NoFusionAttentionError(ValueError):
    """The model returned no token attention (pooled fusion): nothing to show or propagate."""


def check_fusion_attentions(attentions: Any, grid: PatchGrid) -> None:
    """Raise a clear error when the model returned no token attention or another grid."""
    if attentions is None or not getattr(attentions, "text_to_image", None):
        raise NoFusionAttentionError("the model returned no fusion attentions: attention maps and relevancy need "
                         "the token co-attention fusion (model.fusion=token), not the pooled one")
    n_keys = attentions.text_to_image[0].shape[-1]
    if n_keys == 1:  # pooled fusion: one vector attends to one vector, the weight is trivially 1
        raise NoFusionAttentionError("the fusion attends over a single pooled image vector: attention maps and "
                                     "relevancy need the token co-attention fusion (model.fusion=token), not "
                                     "the pooled one")
    if n_keys != grid.n_image_tokens:
        raise ValueError(f"the fusion attends over {n_keys} image tokens but model.image_stats gives a "
                         f"{grid.grid_size}x{grid.grid_size} grid{' + CLS' if grid.cls_token else ''} = "
                         f"{grid.n_image_tokens}")


@torch.no_grad()
def fusion_attentions(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The fusion's attention weights for a batch, as numpy arrays.

    Returns (text_to_image [B, layers, heads, T, N], image_to_text [B, layers, heads, N, T]) over
    the N image tokens: the CLS token first when the encoder has one (CLIP), then the patch grid row-major.
    """
    output = model(**_model_inputs(pixel_values, input_ids, attention_mask), output_attentions=True)
    check_fusion_attentions(output.attentions, patch_grid(model))
    text_to_image = torch.stack([a.detach().float() for a in output.attentions.text_to_image], dim=1)
    image_to_text = torch.stack([a.detach().float() for a in output.attentions.image_to_text], dim=1)
    return text_to_image.cpu().numpy(), image_to_text.cpu().numpy()


@dataclass
class AttentionMaps:
    """Raw fusion attention of one sample, both directions, every layer and head."""
    text_to_image: np.ndarray  # [layers, heads, T, g, g]: weight of each text token on each patch
    text_to_image_cls: np.ndarray | None  # [layers, heads, T]: weight on the CLS token (None: no CLS, SigLIP)
    image_to_text: np.ndarray  # [layers, heads, (1+)g*g, T]: the CLS query first when there is one, then patches
    words: WordMap
    grid: PatchGrid
    kind: str = ATTENTION_KIND

    @property
    def n_layers(self) -> int:
        return self.text_to_image.shape[0]

    @property
    def n_heads(self) -> int:
        return self.text_to_image.shape[1]

    @property
    def head_mean_text_to_image(self) -> np.ndarray:
        """[layers, words, g, g]: head-averaged map per word (sub-word rows averaged)."""
        return self.words.pool(self.text_to_image.mean(axis=1), axis=1, reduce="mean")

    def _select(self, array: np.ndarray, layer: int | None, head: int | None) -> np.ndarray:
        # take(..., [i]) keeps the axis and accepts negative indices (array[-1:0] would be empty)
        array = array if layer is None else np.take(array, [layer], axis=0)
        array = array if head is None else np.take(array, [head], axis=1)
        return array.mean(axis=(0, 1))

    def text_to_image_map(self, layer: int | None = None, head: int | None = None,
                          word: int | None = None) -> np.ndarray:
        """[g, g] patch weights for one word (None: averaged over words), one layer/head or the mean."""
        per_token = self._select(self.text_to_image, layer, head)  # [T, g, g]
        per_word = self.words.pool(per_token, axis=0, reduce="mean")  # [W, g, g]
        return per_word.mean(axis=0) if word is None else per_word[word]

    def image_to_text_weights(self, layer: int | None = None, head: int | None = None,
                              patch: int | tuple[int, int] | None = None) -> np.ndarray:
        """[words] weights of one patch (index or (row, col); None: averaged over patches)."""
        per_query = self._select(self.image_to_text, layer, head)[self.grid.first_patch:]  # patches only, [P, T]
        if patch is None:
            row = per_query.mean(axis=0)
        else:
            index = patch[0] * self.grid.grid_size + patch[1] if isinstance(patch, tuple) else int(patch)
            row = per_query[index]
        return self.words.pool(row, axis=-1, reduce="sum")


def attention_maps(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, words: WordMap) -> AttentionMaps:
    """`AttentionMaps` for a batch of one sample."""
    if input_ids.shape[0] != 1:
        raise ValueError(f"attention_maps explains one sample; got a batch of {input_ids.shape[0]}")
    grid = patch_grid(model)
    text_to_image, image_to_text = fusion_attentions(model, pixel_values, input_ids, attention_mask)
    layers, heads, n_text, _ = text_to_image[0].shape
    patches = text_to_image[0][..., grid.first_patch:].reshape(layers, heads, n_text, grid.grid_size, grid.grid_size)
    cls = text_to_image[0][..., 0] if grid.cls_token else None
    return AttentionMaps(text_to_image=patches, text_to_image_cls=cls,
                         image_to_text=image_to_text[0], words=words, grid=grid)


# --------------------------------------------------------------------------- overlay
def crop_box(original_size: tuple[int, int], image_size: int | None = None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the original image that the model sees after resize + center crop.

    Resizing the shorter side to S and center-cropping S x S keeps the central square of the
    original; with `image_size` the box follows torchvision's rounding exactly.
    """
    width, height = (int(v) for v in original_size)
    short = min(width, height)
    if image_size is None:
        left, top = (width - short) / 2, (height - short) / 2
        return round(left), round(top), round(left) + short, round(top) + short
    size = int(image_size)
    # torchvision Resize(size): shorter side -> size, longer side -> int(size * long / short)
    long_new = int(size * max(width, height) / short)
    new_w, new_h = (size, long_new) if width <= height else (long_new, size)
    # torchvision CenterCrop(size): offsets int(round((new - size) / 2))
    crop_left, crop_top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    scale_x, scale_y = width / new_w, height / new_h
    return (round(crop_left * scale_x), round(crop_top * scale_y),
            round((crop_left + size) * scale_x), round((crop_top + size) * scale_y))


def normalise_heat(heatmap: np.ndarray) -> np.ndarray:
    """Positive part scaled to [0, 1]; negative evidence gets no heat (pass np.abs(...) to show it)."""
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, None)
    peak = heat.max() if heat.size else 0.0
    return heat / peak if peak > 0 else np.zeros_like(heat)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5, image_size: int | None = None,
            colormap: str = SEQUENTIAL_NAME, smooth: bool = True) -> np.ndarray:
    """Draw `heatmap` (a patch grid or a crop-space pixel map) onto the ORIGINAL `image`.

    The map covers the model's view, i.e. the center crop; it is upsampled onto that box of the
    original image and everything outside the box is left untouched. Heat weighs the blend, so
    zero heat leaves a pixel as it was. Returns uint8 [height, width, 3], with no colour bar: files
    meant to be read are drawn by clara.explain.plots.heatmap_figure.
    """
    from matplotlib import colormaps  # local: only drawing needs matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 and 1")
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (a patch grid or pixel map); got shape {heatmap.shape}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    x0, y0, x1, y1 = crop_box(image.size, image_size)
    heat_small = Image.fromarray(normalise_heat(heatmap).astype(np.float32), mode="F")
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    heat = np.clip(np.asarray(heat_small.resize((x1 - x0, y1 - y0), resample), dtype=np.float64), 0, 1)
    colour = colormaps[colormap](heat)[..., :3] * 255.0
    weight = alpha * heat[..., None]
    region = rgb[y0:y1, x0:x1]
    rgb[y0:y1, x0:x1] = region * (1.0 - weight) + colour * weight
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
