"""Checkpoint folders: exact round trips, trainable-only storage for published encoders,
refusals that name the difference, and atomic replacement."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import clara.checkpoint.folder as checkpoint
from clara.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clara.config import parse_assignments
from _eval_utils import (build_model, model_batch, one_thread, published_config, tiny_config,  # noqa: F401
                         write_encoder_folders)


def logits_of(model, batch):
    with torch.inference_mode():
        return model(**batch).logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A perturbed tiny MVSA-Single model, its tokenizer, config and a saved checkpoint."""
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    folder = save_checkpoint(tmp_path_factory.mktemp("ck") / "clara_best", model, tokenizer, cfg,
                             metrics={"epoch": 1}, history=[{"epoch": 1, "train_loss": 1.0}],
                             extra={"best_epoch": 1})
    return model, tokenizer, cfg, folder


def copy_checkpoint(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def test_save_then_load_gives_identical_weights_and_logits(tiny):
    model, tokenizer, cfg, folder = tiny
    rng_before = torch.get_rng_state()
    loaded = load_checkpoint(folder)
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading leaves the caller's RNG alone
    assert not loaded.model.training
    original, reloaded = model.state_dict(), loaded.model.state_dict()
    assert set(original) == set(reloaded)
    assert all(torch.equal(original[key], reloaded[key]) for key in original)
    batch = model_batch(model, tokenizer)
    assert torch.equal(logits_of(model, batch), logits_of(loaded.model, batch))
    assert loaded.tokenizer("i love this park")["input_ids"] == tokenizer("i love this park")["input_ids"]
    assert loaded.config.to_dict() == cfg.to_dict()
    assert loaded.labels == ["positive", "neutral", "negative"]


def test_hugging_face_style_names_round_trip(tiny, tmp_path):
    from clara.inference import Predictor
    from clara.model import CLARAModel

    model, tokenizer, cfg, _ = tiny
    folder = model.save_pretrained(tmp_path / "hf_style", tokenizer, cfg, metrics={"epoch": 2})
    assert json.loads((folder / "metrics.json").read_text()) == {"epoch": 2}
    reloaded = CLARAModel.from_pretrained(folder)
    assert isinstance(reloaded, CLARAModel) and not reloaded.training
    original = model.state_dict()
    assert all(torch.equal(original[key], value) for key, value in reloaded.state_dict().items())
    predictor = Predictor.from_pretrained(folder, device="cpu")
    assert predictor.labels == cfg.labels and predictor.device == torch.device("cpu")


def test_folder_layout_and_config_json(tiny):
    model, _, cfg, folder = tiny
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "history.json", "metrics.json",
                                                       "model.safetensors", "tokenizer"]
    info = json.loads((folder / "config.json").read_text())
    assert info["format_version"] == 1 and info["weights"] == "full"
    assert info["dataset"] == "mvsa_single" and info["protocol"] == "clara"
    assert info["encoders"] == {"kind": "tiny", "vision": cfg.model.vision_encoder, "text": cfg.model.text_encoder}
    assert info["image"]["size"] == 96 and info["image"]["patch_size"] == 16 and len(info["image"]["mean"]) == 3
    assert info["params"] == model.param_counts()
    assert {"torch", "transformers", "peft", "clara", "python"} <= set(info["versions"])
    assert info["extra"] == {"best_epoch": 1} and info["source"] == {"kind": "clara"}
    assert json.loads((folder / "metrics.json").read_text()) == {"epoch": 1}
    with safe_open(str(folder / "model.safetensors"), "pt") as file:
        assert set(file.keys()) == set(model.state_dict())  # tiny encoders: everything, loadable offline


def test_git_missing_does_not_break_saving(tiny, tmp_path, monkeypatch):
    model, tokenizer, cfg, _ = tiny
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert checkpoint.git_commit() is None
    folder = save_checkpoint(tmp_path / "ck", model, tokenizer, cfg)
    assert json.loads((folder / "config.json").read_text())["git_commit"] is None


# ------------------------------------------------------------------ published encoders: trainable only

@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    return write_encoder_folders(tmp_path_factory.mktemp("hub"))


