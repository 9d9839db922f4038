"""The config: presets from the dataset registry, `--set` parsing, and one-line validation of
every field (issue 13: a bad config.json or override is refused naming the field)."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from clara.config import (CHOICES, DATASETS, LABELS, RULES, SECTIONS, Config, ConfigError, DataConfig, get_preset,
                          parse_assignments)
from clara.datasets import (CLASS_F1_METRICS, PUBLISHED_ABLATIONS, PUBLISHED_CLARA, REGISTRY,
                            STANDARD_PROTOCOL_RESULTS, spec_for_labels)

# What get_preset gave before the presets became registry data (commit db0ce08): the defaults,
# then each dataset's differences from them. Fields added since are not compared here.
DEFAULTS = {
    "data": {"dataset": "mvsa_single", "data_dir": None, "protocol": "clara", "hfm_label": "human",
             "splits_file": None, "split_seed": 42, "max_text_length": 128, "pad_to_max_length": False,
             "check_images": True, "image_cache": False, "image_cache_dir": None},
    "model": {"encoders": "published", "vision_encoder": "openai/clip-vit-base-patch32",
              "text_encoder": "microsoft/deberta-v3-base", "fusion": "token", "variant": "single", "hidden_dim": 512,
              "fusion_layers": 2, "fusion_heads": 8, "fusion_dropout": 0.1, "head_dropout": 0.2,
              "head_hidden_dim": None, "feedback_temperature": 0.5, "vision_lora_r": 32, "vision_lora_alpha": 64,
              "vision_lora_dropout": 0.05, "vision_lora_targets": ("q_proj", "k_proj", "v_proj", "out_proj"),
              "text_lora_r": 64, "text_lora_alpha": 128, "text_lora_dropout": 0.1,
              "text_lora_targets": ("query_proj", "key_proj", "value_proj"), "unfreeze_last_text_layers": 0,
              "gradient_checkpointing": False, "ablation": None},
    "train": {"epochs": 50, "patience": 12, "batch_size": 16, "eval_batch_size": 64, "grad_accum_steps": 1,
              "lr": 0.0001, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
              "selection_metric": "f1_weighted", "loss": "clara", "label_smoothing": 0.05, "verify_weight": 0.35,
              "kl_weight": 0.25, "sym_kl_weight": 0.05, "aux_weight": 0.0, "focal_gammas": (),
              "class_weight_boost": {}, "sampler": "weighted", "negative_min_fraction": 0.3,
              "negative_mixup_prob": 0.0, "negative_mixup_alpha": 0.4, "mixed_precision": "auto", "num_workers": 0,
              "length_grouped": False, "seed": 42, "output_dir": ".", "calibrate": True,
              "max_steps_per_epoch": None},
}
PRESET_CHANGES = {
    "mvsa_single": {"model.unfreeze_last_text_layers": 1, "model.fusion": "pooled"},
    "mvsa_multiple": {
        "data.dataset": "mvsa_multiple", "model.fusion": "pooled", "model.variant": "multiple", "model.head_hidden_dim": 256,
        "train.batch_size": 48, "train.grad_accum_steps": 2, "train.lr": 5e-05, "train.warmup_ratio": 0.16,
        "train.loss": "focal", "train.label_smoothing": 0.02, "train.verify_weight": 0.0, "train.kl_weight": 0.0,
        "train.sym_kl_weight": 0.0, "train.aux_weight": 0.3, "train.focal_gammas": (1.0, 2.0, 4.0),
        "train.class_weight_boost": {"negative": 12.0}, "train.sampler": "extreme_negative",
        "train.negative_mixup_prob": 0.5},
    "hfm": {"data.dataset": "hfm", "model.fusion": "pooled", "train.patience": 10, "train.batch_size": 128,
            "train.selection_metric": "f1_macro", "train.sampler": "weighted", "data.max_text_length": 64},
    "custom": {"data.dataset": "custom", "train.selection_metric": "f1_macro", "train.calibrate": False},
}


def with_changes(raw: dict, changes: dict) -> dict:
    raw = copy.deepcopy(raw)
    for dotted, value in changes.items():
        section, name = dotted.split(".")
        raw[section][name] = value
    return raw


# ----------------------------------------------------------------------------- presets and registry

def fields_of_db0ce08(raw: dict) -> dict:
    return {section: {name: raw[section][name] for name in DEFAULTS[section]} for section in DEFAULTS}


# Changed on purpose since (issue 14): unset now means "decided by the device" (clara.train.data.
# resolve_loader_settings: 4 workers and the image cache on a GPU), which on CPU is the old value.
DECIDED_BY_DEVICE = {"data.image_cache": None, "train.num_workers": None}


def test_defaults_are_unchanged():
    assert fields_of_db0ce08(Config().to_dict()) == with_changes(DEFAULTS, DECIDED_BY_DEVICE)


@pytest.mark.parametrize("dataset", DATASETS)
def test_presets_are_unchanged(dataset):
    assert fields_of_db0ce08(get_preset(dataset).to_dict()) == with_changes(DEFAULTS, {**PRESET_CHANGES[dataset],
                                                                                       **DECIDED_BY_DEVICE})


def test_presets_hold_the_published_settings_that_change_behaviour():
    single, multiple, hfm = (get_preset(d) for d in ("mvsa_single", "mvsa_multiple", "hfm"))
    assert single.model.unfreeze_last_text_layers == 1 and single.train.selection_metric == "f1_weighted"
    assert (multiple.model.variant, multiple.model.head_hidden_dim, multiple.train.loss) == ("multiple", 256, "focal")
    assert len(multiple.train.focal_gammas) == len(multiple.labels)
    assert multiple.train.class_weights == "count_boosted" and multiple.train.sampler == "extreme_negative"
    assert multiple.train.consistency_weight == 0.10 and multiple.train.sym_kl_weight == 0.0
    assert (hfm.train.selection_metric, hfm.train.sampler, hfm.train.batch_size) == ("f1_macro", "weighted", 128)
    assert (hfm.train.class_weights, hfm.data.max_text_length) == ("none", 64)
    assert hfm.labels == ["not_sarcastic", "sarcastic"]
    assert {c.model.fusion for c in (single, multiple, hfm)} == {"pooled"}  # as the notebooks fuse


def test_a_preset_is_a_fresh_copy():
    get_preset("mvsa_multiple").train.class_weight_boost["negative"] = 1.0
    assert get_preset("mvsa_multiple").train.class_weight_boost == {"negative": 12.0}
    assert REGISTRY["mvsa_multiple"].preset["train.class_weight_boost"] == {"negative": 12.0}


def test_registry_entries_fit_the_code():
    assert DATASETS == tuple(REGISTRY) == ("mvsa_single", "mvsa_multiple", "hfm", "custom")
    for name, spec in REGISTRY.items():
        if not spec.labels:  # custom: labels come from the data of each run
            assert name == "custom" and name not in PUBLISHED_CLARA
            continue
        assert LABELS[name] == list(spec.labels) == get_preset(name).labels
        assert callable(spec.reader)
        assert spec.calibration_target in spec.labels and set(spec.f1_classes) <= set(spec.labels)
        assert set(PUBLISHED_CLARA[name]["per_class_f1"]) == set(spec.labels)
        assert spec_for_labels(spec.labels).labels == spec.labels
    assert spec_for_labels(["a", "b"]) is None
    assert CLASS_F1_METRICS == ("f1_sarcastic",)
    assert all(set(per_dataset) <= set(REGISTRY) for per_dataset in STANDARD_PROTOCOL_RESULTS.values())
    assert set(PUBLISHED_ABLATIONS) == {"full", "no_verification", "no_feedback", "no_coattention", "text_only",
                                        "image_only"}


def test_registry_and_config_import_no_torch_and_no_reader():
    code = ("import sys, clara.config, clara.datasets; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('clara.data', 'PIL'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "['clara.datasets']"


@pytest.mark.parametrize("dataset", DATASETS)
def test_round_trip_through_json(dataset):
    cfg = get_preset(dataset).override({"model.ablation": "text_only", "train.max_steps_per_epoch": "3"})
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'mvsa'; choose one of: mvsa_single, mvsa_multiple, hfm"):
        get_preset("mvsa")


# ----------------------------------------------------------------------------- --set parsing

def test_parse_assignments():
    assert parse_assignments([]) == {}
    assert parse_assignments(["train.lr=3e-5", " model.vision_encoder =/m/a=b", "data.data_dir="]) == {
        "train.lr": "3e-5", "model.vision_encoder": "/m/a=b", "data.data_dir": ""}


@pytest.mark.parametrize("item", ["fusion", "lr=1", "train.lr", ".lr=1", "train.=1", "=1"])
def test_parse_assignments_names_the_bad_item(item):
    with pytest.raises(ConfigError) as error:
        parse_assignments(["train.epochs=1", item])
    assert str(error.value) == f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=3e-5"


# ----------------------------------------------------------------------------- validation

def refused(raw: object) -> str:
    with pytest.raises(ConfigError) as error:
        Config.from_dict(raw)
    message = str(error.value)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize("raw, message", [
    ([], "a config must be an object of sections data, model, train, got list []"),
    ("x", "a config must be an object of sections data, model, train, got str 'x'"),
    ({"labels": 5}, "config has unknown sections ['labels']"),
    ({"data": "x"}, "config section 'data' must be an object of fields, got str 'x'"),
    ({"model": [1]}, "config section 'model' must be an object of fields, got list [1]"),
    ({"data": {"labels": 5}}, "config section 'data' has unknown fields ['labels']"),
])
def test_wrong_json_shapes_are_refused_in_one_line(raw, message):
    assert message in refused(raw)


@pytest.mark.parametrize("changes, message", [
    ({"model.hidden_dim": "64"}, "model.hidden_dim must be an integer, got str '64'"),
    ({"model.hidden_dim": 64.0}, "model.hidden_dim must be an integer, got float 64.0"),
    ({"model.hidden_dim": True}, "model.hidden_dim must be an integer, got bool True"),
    ({"train.lr": "1e-4"}, "train.lr must be a number, got str '1e-4'"),
    ({"data.check_images": 1}, "data.check_images must be true or false, got int 1"),
    ({"data.dataset": 5}, "data.dataset must be a string, got int 5"),
    ({"data.data_dir": 5}, "data.data_dir must be a string or null"),
    ({"model.head_hidden_dim": "256"}, "model.head_hidden_dim must be an integer or null"),
    ({"model.vision_lora_targets": "q_proj"}, "model.vision_lora_targets must be a list of strings"),
    ({"model.vision_lora_targets": [1]}, "model.vision_lora_targets must be a list of strings"),
    ({"train.focal_gammas": ["x"]}, "train.focal_gammas must be a list of numbers"),
    ({"train.class_weight_boost": [1]}, "train.class_weight_boost must be an object of numbers"),
    ({"train.class_weight_boost": {"negative": "12"}}, "train.class_weight_boost must be an object of numbers"),
    ({"model.ablation": ["text_only"]}, "model.ablation must be a string or null"),
])
def test_wrong_types_are_refused_naming_the_field(changes, message):
    assert message in refused(with_changes(DEFAULTS, changes))


def test_every_field_refuses_a_value_of_another_type():
    for section, section_cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(section_cls).items():
            wrong = {"x": 1} if "dict" not in str(hint) else [1]
            assert refused(with_changes(DEFAULTS, {f"{section}.{name}": wrong})).startswith(f"{section}.{name} ")


def test_every_number_and_string_field_has_a_rule():
    for section, section_cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(section_cls).items():
            key = f"{section}.{name}"
            if "bool" not in str(hint):
                assert key in RULES or key in CHOICES, key


@pytest.mark.parametrize("changes, message", [
    ({"data.max_text_length": 0}, "data.max_text_length=0 must be at least 1"),
    ({"model.fusion_heads": 3}, "model.fusion_heads=3 must divide model.hidden_dim=512"),
    ({"model.fusion_heads": 0}, "model.fusion_heads=0 must be at least 1"),
    ({"model.feedback_temperature": 0}, "model.feedback_temperature=0 must be a finite number > 0"),
    ({"model.feedback_temperature": float("nan")}, "model.feedback_temperature=nan must be a finite number > 0"),
    ({"model.feedback_temperature": float("inf")}, "model.feedback_temperature=inf must be a finite number > 0"),
    ({"model.hidden_dim": 0}, "model.hidden_dim=0 must be at least 1"),
    ({"model.fusion_layers": 0}, "model.fusion_layers=0 must be at least 1"),
    ({"model.fusion_dropout": 1.0}, "model.fusion_dropout=1.0 must be in [0, 1)"),
    ({"model.head_dropout": -0.1}, "model.head_dropout=-0.1 must be in [0, 1)"),
    ({"model.head_hidden_dim": 0}, "model.head_hidden_dim=0 must be at least 1"),
    ({"model.vision_lora_r": 0}, "model.vision_lora_r=0 must be at least 1"),
    ({"model.text_lora_alpha": 0}, "model.text_lora_alpha=0 must be at least 1"),
    ({"model.text_lora_dropout": float("nan")}, "model.text_lora_dropout=nan must be in [0, 1)"),
    ({"model.text_lora_targets": ["query_proj", " "]}, "every value of model.text_lora_targets="),
    ({"model.vision_encoder": ""}, "model.vision_encoder='' must be a non-empty string"),
    ({"model.unfreeze_last_text_layers": -1}, "model.unfreeze_last_text_layers=-1 must be at least 0"),
    ({"data.split_seed": -1}, "data.split_seed=-1 must be in [0, 2**32)"),
    ({"train.epochs": 0}, "train.epochs=0 must be at least 1"),
    ({"train.patience": 0}, "train.patience=0 must be at least 1"),
    ({"train.batch_size": 0}, "train.batch_size=0 must be at least 1"),
    ({"train.eval_batch_size": 0}, "train.eval_batch_size=0 must be at least 1"),
    ({"train.grad_accum_steps": 0}, "train.grad_accum_steps=0 must be at least 1"),
    ({"train.max_steps_per_epoch": 0}, "train.max_steps_per_epoch=0 must be at least 1"),
    ({"train.lr": -1e-4}, "train.lr=-0.0001 must be a finite number >= 0"),
    ({"train.lr": float("nan")}, "train.lr=nan must be a finite number >= 0"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay=inf must be a finite number >= 0"),
    ({"train.max_grad_norm": 0}, "train.max_grad_norm=0 must be a finite number > 0"),
    ({"train.warmup_ratio": 1.5}, "train.warmup_ratio=1.5 must be in [0, 1]"),
    ({"train.negative_mixup_prob": -0.5}, "train.negative_mixup_prob=-0.5 must be in [0, 1]"),
    ({"train.negative_min_fraction": 1.0}, "train.negative_min_fraction=1.0 must be in [0, 1)"),
    ({"train.negative_mixup_alpha": 0}, "train.negative_mixup_alpha=0 must be a finite number > 0"),
    ({"train.label_smoothing": 1}, "train.label_smoothing=1 must be in [0, 1)"),
    ({"train.verify_weight": -1}, "train.verify_weight=-1 must be a finite number >= 0"),
    ({"train.kl_weight": float("nan")}, "train.kl_weight=nan must be a finite number >= 0"),
    ({"train.num_workers": -1}, "train.num_workers=-1 must be at least 0"),
    ({"train.seed": 2 ** 32}, "train.seed=4294967296 must be in [0, 2**32)"),
    ({"train.output_dir": ""}, "train.output_dir='' must be a non-empty string"),
    ({"train.focal_gammas": [1.0, -2.0, 4.0]}, "every value of train.focal_gammas=(1.0, -2.0, 4.0) must be"),
    ({"train.focal_gammas": [1.0, 2.0]}, "train.focal_gammas has 2 values; mvsa_single needs one per class"),
    ({"train.class_weight_boost": {"negative": 0}}, "every value of train.class_weight_boost={'negative': 0}"),
    ({"train.class_weight_boost": {"sarcastic": 2}}, "train.class_weight_boost names unknown labels ['sarcastic']"),
    ({"data.dataset": "mvsa"}, "data.dataset='mvsa' is not one of: mvsa_single, mvsa_multiple, hfm"),
    ({"train.loss": "mse"}, "train.loss='mse' is not one of: clara, focal"),
])
def test_out_of_range_values_are_refused_naming_the_field(changes, message):
    assert message in refused(with_changes(DEFAULTS, changes))


def test_a_deeply_nested_or_huge_value_gives_a_short_line():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert refused(with_changes(DEFAULTS, {"model.vision_lora_targets": nested})).startswith(
        "model.vision_lora_targets must be a list of strings, got tuple")
    assert refused(with_changes(DEFAULTS, {"data.data_dir": ["x"] * 100_000})).startswith("data.data_dir must be")


@pytest.mark.parametrize("assignments, message", [
    ({"model.feedback_temperature": "nan"}, "model.feedback_temperature=nan must be a finite number > 0"),
    ({"model.feedback_temperature": "0"}, "model.feedback_temperature=0.0 must be a finite number > 0"),
    ({"model.fusion_heads": "3"}, "model.fusion_heads=3 must divide model.hidden_dim=512"),
    ({"data.max_text_length": "0"}, "data.max_text_length=0 must be at least 1"),
    ({"model.hidden_dim": "sixty"}, "cannot set model.hidden_dim='sixty'"),
    ({"train.focal_gammas": "[[1]]"}, "cannot set train.focal_gammas='[[1]]'"),
    ({"train.calibrate": "maybe"}, "cannot set train.calibrate='maybe': expected true/false"),
    ({"model.vision": "x"}, "unknown config key 'model.vision'; fields of 'model':"),
    ({"optim.lr": "1"}, "unknown config key 'optim.lr': use section.field"),
    ({"labels": "1"}, "unknown config key 'labels': use section.field"),
])
def test_overrides_are_validated(assignments, message):
    with pytest.raises(ConfigError) as error:
        get_preset("mvsa_single").override(assignments)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_overrides_that_fit_are_applied_with_their_types():
    cfg = get_preset("hfm").override({"model.hidden_dim": "64", "model.fusion_heads": "4", "train.lr": "0",
                                      "train.focal_gammas": "1,2", "model.head_hidden_dim": "none",
                                      "data.check_images": "false", "model.fusion_dropout": "0"})
    assert (cfg.model.hidden_dim, cfg.model.fusion_heads, cfg.train.lr) == (64, 4, 0.0)
    assert cfg.train.focal_gammas == (1.0, 2.0) and cfg.model.head_hidden_dim is None
    assert cfg.data.check_images is False


def test_a_config_built_in_code_is_validated_too():
    cfg = Config(data=DataConfig(max_text_length=0))
    with pytest.raises(ConfigError, match="data.max_text_length=0 must be at least 1"):
        cfg.validate()
    cfg = dataclasses.replace(Config(), data="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config section 'data' must be a DataConfig"):
        cfg.validate()
