"""Configuration as dataclasses; each dataset's preset (clara.datasets) applied as overrides.

Every field can be overridden from the command line (`--set train.lr=3e-5`, parsed once by
`parse_assignments`); `Config.validate` checks every field's type and range with a one-line
ConfigError naming it. The resolved config is written into each checkpoint's `config.json`,
so a run can always be repeated.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clara.datasets import REGISTRY

DATASETS = tuple(REGISTRY)
LABELS: dict[str, list[str]] = {name: list(spec.labels) for name, spec in REGISTRY.items()}

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
    # Class names in class-index order. Empty: the registry's labels; a dataset without fixed labels
    # (custom) takes those its table holds, sorted, and training records them here.
    class_names: tuple[str, ...] = ()
    split_seed: int = 42
    max_text_length: int = 128
    pad_to_max_length: bool = False  # the notebooks pad to 128; we pad to the longest in the batch
    check_images: bool = True  # decode every image once at load time; unreadable ones are skipped
    # train/val read resized uint8 crops from a memory-mapped cache (docs/BENCHMARKS.md); None: on when training on a GPU
    image_cache: bool | None = None
    image_cache_dir: str | None = None  # None: $XDG_CACHE_HOME/clara/images


@dataclass
class ModelConfig:
    encoders: str = "published"  # published (hub id or local folder, clara/model/backbones.py) | tiny | random-full
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
    # LoRA targets left at these defaults (CLIP's, DeBERTa's) mean "the architecture's own"
    # (clara/model/backbones.py); anything else is used as given; ("all-linear",) is peft's every Linear.
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
    lr_scheduler: str = "linear"  # a transformers.get_scheduler name (LR_SCHEDULERS); linear: warm-up, then linear decay
    max_grad_norm: float = 1.0
    selection_metric: str = "f1_weighted"  # f1_weighted | f1_macro | accuracy
    loss: str = "clara"  # clara (CE + verify + KL terms) | focal (MVSA-Multiple)
    label_smoothing: float = 0.05
    verify_weight: float = 0.35
    kl_weight: float = 0.25
    sym_kl_weight: float = 0.05
    consistency_weight: float = 0.0  # MVSA-Multiple: weight of KL(v||p) + KL(p||v), summed (clara/train/losses.py)
    aux_weight: float = 0.0  # focal loss: weight of L(pred) + L(verify)
    focal_gammas: tuple[float, ...] = ()  # per class; empty: plain CE
    class_weight_boost: dict[str, float] = field(default_factory=dict)  # label name -> factor
    class_weights: str = "inverse_frequency"  # inverse_frequency | count_boosted (MVSA-Multiple) | none (HFM)
    # weighted (inverse class frequency) | extreme_negative (MVSA-Multiple's code: ~98 % negatives) |
    # negative_target (negatives exactly negative_min_fraction of draws) | random; clara/train/samplers.py
    sampler: str = "weighted"
    negative_min_fraction: float = 0.30
    negative_boost: float = 12.0  # extreme_negative: the negatives' draw weight x this (CONFIG['negative_class_boost'])
    negative_mixup_prob: float = 0.0
    negative_mixup_alpha: float = 0.4
    mixed_precision: str = "auto"  # auto (bf16 on GPU; on CPU the probe's choice for encoders >= 256 wide) | no | bf16
    num_workers: int | None = None  # DataLoader workers; None: 4 on a GPU (pinned, persistent), 0 on CPU
    # Fused AdamW, frozen weights cast once for autocast, eager vision attention on CPU (clara/train/fast_paths.py).
    fast_paths: bool = True
    length_grouped: bool = False  # batches of similar text length (less padding; docs/BENCHMARKS.md)
    seed: int = 42
    output_dir: str = "."  # stands for the repo root: checkpoints/ and results/ go under it
    calibrate: bool = True
    max_steps_per_epoch: int | None = None  # for smoke runs and benchmarks
    # Experiment tracker (Accelerate's): auto (tensorboard when installed, else none) | none | REPORT_TO's trackers.
    report_to: str = "auto"
    # MVSA-Multiple: every encoder weight trainable from this epoch on (cell 14's
    # set_trainable_except_lora(..., True) at epoch 3; AdamW covers all parameters from the start). None: LoRA only.
    full_finetune_from_epoch: int | None = None
    # Fixed logit offsets per label, scored on test beside raw (MVSA-Multiple cell 18: {"negative": 0.6}).
    posthoc_logit_bias: dict[str, float] = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def labels(self) -> list[str]:
        """data.class_names, else the registry's (empty for a custom dataset before its table is read)."""
        return list(self.data.class_names) if self.data.class_names else LABELS[self.data.dataset]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> "Config":
        """Rebuild from `to_dict()` output, validated; unknown keys are an error (they mean another
        code version), and so is anything but an object of objects (one-line ConfigError)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be an object of sections {', '.join(SECTIONS)}, "
                              f"got {_shown(raw)}")
        unknown = sorted(set(raw) - set(SECTIONS), key=str)
        if unknown:
            raise ConfigError(f"config has unknown sections {unknown}; was it written by another version of clara?")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' must be an object of fields, got {_shown(values)}")
            unknown = sorted(set(values) - set(_field_types(section_cls)), key=str)
            if unknown:
                raise ConfigError(f"config section '{name}' has unknown fields {unknown}; "
                                  "was it written by another version of clara?")
            values = {key: tuple(value) if isinstance(value, list) and typing.get_origin(
                          _strip_none(_field_types(section_cls)[key])) is tuple else value
                      for key, value in values.items()}  # JSON has lists where the code has tuples
            sections[name] = section_cls(**values)
        cfg = cls(**sections)
        cfg.validate()
        return cfg

    def override(self, assignments: Mapping[str, Any]) -> "Config":
        """Return a copy with `{"train.lr": "3e-5", ...}` applied; strings are parsed by field type."""
        new = copy.deepcopy(self)
        for dotted, value in assignments.items():
            section_name, _, field_name = dotted.partition(".")
            section = getattr(new, section_name, None) if section_name in SECTIONS else None
            if section is None or not field_name:
                raise ConfigError(f"unknown config key '{dotted}': use section.field with section in "
                                  "data, model, train")
            hints = _field_types(type(section))
            if field_name not in hints:
                choices = ", ".join(sorted(hints))
                raise ConfigError(f"unknown config key '{dotted}'; fields of '{section_name}': {choices}")
            setattr(section, field_name, _parse_value(dotted, copy.deepcopy(value), hints[field_name]))
        new.validate()
        return new

    def validate(self) -> None:
        """Check every field's type, then its allowed values; ConfigError naming the first bad one."""
        for name, section_cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, section_cls):
                raise ConfigError(f"config section '{name}' must be a {section_cls.__name__}, got {_shown(section)}")
            for field_name, hint in _field_types(section_cls).items():
                value = getattr(section, field_name)
                if not _has_type(value, hint):
                    raise ConfigError(f"{name}.{field_name} must be {_describe(hint)}, got {_shown(value)}")
        values = {f"{name}.{f}": getattr(getattr(self, name), f) for name, cls in SECTIONS.items()
                  for f in _field_types(cls)}
        for key, allowed in CHOICES.items():
            if values[key] not in allowed:
                shown = ", ".join(str(a) for a in allowed)
                raise ConfigError(f"{key}={values[key]!r} is not one of: {shown}")
        for key, (check, wanted) in RULES.items():
            value = values[key]
            items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
            if not all(item is None or check(item) for item in items):
                each = "every value of " if isinstance(value, (dict, tuple)) else ""
                raise ConfigError(f"{each}{key}={reprlib.repr(value)} must be {wanted}")
        if self.model.hidden_dim % self.model.fusion_heads:
            raise ConfigError(f"model.fusion_heads={self.model.fusion_heads} must divide "
                              f"model.hidden_dim={self.model.hidden_dim}")
        fixed = LABELS[self.data.dataset]
        if fixed and self.data.class_names and list(self.data.class_names) != fixed:
            raise ConfigError(f"data.class_names={list(self.data.class_names)} differ from {self.data.dataset}'s "
                              f"labels {fixed}; only a dataset without fixed labels (custom) takes them")
        names = self.data.class_names
        if len(set(names)) != len(names) or len(names) == 1:
            raise ConfigError(f"data.class_names={list(names)} must be at least 2 distinct class names")
        if not self.labels:  # custom before its table is read: the label checks run once labels are set
            return
        if self.train.focal_gammas and len(self.train.focal_gammas) != len(self.labels):
            raise ConfigError(f"train.focal_gammas has {len(self.train.focal_gammas)} values; {self.data.dataset} "
                              f"needs one per class {self.labels} (or none)")
        unknown = set(self.train.class_weight_boost) - set(self.labels)
        if unknown:
            raise ConfigError(f"train.class_weight_boost names unknown labels {sorted(unknown)}; "
                              f"labels of {self.data.dataset}: {self.labels}")
        unknown = set(self.train.posthoc_logit_bias) - set(self.labels)
        if unknown:
            raise ConfigError(f"train.posthoc_logit_bias names unknown labels {sorted(unknown)}; "
                              f"labels of {self.data.dataset}: {self.labels}")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
