"""Import the CLARA authors' notebook checkpoints (`clara_<dataset>_best.pt`) as our checkpoint folders.

The notebooks saved `torch.save({'model_state_dict': model.state_dict(), 'config': CONFIG, ...})`
under transformers 4.42 / peft 0.11 with pooled fusion (clara-reference.md §2). This module

1. reads such a file (or a bare state dict) with `torch.load(weights_only=True)` only, plus
   numpy's scalar/array rebuilders (sklearn metrics saved beside the weights); anything else that
   needs unpickling is refused, never executed;
2. recognises the notebook from the keys (`fusion.blocks.*`: MVSA-Single/HFM, `fusion.cross.*`:
   MVSA-Multiple) and reads the fusion width, head sizes, class count and LoRA ranks/targets off
   the tensors (LoRA alpha, which is not in the weights, from CONFIG or 2 x rank as published);
3. picks the encoders: a file with every weight builds our offline architecture its tensors fit
   (ViT-B/32 or B/16 + DeBERTa-v3-base as "random-full", or the "tiny" test encoders; the head
   counts, which are not in the weights, come with the architecture) and is stored whole; a
   trainable-only file (LoRA, fusion, heads, unfrozen layers) takes the frozen base encoders from
   `encoders_from` (a folder with `vision/` and `text/` subfolders, or "VISION,TEXT"), else from
   the hub ids in CONFIG or the preset (needs the network);
4. maps every notebook key onto our model with the explicit rules of `map_notebook_state_dict`;
   a notebook key left unused, one of our tensors left unfilled (other than published base
   weights), a shape mismatch or disagreeing duplicates stop the import with the full lists;
5. writes an ordinary checkpoint folder with `save_checkpoint` (config.json "source": kind
   "notebook", file name, sha256, CONFIG, ...) and reloads it to check every tensor came back.

The tokenizer is `tokenizer_from` (a `save_pretrained` folder), else the text encoder's source;
tiny encoders have none published, so they need `tokenizer_from`. The HFM notebook trained 3
outputs for 2 labels; `drop_extra_classes` imports such heads without the extra outputs, which is
close to but not exactly the notebook's model, and recorded so ("exact": false).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .checkpoint import load_checkpoint, save_checkpoint
from .config import CLIP_B16, CLIP_B32, DEBERTA_V3_BASE, LABELS, Config, ModelConfig, get_preset
from .model import EncoderError, build_text_encoder, build_tokenizer, build_vision_encoder, create_model

VARIANT_NOTEBOOK = {"single": "MVSA-Single/HFM notebook (fusion.blocks.*)",
                    "multiple": "MVSA-Multiple notebook (fusion.cross.*)"}


class NotebookImportError(ValueError):
    """The file cannot be imported; the message says which file or keys and what to do."""


# ---------------------------------------------------------------------------------------------
# Reading the file without unpickling arbitrary objects

def _numpy_safe_globals() -> list[Any]:
    """numpy's scalar/array reconstructors, under both numpy 1.x and 2.x module names.

    They rebuild plain numbers and arrays from bytes (their contents still go through the
    restricted unpickler); notebooks save sklearn metrics (numpy.float64) beside the weights.
    """
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed.append((multiarray.scalar, f"{module}.scalar"))
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
    # numpy >= 1.25 pickles dtypes by their DType class (numpy.dtypes.Float64DType, ...).
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        allowed.extend(getattr(dtypes_module, name) for name in dir(dtypes_module) if name.endswith("DType"))
    return allowed


@dataclass
class NotebookFile:
    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    notebook_config: dict[str, Any] | None  # the notebook's CONFIG, when the file holds one
    extras: dict[str, Any] = field(default_factory=dict)  # other plain entries (metrics, epoch, ...)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-friendly copy of CONFIG/metric values (numpy scalars -> Python, tensors -> shapes)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 1000 else f"<array {list(value.shape)}>"
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"<tensor {list(value.shape)}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def read_notebook_file(pt_path: str | Path) -> NotebookFile:
    """Load a notebook `.pt` file safely: `{'model_state_dict': ..., 'config': ...}` or a bare state dict."""
    path = Path(pt_path)
    if not path.is_file():
        raise NotebookImportError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            try:  # memory-mapped: a 1.5 GB file is not copied into RAM before its tensors are mapped
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                loaded = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip torch.save format
    except Exception as exc:  # noqa: BLE001 - torch raises several types; all mean "cannot read safely"
        text = str(exc)
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if match:
            raise NotebookImportError(
                f"{path}: refused: the file needs unpickling of arbitrary Python objects "
                f"({match.group(1)}), which could run code; only tensors, numbers, strings, lists and "
                "dicts are accepted. Re-save it from the notebook as "
                "torch.save({'model_state_dict': model.state_dict(), 'config': CONFIG}, path)") from None
        raise NotebookImportError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                                  f"{text.splitlines()[0] if text else ''})") from None
    if not isinstance(loaded, Mapping):
        raise NotebookImportError(f"{path}: holds a {type(loaded).__name__}, not a dict; expected "
                                  "{'model_state_dict': ..., 'config': ...} or a state dict")
    if "model_state_dict" in loaded:
        state = loaded["model_state_dict"]
        notebook_config = loaded.get("config")
        extras = {k: _plain(v) for k, v in loaded.items() if k not in ("model_state_dict", "config")
                  and not isinstance(v, (Mapping, torch.Tensor))}
    else:
        state, notebook_config, extras = loaded, None, {}
    if not isinstance(state, Mapping) or not state:
        raise NotebookImportError(f"{path}: 'model_state_dict' is empty or not a dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        top = ", ".join(repr(k) for k in list(loaded)[:8])
        raise NotebookImportError(
            f"{path}: not a state dict: entries {not_tensors[:5]} are not tensors (top-level keys: {top}); "
            "expected {'model_state_dict': ..., 'config': ...} or a bare state dict")
    if notebook_config is not None and not isinstance(notebook_config, Mapping):
        notebook_config = {"value": notebook_config}
    return NotebookFile(path=path, sha256=_sha256(path), state_dict=dict(state),
                        notebook_config=_plain(notebook_config) if notebook_config is not None else None,
                        extras=extras)


# ---------------------------------------------------------------------------------------------
# Key mapping: notebook names -> our names

# Where each notebook kept its CLIP tower (MVSA-Multiple registered it twice) and its DeBERTa.
NOTEBOOK_VISION_PREFIXES = {"single": ("vision.backbone.",), "multiple": ("vision.b.", "vision_core.")}
NOTEBOOK_TEXT_PREFIX = "text.base_model.model."
# transformers 4.x CLIPVisionModel nested everything under `vision_model.`; 5.x does not.
TRANSFORMERS4_CLIP_SEGMENT = "vision_model."
# Suffixes that locate an encoder inside a model, whatever wrappers (peft, ours) sit above it.
CLIP_ANCHOR = "embeddings.patch_embedding.weight"
DEBERTA_ANCHOR = "embeddings.word_embeddings.weight"


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"single" (MVSA-Single/HFM notebooks) or "multiple" (MVSA-Multiple), from the fusion keys."""
    has_blocks = any(k.startswith("fusion.blocks.") for k in state_dict)
    has_cross = any(k.startswith("fusion.cross.") for k in state_dict)
    if has_blocks == has_cross:
        sample = ", ".join(sorted(k for k in state_dict if k.startswith("fusion."))[:6]) or "none"
        raise NotebookImportError(
            "cannot tell which notebook wrote this state dict: expected fusion.blocks.* (MVSA-Single/HFM) "
            f"or fusion.cross.* (MVSA-Multiple) keys; fusion keys found: {sample}")
    return "single" if has_blocks else "multiple"


