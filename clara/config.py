"""Configuration as dataclasses, with one preset per dataset holding the published settings.

Every field can be overridden from the command line (`--set train.lr=3e-5`); the resolved
config is written into each checkpoint's `config.json`, so a run can always be repeated.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("mvsa_single", "mvsa_multiple", "hfm")

# Label order follows the notebooks (their MVSA-Multiple oversampling names class 2 "negative").
LABELS: dict[str, list[str]] = {
    "mvsa_single": ["positive", "neutral", "negative"],
    "mvsa_multiple": ["positive", "neutral", "negative"],
    # HFM is Cai et al.'s Twitter sarcasm dataset: 1 = sarcastic (not "hateful", not "positive").
    "hfm": ["not_sarcastic", "sarcastic"],
}

# Hub ids used when --encoders published; a local folder path works in their place.
CLIP_B32 = "openai/clip-vit-base-patch32"
CLIP_B16 = "openai/clip-vit-base-patch16"
DEBERTA_V3_BASE = "microsoft/deberta-v3-base"


class ConfigError(ValueError):
    """A config value or override that cannot be used; the message says which field and why."""


@dataclass
class DataConfig:
    dataset: str = "mvsa_single"
    data_dir: str | None = None
    protocol: str = "clara"  # clara (agreement filter, 70/15/15) | standard (Xu et al. 2017, 8:1:1)
    hfm_label: str = "human"  # human (last field, standard) | hashtag (third field, as the CLARA notebooks)
    splits_file: str | None = None  # user-supplied ids per split; overrides the random split
    split_seed: int = 42
    max_text_length: int = 128
    pad_to_max_length: bool = False  # the notebooks pad to 128; we pad to the longest in the batch
    check_images: bool = True  # decode every image once at load time; unreadable ones are skipped
    image_cache: bool = False  # train/val read resized uint8 crops from a memory-mapped cache (docs/BENCHMARKS.md)
    image_cache_dir: str | None = None  # None: $XDG_CACHE_HOME/clara/images


@dataclass
class ModelConfig:
    encoders: str = "published"  # published (hub id or local folder) | tiny | random-full
    vision_encoder: str = CLIP_B32
    text_encoder: str = DEBERTA_V3_BASE
    fusion: str = "token"  # token (paper: bidirectional token co-attention) | pooled (notebooks)
    # Which notebook's fusion/head wiring to follow: "single" (MVSA-Single, HFM) or
    # "multiple" (MVSA-Multiple: shared cross-attention, 256-wide heads, separate final layer).
    variant: str = "single"
    hidden_dim: int = 512
    fusion_layers: int = 2
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    head_dropout: float = 0.2
    head_hidden_dim: int | None = None  # None: hidden_dim ("single"); 256 in the "multiple" preset
    feedback_temperature: float = 0.5  # "multiple" variant: probabilities fed back at this temperature
    vision_lora_r: int = 32
    vision_lora_alpha: int = 64
    vision_lora_dropout: float = 0.05
    vision_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    text_lora_r: int = 64
    text_lora_alpha: int = 128
    text_lora_dropout: float = 0.10
    text_lora_targets: tuple[str, ...] = ("query_proj", "key_proj", "value_proj")
    unfreeze_last_text_layers: int = 0  # MVSA-Single unfreezes the last DeBERTa layer
    gradient_checkpointing: bool = False
    ablation: str | None = None  # train-time: text_only | image_only | no_coattention | no_verification | no_feedback


@dataclass
class TrainConfig:
    epochs: int = 50
    patience: int = 12
    batch_size: int = 16
    eval_batch_size: int = 64
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.10
    max_grad_norm: float = 1.0
    selection_metric: str = "f1_weighted"  # f1_weighted | f1_macro | accuracy
    loss: str = "clara"  # clara (CE + verify + KL terms) | focal (MVSA-Multiple)
    label_smoothing: float = 0.05
    verify_weight: float = 0.35
    kl_weight: float = 0.25
    sym_kl_weight: float = 0.05
    aux_weight: float = 0.0  # focal loss: weight of L(pred) + L(verify)
    focal_gammas: tuple[float, ...] = ()  # per class; empty: plain CE
    class_weight_boost: dict[str, float] = field(default_factory=dict)  # label name -> factor
    sampler: str = "weighted"  # weighted (inverse class frequency) | boost_negative | random
    negative_min_fraction: float = 0.30
    negative_mixup_prob: float = 0.0
    negative_mixup_alpha: float = 0.4
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16
    num_workers: int = 0
    length_grouped: bool = False  # batches of similar text length (less padding; docs/BENCHMARKS.md)
    seed: int = 42
    output_dir: str = "."  # stands for the repo root: checkpoints/ and results/ go under it
    calibrate: bool = True
    max_steps_per_epoch: int | None = None  # for smoke runs and benchmarks


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def labels(self) -> list[str]:
        return LABELS[self.data.dataset]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        """Rebuild from `to_dict()` output; unknown keys are an error (they mean another code version)."""
        sections = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            values = dict(raw.get(f.name, {}))
            known = {sf.name for sf in dataclasses.fields(sub_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"config section '{f.name}' has unknown fields {sorted(unknown)}; "
                                  "was it written by another version of clara?")
            hints = typing.get_type_hints(sub_cls)
            for key, value in values.items():
                if isinstance(value, list) and "tuple" in str(hints[key]):
                    values[key] = tuple(value)
            sections[f.name] = sub_cls(**values)
        return cls(**sections)

    def override(self, assignments: dict[str, Any]) -> "Config":
        """Return a copy with `{"train.lr": "3e-5", ...}` applied; values are parsed by field type."""
        new = copy.deepcopy(self)
        for dotted, value in assignments.items():
            section_name, _, field_name = dotted.partition(".")
            section = getattr(new, section_name, None)
            if section is None or not dataclasses.is_dataclass(section) or not field_name:
                raise ConfigError(f"unknown config key '{dotted}': use section.field with section in "
                                  "data, model, train")
            hints = typing.get_type_hints(type(section))
            if field_name not in hints:
                choices = ", ".join(sorted(hints))
                raise ConfigError(f"unknown config key '{dotted}'; fields of '{section_name}': {choices}")
            setattr(section, field_name, _parse_value(dotted, value, hints[field_name]))
        new.validate()
        return new

    def validate(self) -> None:
        choices = {
            "data.dataset": (self.data.dataset, DATASETS),
            "data.protocol": (self.data.protocol, ("clara", "standard")),
            "data.hfm_label": (self.data.hfm_label, ("human", "hashtag")),
            "model.encoders": (self.model.encoders, ("published", "tiny", "random-full")),
            "model.fusion": (self.model.fusion, ("token", "pooled")),
            "model.variant": (self.model.variant, ("single", "multiple")),
            "model.ablation": (self.model.ablation, (None, *ABLATIONS)),
            "train.selection_metric": (self.train.selection_metric, ("f1_weighted", "f1_macro", "accuracy")),
            "train.loss": (self.train.loss, ("clara", "focal")),
            "train.sampler": (self.train.sampler, ("weighted", "boost_negative", "random")),
            "train.mixed_precision": (self.train.mixed_precision, ("auto", "no", "bf16", "fp16")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                shown = ", ".join(str(a) for a in allowed)
                raise ConfigError(f"{key}={value!r} is not one of: {shown}")
        unknown = set(self.train.class_weight_boost) - set(self.labels)
        if unknown:
            raise ConfigError(f"train.class_weight_boost names unknown labels {sorted(unknown)}; "
                              f"labels of {self.data.dataset}: {self.labels}")


ABLATIONS = ("text_only", "image_only", "no_coattention", "no_verification", "no_feedback")


def _parse_value(key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    hint_str = str(hint)
    if text.lower() in ("none", "null") and "None" in hint_str:
        return None
    try:
        if "dict" in hint_str or "tuple" in hint_str:
            parsed = json.loads(text) if text.startswith(("{", "[")) else [p for p in text.split(",") if p]
            if "tuple" in hint_str:
                inner = float if "float" in hint_str else str
                return tuple(inner(p) for p in parsed)
            return {str(k): float(v) for k, v in parsed.items()}
        if hint is bool or hint_str.startswith("bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if "int" in hint_str and "float" not in hint_str:
            return int(text)
        if "float" in hint_str:
            return float(text)
    except (ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot set {key}={value!r}: {exc}") from None
    return text


def get_preset(dataset: str) -> Config:
    """The published CLARA settings for one dataset (clara-reference.md §2-§3)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    cfg = Config(data=DataConfig(dataset=dataset))
    if dataset == "mvsa_single":
        cfg.model.unfreeze_last_text_layers = 1
        cfg.model.gradient_checkpointing = False  # the notebook used it; it only saves memory we have
        cfg.train = TrainConfig(batch_size=16, lr=1e-4, warmup_ratio=0.10, epochs=50, patience=12,
                                selection_metric="f1_weighted", sampler="weighted")
    elif dataset == "hfm":
        cfg.data.pad_to_max_length = False
        cfg.train = TrainConfig(batch_size=128, lr=1e-4, warmup_ratio=0.10, epochs=50, patience=10,
                                selection_metric="f1_macro", sampler="random")
    elif dataset == "mvsa_multiple":
        cfg.model.variant = "multiple"
        cfg.model.head_hidden_dim = 256
        cfg.train = TrainConfig(batch_size=48, grad_accum_steps=2, lr=5e-5, warmup_ratio=0.16,
                                epochs=50, patience=12, selection_metric="f1_weighted",
                                loss="focal", label_smoothing=0.02, aux_weight=0.30,
                                verify_weight=0.0, kl_weight=0.0, sym_kl_weight=0.10,
                                focal_gammas=(1.0, 2.0, 4.0), class_weight_boost={"negative": 12.0},
                                sampler="boost_negative", negative_min_fraction=0.30,
                                negative_mixup_prob=0.5, negative_mixup_alpha=0.4)
    cfg.validate()
    return cfg
