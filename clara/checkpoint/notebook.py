"""Import the CLARA authors' notebook checkpoints into our checkpoint folder.

`notebook_files.py` reads the `.pt`; `notebook_keys.py` reads the variant, fusion width, head
sizes, class count and LoRA ranks off the tensors, LoRA alpha and fusion heads (MVSA-Multiple:
the feedback temperature) off the notebook's CONFIG (or assumes and records them) and maps every
key. Here: the encoders are chosen, any key left over stops the import with the full list, the
result is written with `save_checkpoint` (config.json "source": kind "notebook", file, sha256,
...) and reloaded to check every tensor.
The steps and their reasons: docs/RELIABILITY.md, "Importing a notebook checkpoint".
"""
from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from clara.checkpoint.folder import load_checkpoint, save_checkpoint
from clara.checkpoint.notebook_files import NotebookImportError, read_notebook_file
from clara.checkpoint.notebook_keys import (CLIP_ANCHOR, DEBERTA_ANCHOR, VARIANT_NOTEBOOK, KeyMapping,
                                            apply_config_settings, check_label_hints, detect_variant,
                                            drop_extra_classes_from, head_shapes, is_lora_key, key_indices,
                                            lora_alpha, lora_settings, map_notebook_state_dict, ordered_like,
                                            our_encoder_prefixes, split_encoder_tensors)
from clara.config import CLIP_B16, CLIP_B32, DEBERTA_V3_BASE, LABELS, Config, ModelConfig, get_preset
from clara.model import EncoderError, build_text_encoder, build_tokenizer, build_vision_encoder, create_model
from clara.untrusted import UntrustedFolderError, check_model_folder

ENCODERS_FROM_FORMS = ("a folder with vision/ and text/ subfolders (save_pretrained output of the CLIP vision "
                       "model and of DeBERTa with its tokenizer), or 'VISION,TEXT' (two hub ids or folders)")
DEBERTA_LAYER_INDEX = re.compile(r"^encoder\.layer\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Choosing how our model gets its encoders

def _config_hub_id(notebook_config: Mapping[str, Any] | None, which: str) -> str | None:
    """The encoder's hub id in CONFIG: the notebooks' 'vision_model_id' / 'text_model_id' (or '<which>_encoder')."""
    for key in (f"{which}_model_id", f"{which}_encoder"):
        value = (notebook_config or {}).get(key)
        if isinstance(value, str) and value:
            return value
    return None


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
        if not is_lora_key(key):
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
                  if not is_lora_key(k) and not k.endswith("position_ids")}
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
        said.append(f"CLIP width {patch.shape[0]}, {len(key_indices(vision, 'encoder.layers.'))} layers, "
                    f"patch {patch.shape[-1]}, image {grid * int(patch.shape[-1])} px")
    words = text.get(DEBERTA_ANCHOR)
    if words is not None:
        said.append(f"DeBERTa width {words.shape[1]}, {len(key_indices(text, 'encoder.layer.'))} layers, "
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
        text_id = _config_hub_id(notebook_config, "text") or model_cfg.text_encoder
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
    vision = _config_hub_id(notebook_config, "vision")
    text = _config_hub_id(notebook_config, "text")
    return EncoderPlan("published", vision or model_cfg.vision_encoder, text or model_cfg.text_encoder,
                       "the file holds only trainable weights; base encoders from the hub ids of "
                       + ("the notebook's CONFIG" if vision and text else "the preset"))


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
        if Path(source).is_dir():
            check_model_folder(source)  # clara.untrusted: no code shipped with a tokenizer ever runs
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except UntrustedFolderError as exc:
        raise NotebookImportError(f"refusing the tokenizer {source}: {exc}") from None
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
            if key.startswith(prefix) and not is_lora_key(key) and not torch.equal(ours[key], tensor):
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
    if notebook.saved_by == "hfm" and dataset != "hfm":  # same wiring as MVSA-Single: only the layout tells
        raise NotebookImportError(f"{notebook.path}: the file has the HFM notebook's layout ({notebook.layout}), but "
                                  f"--dataset {dataset}; use --dataset hfm, or, if it really holds a {dataset} model, "
                                  "re-save it as {'model_state_dict': ..., 'config': ...}")
    if "fusion.v_proj.weight" not in state:
        raise NotebookImportError(f"{notebook.path}: no fusion.v_proj.weight: not a CLARA notebook state dict")
    head_hidden, num_classes = head_shapes(state, variant)
    label_hints = check_label_hints(notebook.notebook_config, dataset, num_classes, notebook.path,
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
    model_cfg.fusion_layers = len(key_indices(state, "fusion.blocks." if variant == "single" else "fusion.cross."))
    model_cfg.head_hidden_dim = None if head_hidden == model_cfg.hidden_dim and variant == "single" else head_hidden
    try:  # what the weights do not show comes from CONFIG (or, without one, is assumed and recorded)
        not_in_weights = apply_config_settings(model_cfg, notebook.notebook_config, variant)
        for which in ("vision", "text"):
            rank, targets = lora_settings(parts[which], which)
            alpha, alpha_from = lora_alpha(notebook.notebook_config, which, rank)
            setattr(model_cfg, f"{which}_lora_r", rank)
            setattr(model_cfg, f"{which}_lora_alpha", alpha)
            setattr(model_cfg, f"{which}_lora_targets",
                    ordered_like(targets, getattr(model_cfg, f"{which}_lora_targets")))
            not_in_weights[f"{which}_lora_alpha"] = {"value": alpha, "from": alpha_from}
    except NotebookImportError as exc:
        raise NotebookImportError(f"{notebook.path}: {exc}") from None
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
        n_text_layers = len(key_indices({k[len(prefixes['text']):]: 0 for k in our_shapes
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
              "file_layout": notebook.layout, "notebook_variant": VARIANT_NOTEBOOK[variant],
              "weights_in_file": "full" if full else "trainable",
              "encoders": plan.reason, "not_in_weights": not_in_weights,
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