def find_encoder_prefix(keys: Mapping[str, Any] | list[str], anchor: str, what: str) -> str:
    """The one prefix P with P + anchor among `keys` (e.g. where CLIP sits inside our model)."""
    prefixes = sorted(k[: -len(anchor)] for k in keys if k.endswith(anchor))
    if len(prefixes) != 1:
        raise NotebookImportError(f"expected exactly one {what} in the model (a key ending in {anchor}), "
                                  f"found {len(prefixes)}: {prefixes}")
    return prefixes[0]


def _is_derived_buffer(rest: str, tensor: torch.Tensor) -> bool:
    # transformers < 4.31 saved `position_ids` (arange) buffers; ours are non-persistent.
    return rest.endswith("position_ids") and torch.equal(
        tensor.flatten().long(), torch.arange(tensor.numel(), dtype=torch.long))


def our_encoder_prefixes(our_keys: Mapping[str, Any] | list[str]) -> dict[str, str]:
    """{"vision": prefix of our CLIP keys, "text": prefix of our DeBERTa keys}."""
    keys = list(our_keys)
    return {"vision": find_encoder_prefix(keys, CLIP_ANCHOR, "CLIP vision tower"),
            "text": find_encoder_prefix(keys, DEBERTA_ANCHOR, "DeBERTa text encoder")}


@dataclass
class KeyMapping:
    """The outcome of mapping a notebook state dict onto our model's tensors."""
    tensors: dict[str, torch.Tensor]  # our key -> tensor
    source_of: dict[str, str]  # our key -> the notebook key it came from
    unused: list[str]  # notebook keys that have no place in our model
    unfilled: list[str]  # our keys that no notebook key fills
    shape_mismatches: list[str]  # "notebook_key -> our_key: shape A vs B"
    conflicts: list[str]  # duplicate registrations (MVSA-Multiple's vision) that disagree
    ignored: list[str]  # derived buffers (position_ids) we rebuild ourselves

    def unfilled_outside(self, allowed_prefixes: tuple[str, ...]) -> list[str]:
        """Unfilled keys other than encoder base weights under `allowed_prefixes` (LoRA always counts)."""
        return [k for k in self.unfilled if not (k.startswith(allowed_prefixes) and not _is_lora(k))]


