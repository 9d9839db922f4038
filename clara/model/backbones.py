"""What clara needs to know about each encoder architecture, keyed by transformers' `model_type`.

One entry per architecture: its LoRA targets, whether the vision tower's first token is a CLS
token, the image statistics used when a folder has no preprocessor config, what is left out when
loading (SigLIP's attention-pooling head, RoBERTa's pooler: the fusion pools the tokens itself),
where relevancy finds each self-attention layer's pieces and where LIG finds the text embedding
block. A composite checkpoint (`clip`, `siglip`) is read through its vision sub-config. Adding an
architecture is one entry here and a tiny model in tests/test_backbones.py (docs/METHOD.md).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from transformers.utils.constants import (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN,
                                          OPENAI_CLIP_STD)

# peft's own value for "every Linear layer except the output layer"; set as the one target.
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class AttentionLayout:
    """Where relevancy (clara/explain/relevancy.py) finds one self-attention layer's pieces.

    `returns_probabilities`: the module returns its attention probabilities A when asked
    (DeBERTa's disentangled attention, which cannot be recomputed from q and k alone). Otherwise A
    is recomputed as softmax(q·kᵀ/√d) from the `query` / `key` children, and the per-head output
    O = A·V is the input of child `heads_output` (None: the module's own first output).
    """
    module_class: str  # class name of the self-attention modules, one per layer
    query: str = "q_proj"
    key: str = "k_proj"
    value: str = "v_proj"
    heads_output: str | None = "out_proj"
    returns_probabilities: bool = False


@dataclass(frozen=True)
class Backbone:
    """One encoder architecture (see the module docstring)."""
    model_type: str
    lora_targets: tuple[str, ...]
    attention: AttentionLayout
    load_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # from_pretrained kwargs
    cls_token: bool = False  # vision: token 0 of last_hidden_state is CLS, then the patch grid row-major
    image_mean: tuple[float, float, float] | None = None  # vision, without a preprocessor config
    image_std: tuple[float, float, float] | None = None
    embedding_block: str = "embeddings"  # text: submodule of the base model holding word_embeddings (LIG)


_VIT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_BERT_TARGETS = ("query", "key", "value")

VISION_BACKBONES: dict[str, Backbone] = {entry.model_type: entry for entry in (
    Backbone("clip_vision_model", _VIT_TARGETS, AttentionLayout("CLIPAttention"), cls_token=True,
             image_mean=tuple(OPENAI_CLIP_MEAN), image_std=tuple(OPENAI_CLIP_STD)),
    Backbone("siglip_vision_model", _VIT_TARGETS, AttentionLayout("SiglipAttention"),
             load_options=MappingProxyType({"vision_use_head": False}), cls_token=False,
             image_mean=tuple(IMAGENET_STANDARD_MEAN), image_std=tuple(IMAGENET_STANDARD_STD)),
)}

TEXT_BACKBONES: dict[str, Backbone] = {entry.model_type: entry for entry in (
    Backbone("deberta-v2", ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2 and -v3
             AttentionLayout("DisentangledSelfAttention", query="query_proj", key="key_proj", value="value_proj",
                             heads_output=None, returns_probabilities=True)),
    Backbone("roberta", _BERT_TARGETS, AttentionLayout("RobertaSelfAttention", *_BERT_TARGETS, heads_output=None),
             load_options=MappingProxyType({"add_pooling_layer": False})),
    Backbone("xlm-roberta", _BERT_TARGETS,
             AttentionLayout("XLMRobertaSelfAttention", *_BERT_TARGETS, heads_output=None),
             load_options=MappingProxyType({"add_pooling_layer": False})),
)}


def vision_backbone(model_type: str) -> Backbone | None:
    """The vision entry for a tower's `config.model_type`, None if clara has none."""
    return VISION_BACKBONES.get(model_type)


def text_backbone(model_type: str) -> Backbone | None:
    """The text entry for a tower's `config.model_type`, None if clara has none."""
    return TEXT_BACKBONES.get(model_type)


def peft_targets(targets: tuple[str, ...]) -> list[str] | str:
    """What peft's `target_modules` takes: the names, or the string `all-linear` when that is the one target."""
    return ALL_LINEAR if tuple(targets) == (ALL_LINEAR,) else list(targets)
