"""Map a notebook state dict onto our model's keys, and read off it what the model is.

Variant detection, where each notebook kept its encoders, `map_notebook_state_dict` (explicit
rules; the caller refuses any key left over), the split of the encoder tensors, LoRA rank and
alpha, the CONFIG settings the weights do not show, the class count and the dropping of extra
classes. Functions of tensors and dicts only: `notebook.py` reads the file and builds the model.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clara.checkpoint.notebook_files import NotebookImportError
from clara.config import LABELS, ModelConfig

VARIANT_NOTEBOOK = {"single": "MVSA-Single/HFM notebook (fusion.blocks.*)",
                    "multiple": "MVSA-Multiple notebook (fusion.cross.*)"}

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
        return [k for k in self.unfilled if not (k.startswith(allowed_prefixes) and not is_lora_key(k))]


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

# The notebooks' CONFIG (cell 4 of each) nests each encoder's LoRA settings under these keys:
# 'lora_clip': {'r': 32, 'alpha': 64, 'dropout': 0.05}, 'lora_deb': {'r': 64, 'alpha': 128, 'dropout': 0.10}.
NOTEBOOK_LORA_KEYS = {"vision": "lora_clip", "text": "lora_deb"}
# Every notebook's CONFIG sets alpha = 2 x r for both encoders: what a file without CONFIG is assumed to use.
NOTEBOOK_ALPHA_PER_RANK = 2
# Other CONFIG entries the weights do not show: CONFIG key -> our ModelConfig field (variants using it).
NOTEBOOK_SETTINGS = {"coattn_heads": ("fusion_heads", ("single", "multiple")),
                     "feedback_tau": ("feedback_temperature", ("multiple",))}
# CONFIG entries the tensors also show: CONFIG key -> our ModelConfig field; a disagreement is refused.
NOTEBOOK_SIZES = {"hidden_dim": "hidden_dim", "coattn_layers": "fusion_layers"}
ENCODER_NAMES = {"vision": "CLIP", "text": "DeBERTa"}
ENCODER_WORDS = {"vision": ("vision", "clip", "image"), "text": ("text", "deberta", "bert")}


def split_encoder_tensors(state: Mapping[str, torch.Tensor], variant: str) -> dict[str, dict[str, torch.Tensor]]:
    """{"vision": {key inside CLIP: tensor}, "text": {key inside DeBERTa: tensor}} in transformers-5 naming."""
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}}
    for key, tensor in state.items():
        part = encoder_part(key, variant)
        if part is not None:
            parts[part[0]].setdefault(part[1], tensor)
    return parts


def is_lora_key(key: str) -> bool:
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


def ordered_like(found: tuple[str, ...], preset: tuple[str, ...]) -> tuple[str, ...]:
    return preset if set(found) == set(preset) else found


def key_indices(state: Mapping[str, Any], prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for m in map(pattern.match, state) if m}


def head_shapes(state: Mapping[str, torch.Tensor], variant: str) -> tuple[int, int]:
    """(hidden width of the prediction head, number of classes) from its first and last Linear."""
    prefix = "pred.net." if variant == "single" else "pred."
    indices = sorted(key_indices(state, prefix)) or [0]
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
    last = max(key_indices(state, f"pred.{prefix}"))
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


def _whole_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise NotebookImportError(f"{where} = {value!r}: expected a whole number")
    return int(value)


def _positive_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise NotebookImportError(f"{where} = {value!r}: expected a positive number")
    return float(value)


def lora_alpha(notebook_config: Mapping[str, Any] | None, which: str, rank: int) -> tuple[int, str]:
    """(LoRA alpha, where it came from) for one encoder: it scales the adapters and is not in the weights.

    The notebooks' nested CONFIG['lora_clip' | 'lora_deb']['alpha'] (its 'r' must be the file's
    rank); else a top-level alpha beside a rank equal to the file's (a lone `lora_alpha` cannot
    serve both encoders, whose published alphas differ); else 2 x rank, as every notebook sets.
    """
    key = NOTEBOOK_LORA_KEYS[which]
    nested = (notebook_config or {}).get(key)
    if isinstance(nested, Mapping) and "alpha" in nested:
        if "r" in nested and _whole_number(nested["r"], f"CONFIG[{key!r}]['r']") != rank:
            raise NotebookImportError(
                f"CONFIG[{key!r}]['r'] = {nested['r']} but the file's {ENCODER_NAMES[which]} LoRA adapters have "
                f"rank {rank}: this CONFIG does not describe these weights (their alpha would be a guess)")
        return _whole_number(nested["alpha"], f"CONFIG[{key!r}]['alpha']"), f"CONFIG[{key!r}]['alpha']"
    alpha = _config_number(notebook_config, which, "alpha")
    config_rank = _config_number(notebook_config, which, "rank") or _config_number(notebook_config, which, "lora_r")
    if alpha is not None and config_rank is not None and int(config_rank[0]) == rank:
        return int(alpha[0]), alpha[1]
    why = ("the file holds no CONFIG (the MVSA-Multiple notebook saves the bare state dict)" if notebook_config is None
           else f"its CONFIG has no {key!r}")
    assumed = NOTEBOOK_ALPHA_PER_RANK * rank
    return assumed, (f"assumed {assumed} = 2 x rank {rank}: {why}, and every notebook's CONFIG sets alpha = 2 x r "
                     "(lora_clip r 32 alpha 64, lora_deb r 64 alpha 128)")


def apply_config_settings(model_cfg: ModelConfig, notebook_config: Mapping[str, Any] | None,
                          variant: str) -> dict[str, Any]:
    """Set on `model_cfg` what CONFIG says and the weights do not show (fusion heads, MVSA-Multiple's
    feedback temperature, LoRA dropout); refuse a CONFIG whose sizes contradict the tensors.

    Returns {field: {"value", "from"}}: each setting and where it came from (CONFIG or the preset).
    """
    config = notebook_config or {}
    for key, ours in NOTEBOOK_SIZES.items():
        shown = getattr(model_cfg, ours)
        if key in config and _whole_number(config[key], f"CONFIG[{key!r}]") != shown:
            raise NotebookImportError(f"CONFIG[{key!r}] = {config[key]} but the tensors show {shown}: "
                                      "this CONFIG does not describe these weights")
    record: dict[str, Any] = {}
    for key, (ours, variants) in NOTEBOOK_SETTINGS.items():
        if variant not in variants:
            continue
        if key in config:
            value = _whole_number(config[key], f"CONFIG[{key!r}]") if ours == "fusion_heads" else \
                _positive_number(config[key], f"CONFIG[{key!r}]")
            setattr(model_cfg, ours, value)
            record[ours] = {"value": value, "from": f"CONFIG[{key!r}]"}
        else:
            why = "the file holds no CONFIG" if notebook_config is None else f"CONFIG has no {key!r}"
            record[ours] = {"value": getattr(model_cfg, ours), "from": f"the preset (not in the weights; {why})"}
    for which, key in NOTEBOOK_LORA_KEYS.items():
        nested = config.get(key)
        if isinstance(nested, Mapping) and isinstance(nested.get("dropout"), (int, float)):
            setattr(model_cfg, f"{which}_lora_dropout", float(nested["dropout"]))
    return record


def check_label_hints(notebook_config: Mapping[str, Any] | None, dataset: str, num_classes: int,
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