def encoder_part(notebook_key: str, variant: str) -> tuple[str, str] | None:
    """("vision" | "text", the key inside the encoder in transformers-5 naming), or None for
    a key outside the encoders."""
    for prefix in NOTEBOOK_VISION_PREFIXES[variant]:
        if notebook_key.startswith(prefix):
            rest = notebook_key[len(prefix):]
            if rest.startswith(TRANSFORMERS4_CLIP_SEGMENT):
                rest = rest[len(TRANSFORMERS4_CLIP_SEGMENT):]
            return "vision", rest
    if notebook_key.startswith(NOTEBOOK_TEXT_PREFIX):
        return "text", notebook_key[len(NOTEBOOK_TEXT_PREFIX):]
    return None


def _target_key(notebook_key: str, variant: str, our_prefixes: Mapping[str, str]) -> tuple[str, str] | None:
    """(our key, the key relative to its module) for a notebook key, or None when no rule applies."""
    part = encoder_part(notebook_key, variant)
    if part is not None:
        return our_prefixes[part[0]] + part[1], part[1]
    if notebook_key.startswith(("vision.", "vision_core.", "text.")):
        return None  # an encoder key under a prefix this notebook variant never used
    # Fusion (`fusion.blocks.*` / `fusion.cross.*`, `fusion.norms.*`, `fusion.fuse.*`) and heads
    # (`pred.net.N` or, MVSA-Multiple, `pred.N`, `feed.N`, `final`) carry the notebooks' names in ours.
    return notebook_key, notebook_key


def map_notebook_state_dict(notebook_state: Mapping[str, torch.Tensor], our_shapes: Mapping[str, torch.Size],
                            variant: str) -> KeyMapping:
    """Map every notebook key onto our model's state-dict keys (`our_shapes`: key -> shape).

    Rules: the notebook's CLIP (`vision.backbone.` or, MVSA-Multiple, both `vision.b.` and
    `vision_core.`) minus the transformers-4 `vision_model.` segment -> our CLIP prefix; its
    DeBERTa (`text.base_model.model.`) -> our DeBERTa prefix; fusion and heads keep their names
    (ours were named after them). LoRA leaves (`base_layer.weight`, `lora_A.default.weight`) are
    named alike by peft 0.11 and ours. `position_ids` buffers equal to arange are dropped (ours
    are rebuilt); MVSA-Multiple's two vision registrations must hold equal tensors. Nothing is
    loaded here: the caller refuses the file unless `unused`, `shape_mismatches`, `conflicts`
    and the relevant `unfilled` are all empty.
    """
    our_prefixes = our_encoder_prefixes(our_shapes)
    mapping = KeyMapping({}, {}, [], [], [], [], [])
    for key, tensor in notebook_state.items():
        target = _target_key(key, variant, our_prefixes)
        if target is None:
            mapping.unused.append(key)
            continue
        ours, rest = target
        if ours not in our_shapes:
            if _is_derived_buffer(rest, tensor):
                mapping.ignored.append(key)
            else:
                mapping.unused.append(key)
            continue
        if tuple(tensor.shape) != tuple(our_shapes[ours]):
            mapping.shape_mismatches.append(f"{key} -> {ours}: shape {list(tensor.shape)} vs ours "
                                            f"{list(our_shapes[ours])}")
            continue
        if ours in mapping.tensors:  # the second registration of MVSA-Multiple's vision module
            if not torch.equal(mapping.tensors[ours], tensor):
                mapping.conflicts.append(f"{mapping.source_of[ours]} and {key} hold different values")
            continue
        mapping.tensors[ours] = tensor
        mapping.source_of[ours] = key
    mapping.unfilled = [k for k in our_shapes if k not in mapping.tensors]
    return mapping


# ---------------------------------------------------------------------------------------------
# What the file says about the model: variant, sizes, LoRA, classes

ENCODERS_FROM_FORMS = ("a folder with vision/ and text/ subfolders (save_pretrained output of the CLIP vision "
                       "model and of DeBERTa with its tokenizer), or 'VISION,TEXT' (two hub ids or folders)")
# The notebooks' LoRA alphas are twice the ranks (CLIP 32/64, DeBERTa 64/128); alpha is not in the weights.
NOTEBOOK_ALPHA_PER_RANK = 2.0
ENCODER_WORDS = {"vision": ("vision", "clip", "image"), "text": ("text", "deberta", "bert")}
DEBERTA_LAYER_INDEX = re.compile(r"^encoder\.layer\.(\d+)\.")