def test_published_encoders_store_only_what_training_changed(encoder_folders, tmp_path):
    cfg = published_config(*encoder_folders)  # MVSA-Single preset: LoRA + the last DeBERTa layer trainable
    model, tokenizer = build_model(cfg)
    folder = save_checkpoint(tmp_path / "ck", model, tokenizer, cfg)
    info = json.loads((folder / "config.json").read_text())
    assert info["weights"] == "trainable"

    stored = load_file(str(folder / "model.safetensors"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(stored) == trainable  # no frozen base weight, no buffer
    assert sum(t.numel() for t in stored.values()) == model.param_counts()["trainable"]
    assert "vision.backbone.encoder.layers.0.self_attn.q_proj.base_layer.weight" not in stored
    assert "vision.backbone.encoder.layers.0.self_attn.q_proj.lora_B.default.weight" in stored
    assert "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight" not in stored
    assert "text.base_model.model.encoder.layer.1.attention.self.query_proj.base_layer.weight" in stored  # unfrozen
    assert "text.base_model.model.embeddings.word_embeddings.weight" not in stored

    # Reload: the encoders come back from the local folders, the stored tensors on top.
    loaded = load_checkpoint(folder)
    batch = model_batch(model, tokenizer)
    assert torch.equal(logits_of(model, batch), logits_of(loaded.model, batch))
    reloaded = loaded.model.state_dict()
    assert all(torch.equal(t, reloaded[k]) for k, t in model.state_dict().items())


def test_published_encoder_of_other_width_is_refused_naming_key_and_shapes(encoder_folders, tmp_path):
    cfg = published_config(*encoder_folders)
    model, tokenizer = build_model(cfg)
    folder = save_checkpoint(tmp_path / "ck", model, tokenizer, cfg)
    _, wider_text = write_encoder_folders(tmp_path / "wider", text_hidden=48)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder, overrides={"model.text_encoder": str(wider_text)})
    message = str(error.value)
    assert "text.base_model.model.encoder.layer.0.attention.self.query_proj.lora_A.default.weight" in message
    assert "(64, 32) in the weights but (64, 48) in the model" in message


def test_encoders_moved_to_other_folders_load_through_overrides(encoder_folders, tmp_path):
    """The offline-machine case: the encoders live elsewhere than the config recorded."""
    vision_dir, text_dir = (shutil.copytree(d, tmp_path / "moved" / d.name) for d in encoder_folders)
    cfg = published_config(vision_dir, text_dir)
    model, tokenizer = build_model(cfg)
    folder = save_checkpoint(tmp_path / "ck", model, tokenizer, cfg)
    shutil.rmtree(tmp_path / "moved")
    with pytest.raises(CheckpointError, match="cannot rebuild the encoders of .*moved/vision"):
        load_checkpoint(folder)
    overrides = parse_assignments([f"model.vision_encoder={encoder_folders[0]}",
                                   f"model.text_encoder={encoder_folders[1]}"])
    loaded = load_checkpoint(folder, overrides=overrides)
    batch = model_batch(model, tokenizer)
    assert torch.equal(logits_of(model, batch), logits_of(loaded.model, batch))
    with pytest.raises(ValueError, match="expected SECTION.FIELD=VALUE"):
        parse_assignments(["vision_encoder"])
    with pytest.raises(CheckpointError, match="bad override .*unknown config key 'model.vision'"):
        load_checkpoint(folder, overrides={"model.vision": "x"})


# ------------------------------------------------------------------ refusals

def test_incomplete_folders_are_refused(tiny, tmp_path):
    folder = copy_checkpoint(tiny[3], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors in .*copy: incomplete checkpoint "
                                              r"\(was training interrupted\?\)"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="checkpoint folder .*absent does not exist"):
        load_checkpoint(tmp_path / "absent")
    shutil.rmtree(folder)
    folder = copy_checkpoint(tiny[3], tmp_path)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CheckpointError, match="no tokenizer/ folder in"):
        load_checkpoint(folder)