ABLATIONS = ("text_only", "image_only", "no_coattention", "no_verification", "no_feedback")
# transformers.get_scheduler names that need nothing but the warm-up and total step counts.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
# Accelerate's tracker names (accelerate.utils.LoggerType), with auto and none.
REPORT_TO = ("auto", "none", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab",
             "trackio")
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.dataset": DATASETS,
    "data.protocol": ("clara", "standard"),
    "data.hfm_label": ("human", "hashtag"),
    "model.encoders": ("published", "tiny", "random-full"),
    "model.fusion": ("token", "pooled"),
    "model.variant": ("single", "multiple"),
    "model.ablation": (None, *ABLATIONS),
    "train.selection_metric": ("f1_weighted", "f1_macro", "accuracy"),
    "train.loss": ("clara", "focal"),
    # boost_negative: the former name of negative_target, kept so earlier config.json files load.
    "train.sampler": ("weighted", "extreme_negative", "negative_target", "boost_negative", "random"),
    "train.class_weights": ("inverse_frequency", "count_boosted", "none"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "train.lr_scheduler": LR_SCHEDULERS,
    "train.report_to": REPORT_TO,
}

# Range rules: (check, what it wants). A tuple's items and a dict's values are checked one by one;
# None (an optional field left unset) always passes. NaN fails every comparison, so it is refused.
AT_LEAST_1: tuple[Callable[[Any], bool], str] = (lambda v: v >= 1, "at least 1")
AT_LEAST_0: tuple[Callable[[Any], bool], str] = (lambda v: v >= 0, "at least 0")
POSITIVE: tuple[Callable[[Any], bool], str] = (lambda v: 0 < v < math.inf, "a finite number > 0")
NON_NEGATIVE: tuple[Callable[[Any], bool], str] = (lambda v: 0 <= v < math.inf, "a finite number >= 0")
FRACTION: tuple[Callable[[Any], bool], str] = (lambda v: 0 <= v <= 1, "in [0, 1]")
BELOW_1: tuple[Callable[[Any], bool], str] = (lambda v: 0 <= v < 1, "in [0, 1)")
SEED: tuple[Callable[[Any], bool], str] = (lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)")  # numpy's seed range
NOT_EMPTY: tuple[Callable[[Any], bool], str] = (lambda v: bool(v.strip()), "a non-empty string")
FINITE: tuple[Callable[[Any], bool], str] = (lambda v: math.isfinite(v), "a finite number")
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.data_dir": NOT_EMPTY,
    "data.splits_file": NOT_EMPTY,
    "data.class_names": NOT_EMPTY,
    "data.split_seed": SEED,
    "data.max_text_length": AT_LEAST_1,
    "data.image_cache_dir": NOT_EMPTY,
    "model.vision_encoder": NOT_EMPTY,
    "model.text_encoder": NOT_EMPTY,
    "model.hidden_dim": AT_LEAST_1,
    "model.fusion_layers": AT_LEAST_1,
    "model.fusion_heads": AT_LEAST_1,
    "model.fusion_dropout": BELOW_1,
    "model.head_dropout": BELOW_1,
    "model.head_hidden_dim": AT_LEAST_1,
    "model.feedback_temperature": POSITIVE,
    "model.vision_lora_r": AT_LEAST_1,
    "model.vision_lora_alpha": AT_LEAST_1,
    "model.vision_lora_dropout": BELOW_1,
    "model.vision_lora_targets": NOT_EMPTY,
    "model.text_lora_r": AT_LEAST_1,
    "model.text_lora_alpha": AT_LEAST_1,
    "model.text_lora_dropout": BELOW_1,
    "model.text_lora_targets": NOT_EMPTY,
    "model.unfreeze_last_text_layers": AT_LEAST_0,
    "train.epochs": AT_LEAST_1,
    "train.patience": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.eval_batch_size": AT_LEAST_1,
    "train.grad_accum_steps": AT_LEAST_1,
    "train.lr": NON_NEGATIVE,  # 0 is allowed: a run that must not learn (tests use it)
    "train.weight_decay": NON_NEGATIVE,
    "train.warmup_ratio": FRACTION,
    "train.max_grad_norm": POSITIVE,
    "train.label_smoothing": BELOW_1,
    "train.verify_weight": NON_NEGATIVE,
    "train.kl_weight": NON_NEGATIVE,
    "train.sym_kl_weight": NON_NEGATIVE,
    "train.consistency_weight": NON_NEGATIVE,
    "train.aux_weight": NON_NEGATIVE,
    "train.focal_gammas": NON_NEGATIVE,
    "train.class_weight_boost": POSITIVE,
    "train.negative_min_fraction": BELOW_1,  # 1 would leave no room for the other classes
    "train.negative_boost": POSITIVE,
    "train.negative_mixup_prob": FRACTION,
    "train.negative_mixup_alpha": POSITIVE,
    "train.num_workers": AT_LEAST_0,
    "train.seed": SEED,
    "train.output_dir": NOT_EMPTY,
    "train.max_steps_per_epoch": AT_LEAST_1,
    "train.full_finetune_from_epoch": AT_LEAST_1,
    "train.posthoc_logit_bias": FINITE,
}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """Command-line `--set SECTION.FIELD=VALUE` items as {"SECTION.FIELD": "VALUE"} (for
    `Config.override`); a one-line ConfigError naming the item that has another shape."""
    assignments = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=3e-5")
        assignments[key.strip()] = value
    return assignments


def get_preset(dataset: str) -> Config:
    """The published CLARA settings for one dataset: its registry preset applied to the defaults."""
    if dataset not in REGISTRY:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return Config(data=DataConfig(dataset=dataset)).override(REGISTRY[dataset].preset)


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _strip_none(hint: Any) -> Any:
    """`X` for `X | None`, else the hint itself."""
    if isinstance(hint, types.UnionType):
        rest = [h for h in typing.get_args(hint) if h is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _has_type(value: Any, hint: Any) -> bool:
    """Whether `value` is of the field type `hint` (bool is not a number; an int is a float)."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return isinstance(value, tuple) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1])
                                               for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """A field type in JSON words, e.g. 'an integer or null'."""
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return f"an object of {_describe(args[1]).split(' ', 1)[1]}s"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "null"}[hint]


def _shown(value: Any) -> str:
    """A value for an error message: its type and a repr cut short (config.json may hold anything)."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


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
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"cannot set {key}={value!r}: {exc}") from None
    return text