def split_encoder_tensors(state: Mapping[str, torch.Tensor], variant: str) -> dict[str, dict[str, torch.Tensor]]:
    """{"vision": {key inside CLIP: tensor}, "text": {key inside DeBERTa: tensor}} in transformers-5 naming."""
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}}
    for key, tensor in state.items():
        part = encoder_part(key, variant)
        if part is not None:
            parts[part[0]].setdefault(part[1], tensor)
    return parts


def _is_lora(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def lora_settings(encoder_tensors: Mapping[str, torch.Tensor], which: str) -> tuple[int, tuple[str, ...]]:
    """(rank, target module names) of the LoRA adapters in one encoder's tensors."""
    ranks: set[int] = set()
    targets: set[str] = set()
    for key, tensor in encoder_tensors.items():
        if key.endswith(".lora_A.default.weight"):
            ranks.add(int(tensor.shape[0]))
            targets.add(key.split(".")[-4])
    if len(ranks) != 1:
        found = f"ranks {sorted(ranks)}" if ranks else "no lora_A.default.weight keys"
        raise NotebookImportError(f"the {which} encoder's LoRA adapters must share one rank; found {found}")
    return ranks.pop(), tuple(sorted(targets))


def _ordered_like(found: tuple[str, ...], preset: tuple[str, ...]) -> tuple[str, ...]:
    return preset if set(found) == set(preset) else found


def _indices(state: Mapping[str, Any], prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for m in map(pattern.match, state) if m}


def _head_shapes(state: Mapping[str, torch.Tensor], variant: str) -> tuple[int, int]:
    """(hidden width of the prediction head, number of classes) from its first and last Linear."""
    prefix = "pred.net." if variant == "single" else "pred."
    indices = sorted(_indices(state, prefix)) or [0]
    first, last = state.get(f"{prefix}{indices[0]}.weight"), state.get(f"{prefix}{indices[-1]}.weight")
    if first is None or last is None or first.dim() != 2 or last.dim() != 2:
        raise NotebookImportError(f"no prediction head found: expected {prefix}0.weight ... {prefix}4.weight "
                                  f"({VARIANT_NOTEBOOK[variant]})")
    return int(first.shape[0]), int(last.shape[0])


def drop_extra_classes_from(state: Mapping[str, torch.Tensor], variant: str, keep: int) -> dict[str, torch.Tensor]:
    """The state dict without the trailing output classes `keep`, `keep + 1`, ...

    Rows go from the last Linear of `pred`/`veri` (and `final`, MVSA-Multiple); the matching
    columns of the feedback's first Linear (its input is concat(fused, p_verify - p_pred)) go too.
    Not exact: the notebook's softmaxes also spread probability over the dropped classes.
    """
    prefix = "" if variant == "multiple" else "net."
    last = max(_indices(state, f"pred.{prefix}"))
    hidden = int(state["fusion.v_proj.weight"].shape[0])
    rows = [f"pred.{prefix}{last}", f"veri.{prefix}{last}"] + (["final"] if variant == "multiple" else [])
    result = dict(state)
    for name in rows:
        for leaf in ("weight", "bias"):
            if f"{name}.{leaf}" in result:
                result[f"{name}.{leaf}"] = result[f"{name}.{leaf}"][:keep].clone()
    feedback = f"feed.{prefix}0.weight"
    result[feedback] = result[feedback][:, :hidden + keep].clone()
    return result


def _config_number(notebook_config: Mapping[str, Any] | None, which: str, word: str) -> tuple[float, str] | None:
    """A numeric CONFIG entry whose key holds `word`, preferring one that names the encoder `which`."""
    if not notebook_config:
        return None
    candidates = [(k, v) for k, v in notebook_config.items()
                  if word in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool)]
    specific = [(k, v) for k, v in candidates if any(w in k.lower() for w in ENCODER_WORDS[which])]
    generic = [(k, v) for k, v in candidates
               if not any(w in k.lower() for words in ENCODER_WORDS.values() for w in words)]
    chosen = specific or generic
    if len(chosen) != 1:
        return None
    key, value = chosen[0]
    return float(value), f"CONFIG[{key!r}]"


def _lora_alpha(notebook_config: Mapping[str, Any] | None, which: str, rank: int) -> tuple[int, str]:
    """LoRA alpha for one encoder (it scales the adapters and is not in the weights).

    Taken from CONFIG only when CONFIG also gives a rank for this encoder equal to the file's
    (a lone `lora_alpha` cannot serve both encoders, whose published alphas differ); else 2 x rank.
    """
    alpha = _config_number(notebook_config, which, "alpha")
    config_rank = _config_number(notebook_config, which, "rank") or _config_number(notebook_config, which, "lora_r")
    if alpha is not None and config_rank is not None and int(config_rank[0]) == rank:
        return int(alpha[0]), alpha[1]
    return int(round(NOTEBOOK_ALPHA_PER_RANK * rank)), "assumed 2 x rank, as in the published notebooks"