def test_truncated_weights_are_refused(tiny, tmp_path):
    folder = copy_checkpoint(tiny[3], tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_checkpoint(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda info: info.update(format_version=2), "format_version 2 is not supported"),
    (lambda info: info.update(optimizer_state="x"), r"unknown fields \['optimizer_state'\]"),
    (lambda info: info["config"]["model"].update(rope=True), r"config section 'model' has unknown fields \['rope'\]"),
    (lambda info: info.update(weights="trainable"), "weights 'trainable' but encoders 'tiny' store 'full'"),
])
def test_config_json_that_does_not_fit_the_code_is_refused(tiny, tmp_path, edit, message):
    folder = copy_checkpoint(tiny[3], tmp_path)
    edit_config(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_config_for_another_class_count_is_refused_naming_key_and_shapes(tiny, tmp_path):
    folder = copy_checkpoint(tiny[3], tmp_path)

    def to_hfm(info):
        info["config"]["data"]["dataset"] = "hfm"
        info["labels"] = ["not_sarcastic", "sarcastic"]
    edit_config(folder, to_hfm)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    assert "has shape (3, 32) in the weights but (2, 32) in the model config.json describes (2 classes for hfm" \
        in str(error.value)


def test_config_for_another_encoder_is_refused(tiny, tmp_path):
    folder = copy_checkpoint(tiny[3], tmp_path)
    edit_config(folder, lambda info: info["config"]["model"].update(fusion="pooled"))
    with pytest.raises(CheckpointError, match=r"does not match the model config\.json describes \(encoders tiny, "
                                              r"fusion pooled.*missing keys.*unexpected keys"):
        load_checkpoint(folder)


def test_a_missing_tensor_is_named(tiny, tmp_path):
    folder = copy_checkpoint(tiny[3], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["feed.net.0.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing keys \(feed\.net\.0\.weight\)"):
        load_checkpoint(folder)


def test_a_non_checkpoint_folder_is_never_replaced(tiny, tmp_path):
    model, tokenizer, cfg, _ = tiny
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    with pytest.raises(CheckpointError, match="exists and is not a checkpoint folder"):
        save_checkpoint(precious, model, tokenizer, cfg)
    assert (precious / "chapter1.tex").read_text() == "..."


# ------------------------------------------------------------------ atomicity (fault injection)

def test_a_failure_while_writing_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    model, tokenizer, cfg, _ = tiny
    folder = save_checkpoint(tmp_path / "clara_best", model, tokenizer, cfg)
    other, _ = build_model(cfg, seed=1)

    def write_half_then_fail(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(folder, other, tokenizer, cfg)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["clara_best"]  # the temp folder is gone
    batch = model_batch(model, tokenizer)
    assert torch.equal(logits_of(load_checkpoint(folder).model, batch), logits_of(model, batch))


def test_a_kill_between_the_two_renames_leaves_the_previous_checkpoint_loadable(tiny, tmp_path, monkeypatch):
    """Without an atomic exchange the old folder is renamed aside, then the new one in: fail in between."""
    model, tokenizer, cfg, _ = tiny
    folder = save_checkpoint(tmp_path / "clara_best", model, tokenizer, cfg)
    other, _ = build_model(cfg, seed=1)
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def crash_on_rename_in(src, dst):
        if Path(dst) == folder and ".tmp-" in Path(src).name:
            raise KeyboardInterrupt  # stands for the process being killed here
        real_replace(src, dst)
    monkeypatch.setattr(checkpoint.os, "replace", crash_on_rename_in)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, other, tokenizer, cfg)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)

    assert not folder.exists()
    batch = model_batch(model, tokenizer)
    with pytest.warns(UserWarning, match="interrupted save left the previous checkpoint"):
        recovered = load_checkpoint(folder)
    assert torch.equal(logits_of(recovered.model, batch), logits_of(model, batch))
    # The next save puts the previous one back first, then replaces it normally.
    save_checkpoint(folder, other, tokenizer, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clara_best"]
    assert torch.equal(logits_of(load_checkpoint(folder).model, batch), logits_of(other, batch))


def test_replacing_a_checkpoint_swaps_it_completely(tiny, tmp_path):
    model, tokenizer, cfg, _ = tiny
    folder = save_checkpoint(tmp_path / "clara_last", model, tokenizer, cfg, metrics={"epoch": 1})
    other, _ = build_model(cfg, seed=1)
    save_checkpoint(folder, other, tokenizer, cfg)
    assert not (folder / "metrics.json").exists()  # nothing of the previous folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clara_last"]
    batch = model_batch(model, tokenizer)
    assert torch.equal(logits_of(load_checkpoint(folder).model, batch), logits_of(other, batch))