def _check_label_hints(notebook_config: Mapping[str, Any] | None, dataset: str, num_classes: int,
                       path: Path, drop_extra_classes: bool) -> dict[str, Any]:
    """Compare the file's class count (weights and CONFIG) with the dataset; return CONFIG's label hints."""
    labels = LABELS[dataset]
    if num_classes < len(labels) or (num_classes > len(labels) and not drop_extra_classes):
        advice = "pick the dataset the notebook was trained on"
        if num_classes > len(labels):
            advice = (f"if classes {len(labels)}..{num_classes - 1} never occur in the data (the HFM notebook "
                      "trained 3 outputs for its 2 labels), --drop-extra-classes imports the model without "
                      "them (close to, not exactly, the notebook's outputs)")
        raise NotebookImportError(f"{path}: the model predicts {num_classes} classes but --dataset {dataset} has "
                                  f"{len(labels)} ({', '.join(labels)}); {advice}")
    hints: dict[str, Any] = {}
    for key, value in (notebook_config or {}).items():
        lowered = key.lower()
        if lowered in ("num_classes", "n_classes", "num_labels") and isinstance(value, int):
            if value != num_classes:
                raise NotebookImportError(f"{path}: CONFIG[{key!r}] = {value} but the model's heads predict "
                                          f"{num_classes} classes")
            hints[key] = value
        elif lowered in ("labels", "label_names", "class_names", "classes", "dataset", "dataset_name"):
            hints[key] = value
            names = [str(v).lower() for v in value] if isinstance(value, list) else None
            # Same names in another order would mean another class index order: refuse rather than mislabel.
            if names and sorted(names) == sorted(labels) and names != labels:
                raise NotebookImportError(f"{path}: CONFIG[{key!r}] orders the classes {value}, ours are "
                                          f"{labels}; the logits would be mislabelled")
    return hints


# ---------------------------------------------------------------------------------------------
# Choosing how our model gets its encoders

@dataclass
class EncoderPlan:
    """Where our model's encoders come from and how the imported checkpoint stores them."""
    encoders: str  # our ModelConfig.encoders: tiny | random-full (file has all weights) | published
    vision_encoder: str
    text_encoder: str
    reason: str


def resolve_encoders_from(value: str) -> tuple[str, str]:
    """`--encoders-from` -> (vision source, text source)."""
    folder = Path(value)
    if folder.is_dir():
        if (folder / "vision").is_dir() and (folder / "text").is_dir():
            return str(folder / "vision"), str(folder / "text")
        raise NotebookImportError(f"--encoders-from {value}: the folder has no vision/ and text/ subfolders; "
                                  f"expected {ENCODERS_FROM_FORMS}")
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise NotebookImportError(f"--encoders-from {value!r} is neither an existing folder nor 'VISION,TEXT'; "
                              f"expected {ENCODERS_FROM_FORMS}")


def _base_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of an encoder's own (non-LoRA) tensors, keyed like `split_encoder_tensors`."""
    shapes = {}
    for key, tensor in module.state_dict().items():
        key = key.removeprefix("backbone.").removeprefix("base_model.model.")
        if not _is_lora(key):
            shapes[key] = tuple(tensor.shape)
    return shapes


def _offline_family_fits(model_cfg: ModelConfig, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    """Where the file's encoder tensors differ from the architecture `model_cfg` builds ([] = it fits).

    The encoders are built on the meta device (no memory, no download). The word-embedding rows
    are left out: they follow the tokenizer and are checked when the weights are mapped.
    """
    with torch.device("meta"):
        built = {"vision": build_vision_encoder(model_cfg),
                 "text": build_text_encoder(model_cfg, build_tokenizer(model_cfg))}
    differences = []
    for which, module in built.items():
        ours = _base_shapes(module)
        theirs = {k: tuple(t.shape) for k, t in parts[which].items()
                  if not _is_lora(k) and not k.endswith("position_ids")}
        for key in sorted(set(ours) | set(theirs)):
            if key == DEBERTA_ANCHOR and key in ours and key in theirs:
                if ours[key][1:] != theirs[key][1:]:
                    differences.append(f"{which} {key}: {list(theirs[key])} vs {list(ours[key])}")
            elif ours.get(key) != theirs.get(key):
                differences.append(f"{which} {key}: {list(theirs.get(key, ())) or 'absent'} vs "
                                   f"{list(ours.get(key, ())) or 'absent'}")
    return differences


def describe_encoder_sizes(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """A one-line summary of the encoder sizes visible in the file's tensors."""
    vision, text = parts["vision"], parts["text"]
    said = []
    patch = vision.get(CLIP_ANCHOR)
    positions = vision.get("embeddings.position_embedding.weight")
    if patch is not None and positions is not None:
        grid = math.isqrt(int(positions.shape[0]) - 1)
        said.append(f"CLIP width {patch.shape[0]}, {len(_indices(vision, 'encoder.layers.'))} layers, "
                    f"patch {patch.shape[-1]}, image {grid * int(patch.shape[-1])} px")
    words = text.get(DEBERTA_ANCHOR)
    if words is not None:
        said.append(f"DeBERTa width {words.shape[1]}, {len(_indices(text, 'encoder.layer.'))} layers, "
                    f"vocabulary {words.shape[0]}")
    return "; ".join(said) or "no encoder base weights"


def plan_encoders(model_cfg: ModelConfig, parts: Mapping[str, Mapping[str, torch.Tensor]], full: bool,
                  encoders_from: str | None, notebook_config: Mapping[str, Any] | None) -> EncoderPlan:
    """Pick our encoder source: --encoders-from, else (full file) the offline architecture the
    weights fit, else (trainable-only file) the hub ids of CONFIG or of the preset."""
    if encoders_from:
        vision, text = resolve_encoders_from(encoders_from)
        return EncoderPlan("published", vision, text, f"--encoders-from {encoders_from}")
    if full:
        # Our offline architectures: the tiny test encoders, ViT-B/32 or B/16 + DeBERTa-v3-base.
        # (Head counts are not in the weights; each candidate brings its own.)
        text_id = str((notebook_config or {}).get("text_encoder") or model_cfg.text_encoder)
        candidates = [("tiny", model_cfg.vision_encoder), ("random-full", CLIP_B32), ("random-full", CLIP_B16)]
        mismatches = []
        for encoders, vision_id in candidates:
            trial = dataclasses.replace(model_cfg, encoders=encoders, vision_encoder=vision_id,
                                        unfreeze_last_text_layers=0, gradient_checkpointing=False)
            differences = _offline_family_fits(trial, parts)
            if not differences:
                return EncoderPlan(encoders, vision_id, text_id, "all weights are in the file")
            name = "tiny" if encoders == "tiny" else f"{vision_id} + {DEBERTA_V3_BASE}"
            mismatches.append(f"{name}: {len(differences)} differences, e.g. {differences[0]}")
        raise NotebookImportError(
            f"the encoders in the file ({describe_encoder_sizes(parts)}) match none of our architectures: "
            + "; ".join(mismatches)
            + f". Pass --encoders-from with {ENCODERS_FROM_FORMS} whose config.json describes them.")
    vision = str((notebook_config or {}).get("vision_encoder") or model_cfg.vision_encoder)
    text = str((notebook_config or {}).get("text_encoder") or model_cfg.text_encoder)
    return EncoderPlan("published", vision, text,
                       "the file holds only trainable weights; base encoders from the hub ids of "
                       + ("the notebook's CONFIG" if notebook_config and "vision_encoder" in notebook_config
                          else "the preset"))


# ---------------------------------------------------------------------------------------------
# The import

def _load_tokenizer(plan: EncoderPlan, tokenizer_from: str | None) -> PreTrainedTokenizerBase | None:
    """--tokenizer-from, else None for published encoders (create_model loads it with the text
    encoder), else the text encoder's hub tokenizer for the full-size architecture."""
    source = tokenizer_from
    if source is None:
        if plan.encoders == "published":
            return None
        if plan.encoders == "tiny":
            raise NotebookImportError("the file holds tiny encoders, which have no published tokenizer: pass "
                                      "--tokenizer-from FOLDER (the tokenizer the notebook model was trained with, "
                                      "as written by tokenizer.save_pretrained)")
        source = plan.text_encoder
    elif not Path(source).is_dir():
        raise NotebookImportError(f"--tokenizer-from {source}: not a folder (expected tokenizer.save_pretrained "
                                  "output)")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise NotebookImportError(
            f"cannot load the tokenizer from {source!r} ({str(exc).splitlines()[0]}); offline, pass "
            "--tokenizer-from FOLDER or --encoders-from FOLDER with a local copy of the notebook's tokenizer "
            f"({DEBERTA_V3_BASE})") from None


def _unmatched_report(path: Path, mapping: KeyMapping, unfilled: list[str]) -> str:
    lines = [f"{path}: refused: the state dict does not map onto our model "
             f"({len(mapping.unused)} notebook keys unused, {len(unfilled)} of our tensors unfilled, "
             f"{len(mapping.shape_mismatches)} shape mismatches, {len(mapping.conflicts)} conflicts); "
             "nothing was written"]
    for title, items in (("notebook keys with no place in our model", mapping.unused),
                         ("our tensors the file does not fill", unfilled),
                         ("shape mismatches (notebook -> ours)", mapping.shape_mismatches),
                         ("conflicting duplicates", mapping.conflicts)):
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  {item}" for item in items)
    return "\n".join(lines)


def _base_weights_to_keep(model: torch.nn.Module, mapping: KeyMapping, prefixes: Mapping[str, str]
                          ) -> dict[str, list[str]]:
    """File-provided encoder base tensors that differ from the loaded encoders, by encoder.

    With published encoders a checkpoint stores only trainable tensors, so such a tensor must sit
    in a trainable (unfrozen) layer or it would silently revert to the hub weights on reload.
    """
    ours = model.state_dict()
    params = dict(model.named_parameters())
    differing: dict[str, list[str]] = {"vision": [], "text": []}
    for key, tensor in mapping.tensors.items():
        for which, prefix in prefixes.items():
            if key.startswith(prefix) and not _is_lora(key) and not torch.equal(ours[key], tensor):
                if not (key in params and params[key].requires_grad):
                    differing[which].append(key[len(prefix):])
    return differing


def _text_layers_to_unfreeze(differing_text: list[str], n_layers: int) -> int | None:
    """How many last DeBERTa layers must be trainable to keep `differing_text`; None if impossible."""
    indices = []
    for key in differing_text:
        match = DEBERTA_LAYER_INDEX.match(key)
        if match is None:
            return None  # embeddings / relative positions / final norm: never trainable in our model
        indices.append(int(match.group(1)))
    return n_layers - min(indices) if indices else 0


def _build(cfg: Config, tokenizer: PreTrainedTokenizerBase | None, plan: EncoderPlan):
    try:
        return create_model(cfg, tokenizer=tokenizer)
    except EncoderError as exc:
        # EncoderError's advice is about training flags; only its first line (the cause) applies here.
        hint = ("; offline, pass --encoders-from with " + ENCODERS_FROM_FORMS
                if plan.encoders == "published" else "")
        cause = str(exc).splitlines()[0].rstrip(".")
        raise NotebookImportError(f"cannot build the encoders ({plan.reason}): {cause}{hint}") from None
    except (AssertionError, ValueError) as exc:  # e.g. a fusion width not divisible by the head count
        raise NotebookImportError(f"cannot build our model for this file: {exc}") from None


def import_notebook_checkpoint(pt_path: str | Path, dataset: str, out_dir: str | Path,
                               encoders_from: str | None = None, tokenizer_from: str | None = None,
                               drop_extra_classes: bool = False) -> Path:
    """Convert a CLARA notebook checkpoint into our checkpoint folder `out_dir`; returns its path.

    `dataset` picks the preset (labels, variant); `encoders_from` supplies the base encoders for a
    trainable-only file (or replaces the file's own, which must then agree with them);
    `tokenizer_from` is a saved tokenizer folder (needed for tiny encoders, or offline);
    `drop_extra_classes` accepts heads with more outputs than the dataset has labels by dropping
    the trailing ones (the HFM notebook's 3 outputs for 2 labels), which is recorded as inexact.
    Raises NotebookImportError, with every unmatched key listed, when the file does not fit.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotebookImportError(f"--out {out}: already exists and is not an empty folder; choose a new path")
    notebook = read_notebook_file(pt_path)
    state = notebook.state_dict
    cfg = get_preset(dataset)
    variant = detect_variant(state)
    if variant != cfg.model.variant:
        expected = "mvsa_multiple" if variant == "multiple" else "mvsa_single or hfm"
        raise NotebookImportError(f"{notebook.path}: this is the {VARIANT_NOTEBOOK[variant]} model, but --dataset "
                                  f"{dataset} uses the {cfg.model.variant!r} wiring; use --dataset {expected}")
    if "fusion.v_proj.weight" not in state:
        raise NotebookImportError(f"{notebook.path}: no fusion.v_proj.weight: not a CLARA notebook state dict")
    head_hidden, num_classes = _head_shapes(state, variant)
    label_hints = _check_label_hints(notebook.notebook_config, dataset, num_classes, notebook.path,
                                     drop_extra_classes)
    dropped_classes = list(range(len(LABELS[dataset]), num_classes))
    if dropped_classes:
        state = drop_extra_classes_from(state, variant, len(LABELS[dataset]))
    parts = split_encoder_tensors(state, variant)

    # Our config: the preset with the notebook's pooled fusion and the sizes the tensors show.
    model_cfg = cfg.model
    model_cfg.fusion = "pooled"
    model_cfg.ablation = None
    model_cfg.hidden_dim = int(state["fusion.v_proj.weight"].shape[0])
    model_cfg.fusion_layers = len(_indices(state, "fusion.blocks." if variant == "single" else "fusion.cross."))
    model_cfg.head_hidden_dim = None if head_hidden == model_cfg.hidden_dim and variant == "single" else head_hidden
    alpha_sources = {}
    for which in ("vision", "text"):
        rank, targets = lora_settings(parts[which], which)
        alpha, alpha_sources[which] = _lora_alpha(notebook.notebook_config, which, rank)
        setattr(model_cfg, f"{which}_lora_r", rank)
        setattr(model_cfg, f"{which}_lora_alpha", alpha)
        setattr(model_cfg, f"{which}_lora_targets",
                _ordered_like(targets, getattr(model_cfg, f"{which}_lora_targets")))
    model_cfg.gradient_checkpointing = False
    full = CLIP_ANCHOR in parts["vision"] and DEBERTA_ANCHOR in parts["text"]
    plan = plan_encoders(model_cfg, parts, full, encoders_from, notebook.notebook_config)
    model_cfg.encoders, model_cfg.vision_encoder, model_cfg.text_encoder = \
        plan.encoders, plan.vision_encoder, plan.text_encoder
    if plan.encoders != "published":
        model_cfg.unfreeze_last_text_layers = 0  # every weight is stored anyway
    cfg.validate()
    tokenizer = _load_tokenizer(plan, tokenizer_from)

    model, tokenizer = _build(cfg, tokenizer, plan)
    our_shapes = {k: v.shape for k, v in model.state_dict().items()}
    prefixes = our_encoder_prefixes(our_shapes)
    mapping = map_notebook_state_dict(state, our_shapes, variant)
    # Only published encoders may leave tensors unfilled, and only their pretrained base weights.
    allowed = tuple(prefixes.values()) if plan.encoders == "published" else ()
    unfilled = mapping.unfilled_outside(allowed)
    if mapping.unused or unfilled or mapping.shape_mismatches or mapping.conflicts:
        report = _unmatched_report(notebook.path, mapping, unfilled)
        if any(DEBERTA_ANCHOR in m for m in mapping.shape_mismatches):
            report += ("\nthe word-embedding rows differ from the tokenizer's vocabulary: pass the tokenizer the "
                       "notebook model was trained with (--tokenizer-from)")
        raise NotebookImportError(report)

    if plan.encoders == "published":
        differing = _base_weights_to_keep(model, mapping, prefixes)
        n_text_layers = len(_indices({k[len(prefixes['text']):]: 0 for k in our_shapes
                                      if k.startswith(prefixes["text"])}, "encoder.layer."))
        unfreeze = _text_layers_to_unfreeze(differing["text"], n_text_layers)
        if differing["vision"] or unfreeze is None:
            kept = [f"vision {k}" for k in differing["vision"]] + [f"text {k}" for k in differing["text"]]
            raise NotebookImportError(
                f"{notebook.path}: refused: {len(kept)} frozen encoder tensors in the file differ from "
                f"{plan.reason} and would be lost: {', '.join(kept[:12])}"
                + (" ..." if len(kept) > 12 else "")
                + (". Import without --encoders-from to keep the file's own weights." if full else "."))
        if unfreeze > model_cfg.unfreeze_last_text_layers:
            model_cfg.unfreeze_last_text_layers = unfreeze
            model, tokenizer = _build(cfg, tokenizer, plan)

    incompatible = model.load_state_dict(mapping.tensors, strict=False)
    if incompatible.unexpected_keys or set(incompatible.missing_keys) != set(mapping.unfilled):
        raise NotebookImportError(f"internal mapping error: unexpected {incompatible.unexpected_keys}, "
                                  f"missing {sorted(set(incompatible.missing_keys) ^ set(mapping.unfilled))}")
    model.eval()

    source = {"kind": "notebook", "file": notebook.path.name, "sha256": notebook.sha256,
              "notebook_variant": VARIANT_NOTEBOOK[variant],
              "weights_in_file": "full" if full else "trainable",
              "encoders": plan.reason, "lora_alpha": alpha_sources,
              "label_hints": label_hints, "notebook_config": notebook.notebook_config,
              "notebook_entries": notebook.extras, "ignored_buffers": mapping.ignored,
              "dropped_classes": dropped_classes, "exact": not dropped_classes}
    saved = save_checkpoint(out, model, tokenizer, cfg, extra={"source": source})
    _verify_saved(saved, model)
    return Path(saved)


def _verify_saved(folder: Path, model: torch.nn.Module) -> None:
    """Reload the written folder and require every tensor to come back as imported."""
    reloaded = load_checkpoint(folder).model.state_dict()
    expected = model.state_dict()
    differing = [k for k, t in expected.items() if k not in reloaded or not torch.equal(reloaded[k], t)]
    if differing or set(reloaded) != set(expected):
        shutil.rmtree(folder, ignore_errors=True)
        raise NotebookImportError(f"the written checkpoint did not reload as imported ({len(differing)} tensors "
                                  f"differ, e.g. {differing[:5]}); it was removed")
