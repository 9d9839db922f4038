"""Importing the CLARA notebooks' checkpoints: tiny notebook-shaped models saved the notebooks' way.

The notebook model (tests/_notebook_model.py) is re-created from clara-reference.md §2 with the
published key names and the transformers-4.x key layout; each test saves it with torch.save the
way the notebooks did, imports it, and compares our model's outputs with the original's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel, DebertaV2Model

from _notebook_model import (TinyEncoderSizes, build_notebook_model, clip_config, deberta_config,
                             notebook_state_dict)
from clara.checkpoint import load_checkpoint
from clara.model.encoders import (TINY_TEXT_SIZES, TINY_TOKENIZER_VOCAB, TINY_VISION_SIZES,
                                  train_wordpiece_tokenizer)
from clara.notebook_import import (NotebookImportError, import_notebook_checkpoint, map_notebook_state_dict,
                                   read_notebook_file)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_notebook_checkpoint.py"
TEXTS = ["i love this sunny day at the park", "what an awful rainy morning on the bus",
         "just a photo of the street today", "the best coffee with my friend"]
DATASET_VARIANT = {"mvsa_single": "single", "hfm": "single", "mvsa_multiple": "multiple"}
NUM_CLASSES = {"mvsa_single": 3, "hfm": 2, "mvsa_multiple": 3}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece_tokenizer(TEXTS, TINY_TOKENIZER_VOCAB).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sizes(tokenizer_dir) -> TinyEncoderSizes:
    """A notebook model at our tiny encoder sizes (the head counts are not in the weights)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    v, t = TINY_VISION_SIZES, TINY_TEXT_SIZES
    return TinyEncoderSizes(
        vision_hidden=v["hidden_size"], vision_layers=v["num_hidden_layers"], vision_heads=v["num_attention_heads"],
        vision_intermediate=v["intermediate_size"], image_size=v["image_size"], patch_size=v["patch_size"],
        text_hidden=t["hidden_size"], text_layers=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
        text_intermediate=t["intermediate_size"], position_buckets=t["position_buckets"],
        max_position_embeddings=t["max_position_embeddings"], vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def inputs(tokenizer_dir, sizes) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(3, 3, sizes.image_size, sizes.image_size, generator=generator),
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def save_notebook_way(path: Path, state: dict, **entries) -> Path:
    config = {"vision_encoder": "openai/clip-vit-base-patch32", "text_encoder": "microsoft/deberta-v3-base",
              "hidden_dim": 32, "num_classes": entries.pop("num_classes", 3)}
    torch.save({"model_state_dict": state, "config": config, "epoch": 7,
                "best_val_f1": np.float64(0.8125), **entries}, path)
    return path


def notebook_outputs(model: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])


def our_outputs(folder: Path, inputs: dict):
    loaded = load_checkpoint(folder)
    with torch.no_grad():
        return loaded, loaded.model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])


def assert_same_outputs(ours, theirs: dict) -> None:
    torch.testing.assert_close(ours.logits, theirs["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pred_logits, theirs["pred_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.verify_logits, theirs["verify_logits"], rtol=0, atol=1e-5)
    if "uncertainty" in theirs:
        torch.testing.assert_close(ours.uncertainty, theirs["uncertainty"], rtol=0, atol=1e-5)


def save_base_encoders(model: torch.nn.Module, sizes: TinyEncoderSizes, tokenizer_dir: Path, folder: Path) -> Path:
    """The 'pretrained' encoders of a notebook model as save_pretrained folders vision/ and text/."""
    from transformers import AutoTokenizer

    state = notebook_state_dict(model)
    for which, prefixes, base in (("vision", ("vision.backbone.vision_model.", "vision.b.vision_model."),
                                   CLIPVisionModel(clip_config(sizes))),
                                  ("text", ("text.base_model.model.",), DebertaV2Model(deberta_config(sizes)))):
        weights = {}
        for key, tensor in state.items():
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix and ".lora_" not in key:
                weights[key[len(prefix):].replace(".base_layer.", ".")] = tensor
        base.load_state_dict(weights, strict=True)
        base.save_pretrained(folder / which)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder / "text")
    return folder


@pytest.mark.parametrize("dataset", ["mvsa_single", "mvsa_multiple"])  # HFM: the 3-output test below
def test_full_state_dict_imports_with_identical_outputs(dataset, tmp_path, sizes, tokenizer_dir, inputs):
    notebook = build_notebook_model(DATASET_VARIANT[dataset], NUM_CLASSES[dataset], sizes)
    pt = save_notebook_way(tmp_path / f"clara_{dataset}_best.pt", notebook_state_dict(notebook),
                           num_classes=NUM_CLASSES[dataset])

    folder = import_notebook_checkpoint(pt, dataset, tmp_path / "imported", tokenizer_from=str(tokenizer_dir))

    loaded, ours = our_outputs(folder, inputs)
    assert_same_outputs(ours, notebook_outputs(notebook, inputs))
    cfg = loaded.config
    assert (cfg.data.dataset, cfg.model.fusion, cfg.model.variant, cfg.model.encoders) == \
        (dataset, "pooled", DATASET_VARIANT[dataset], "tiny")
    info = json.loads((folder / "config.json").read_text())
    source = info["source"]
    assert source["kind"] == "notebook"
    assert source["file"] == pt.name
    assert source["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert source["weights_in_file"] == "full"
    assert source["notebook_entries"] == {"epoch": 7, "best_val_f1": 0.8125}
    assert source["notebook_config"]["num_classes"] == NUM_CLASSES[dataset]
    if dataset == "mvsa_single":
        assert_predicts_and_explains(folder, sizes)


def assert_predicts_and_explains(folder: Path, sizes: TinyEncoderSizes) -> None:
    """The imported folder serves the Predictor and the Explainer like a checkpoint trained here."""
    from PIL import Image

    from clara.explain.explainer import Explainer
    from clara.inference import Predictor

    predictor = Predictor.from_checkpoint(folder, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8))
    [prediction] = predictor.predict([image], [TEXTS[0]])
    assert prediction.label in ("positive", "neutral", "negative")
    assert abs(sum(prediction.probs.values()) - 1.0) < 1e-5
    explanation = Explainer(predictor, n_steps=2).explain(image, TEXTS[0], methods=["attention", "modality_share"])
    assert "attention" in explanation.skipped  # pooled fusion: one key per side, no map (recorded, not faked)
    assert explanation.modality_share is not None


@pytest.mark.parametrize("dataset", ["hfm", "mvsa_multiple"])
def test_trainable_only_state_dict_takes_base_encoders_from_folder(dataset, tmp_path, sizes, tokenizer_dir, inputs):
    notebook = build_notebook_model(DATASET_VARIANT[dataset], NUM_CLASSES[dataset], sizes)
    encoders = save_base_encoders(notebook, sizes, tokenizer_dir, tmp_path / "encoders")
    if DATASET_VARIANT[dataset] == "single":
        # "Training" moved the unfrozen last DeBERTa layer away from the pretrained weights.
        with torch.no_grad():
            for p in notebook.text.base_model.model.encoder.layer[-1].parameters():
                p.add_(0.01 * torch.randn_like(p))
    trainable = notebook_state_dict(notebook, trainable_only=True)
    assert not any("embeddings" in k for k in trainable)
    pt = save_notebook_way(tmp_path / "trainable.pt", trainable, num_classes=NUM_CLASSES[dataset])

    folder = import_notebook_checkpoint(pt, dataset, tmp_path / "imported", encoders_from=str(encoders))

    loaded, ours = our_outputs(folder, inputs)
    assert_same_outputs(ours, notebook_outputs(notebook, inputs))
    assert loaded.config.model.encoders == "published"
    assert loaded.config.model.text_encoder == str(encoders / "text")
    # The trained last layer must be stored with the checkpoint (HFM's preset freezes it, the
    # importer unfreezes it so it is saved).
    expected_unfreeze = 1 if DATASET_VARIANT[dataset] == "single" else 0
    assert loaded.config.model.unfreeze_last_text_layers == expected_unfreeze
    assert json.loads((folder / "config.json").read_text())["source"]["weights_in_file"] == "trainable"


def test_full_state_dict_with_encoders_from_must_agree_with_them(tmp_path, sizes, tokenizer_dir, inputs):
    notebook = build_notebook_model("single", 3, sizes)
    encoders = save_base_encoders(notebook, sizes, tokenizer_dir, tmp_path / "encoders")
    pt = save_notebook_way(tmp_path / "full.pt", notebook_state_dict(notebook))

    folder = import_notebook_checkpoint(pt, "mvsa_single", tmp_path / "imported", encoders_from=str(encoders))
    _, ours = our_outputs(folder, inputs)
    assert_same_outputs(ours, notebook_outputs(notebook, inputs))

    # A frozen CLIP weight that differs from --encoders-from would be lost (trainable-only storage).
    state = notebook_state_dict(notebook)
    state["vision.backbone.vision_model.pre_layrnorm.weight"] += 1
    changed = save_notebook_way(tmp_path / "changed.pt", state)
    with pytest.raises(NotebookImportError, match=r"1 frozen encoder tensors in the file differ from --encoders-from "
                                                  r".*: vision pre_layrnorm\.weight\. Import without --encoders-from"):
        import_notebook_checkpoint(changed, "mvsa_single", tmp_path / "refused", encoders_from=str(encoders))
    assert not (tmp_path / "refused").exists()


def test_lora_alpha_comes_from_config_only_with_a_matching_rank():
    from clara.notebook_import import _lora_alpha

    assumed = (64, "assumed 2 x rank, as in the published notebooks")
    assert _lora_alpha(None, "vision", 32) == assumed
    assert _lora_alpha({"lora_alpha": 16}, "vision", 32) == assumed  # no rank: cannot tell which encoder
    assert _lora_alpha({"lora_rank": 8, "lora_alpha": 16}, "vision", 32) == assumed  # README's, not this file's
    assert _lora_alpha({"lora_rank": 32, "lora_alpha": 16}, "vision", 32) == (16, "CONFIG['lora_alpha']")
    config = {"vision_lora_r": 32, "vision_lora_alpha": 48, "text_lora_r": 64, "text_lora_alpha": 96}
    assert _lora_alpha(config, "vision", 32) == (48, "CONFIG['vision_lora_alpha']")
    assert _lora_alpha(config, "text", 64) == (96, "CONFIG['text_lora_alpha']")


def test_hfm_three_output_heads_need_explicit_drop(tmp_path, sizes, tokenizer_dir, inputs):
    """The HFM notebook's heads have 3 outputs for 2 labels; dropping output 2 is opt-in and inexact."""
    notebook = build_notebook_model("single", 3, sizes)
    pt = save_notebook_way(tmp_path / "clara_hfm_best.pt", notebook_state_dict(notebook))
    with pytest.raises(NotebookImportError, match=r"predicts 3 classes but --dataset hfm has 2 .*--drop-extra-classes"):
        import_notebook_checkpoint(pt, "hfm", tmp_path / "refused", tokenizer_from=str(tokenizer_dir))
    assert not (tmp_path / "refused").exists()

    folder = import_notebook_checkpoint(pt, "hfm", tmp_path / "imported", tokenizer_from=str(tokenizer_dir),
                                        drop_extra_classes=True)

    loaded, ours = our_outputs(folder, inputs)
    theirs = notebook_outputs(notebook, inputs)
    assert loaded.labels == ["not_sarcastic", "sarcastic"]
    # The heads on the fused vector are the notebook's first two rows exactly; the feedback path differs.
    torch.testing.assert_close(ours.pred_logits, theirs["pred_logits"][:, :2], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.verify_logits, theirs["verify_logits"][:, :2], rtol=0, atol=1e-5)
    assert ours.logits.shape == (3, 2)
    source = json.loads((folder / "config.json").read_text())["source"]
    assert (source["dropped_classes"], source["exact"]) == ([2], False)


PUBLISHED_SIZES = TinyEncoderSizes(
    vision_hidden=768, vision_layers=12, vision_heads=12, vision_intermediate=3072, image_size=224, patch_size=32,
    text_hidden=768, text_layers=12, text_heads=12, text_intermediate=3072, vocab_size=128_100,
    position_buckets=256, max_position_embeddings=512, fusion_hidden=512, head_hidden=256,
    lora_r_vision=32, lora_r_text=64)


def test_recreated_notebook_model_has_the_published_parameter_counts():
    """At the published sizes the re-created model prints the notebooks' counts (clara-reference.md §2);
    HFM's 285,467,911 total shows that its notebook trained 3 outputs for its 2 labels."""
    from _notebook_model import freeze_like_notebook

    def counts(model: torch.nn.Module) -> tuple[int, int]:
        params = list(model.parameters())  # the twice-registered MVSA-Multiple vision tower counts once
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    with torch.device("meta"):
        single = build_notebook_model("single", 3, PUBLISHED_SIZES)
        multiple = build_notebook_model("multiple", 3, PUBLISHED_SIZES)
    assert counts(single) == (285_467_911, 21_268_231)  # MVSA-Single: LoRA + last DeBERTa layer
    freeze_like_notebook(single, unfreeze_last_text_layer=False)
    assert counts(single) == (285_467_911, 14_180_359)  # HFM
    assert counts(multiple) == (281_136_393, 9_848_841)  # MVSA-Multiple


def test_extra_and_renamed_keys_are_refused_with_their_names(tmp_path, sizes, tokenizer_dir):
    state = notebook_state_dict(build_notebook_model("single", 3, sizes))
    state["fusion.extra_gate.weight"] = torch.zeros(4)
    state["pred.net.5.weight"] = state.pop("pred.net.4.weight")
    pt = save_notebook_way(tmp_path / "renamed.pt", state)
    out = tmp_path / "imported"

    with pytest.raises(NotebookImportError) as caught:
        import_notebook_checkpoint(pt, "mvsa_single", out, tokenizer_from=str(tokenizer_dir))

    message = str(caught.value)
    assert "2 notebook keys unused, 1 of our tensors unfilled" in message.splitlines()[0]
    lines = [line.strip() for line in message.splitlines()]
    assert "fusion.extra_gate.weight" in lines
    assert "pred.net.5.weight" in lines
    assert "pred.net.4.weight" in lines
    assert not out.exists()


def test_disagreeing_duplicate_vision_registration_is_refused(tmp_path, sizes, tokenizer_dir):
    state = notebook_state_dict(build_notebook_model("multiple", 3, sizes))
    key = "vision_core.vision_model.post_layernorm.weight"
    state[key] = state[key] + 1.0

    with pytest.raises(NotebookImportError, match=r"vision\.b\.vision_model\.post_layernorm\.weight and "
                                                  r"vision_core\.vision_model\.post_layernorm\.weight hold different"):
        import_notebook_checkpoint(save_notebook_way(tmp_path / "m.pt", state), "mvsa_multiple", tmp_path / "out",
                                   tokenizer_from=str(tokenizer_dir))


class _RunsCodeWhenUnpickled:
    """Unpickling this creates the file `marker` (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_custom_object_is_refused_without_running_it(tmp_path, sizes):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"fusion.v_proj.weight": torch.zeros(2, 2)},
                "config": _RunsCodeWhenUnpickled(marker)}, pt)

    with pytest.raises(NotebookImportError, match=r"refused: the file needs unpickling of arbitrary Python objects"):
        import_notebook_checkpoint(pt, "mvsa_single", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_numpy_1_metric_scalars_are_read(tmp_path):
    """Files from numpy-1.x Colab sessions name numpy.core.multiarray.scalar; both names load."""
    buffer = io.BytesIO()
    torch.save({"model_state_dict": {"a.weight": torch.ones(2)}, "best_val_f1": np.float64(0.75)}, buffer)
    pt = tmp_path / "numpy1.pt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(pt, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(item, data)

    loaded = read_notebook_file(pt)
    assert loaded.extras == {"best_val_f1": 0.75}
    assert torch.equal(loaded.state_dict["a.weight"], torch.ones(2))


def test_key_mapping_rules():
    ours = {"vision.backbone.embeddings.patch_embedding.weight": (4, 3, 2, 2),
            "vision.backbone.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": (2, 4),
            "text.base_model.model.embeddings.word_embeddings.weight": (10, 4),
            "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight": (4, 4),
            "fusion.cross.0.in_proj_weight": (12, 4), "pred.4.weight": (3, 8), "final.bias": (3,)}
    lora = torch.ones(2, 4)
    notebook = {
        "vision.b.vision_model.embeddings.patch_embedding.weight": torch.ones(4, 3, 2, 2),
        "vision_core.vision_model.embeddings.patch_embedding.weight": torch.ones(4, 3, 2, 2),
        "vision.b.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": lora,
        "vision_core.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": lora,
        "vision.b.vision_model.embeddings.position_ids": torch.arange(5)[None],
        "text.base_model.model.embeddings.word_embeddings.weight": torch.ones(10, 4),
        "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight": torch.ones(4, 4),
        "fusion.cross.0.in_proj_weight": torch.ones(12, 4), "pred.4.weight": torch.ones(3, 8),
        "final.bias": torch.ones(3), "vision.backbone.vision_model.post_layernorm.weight": torch.ones(4),
    }
    mapping = map_notebook_state_dict(notebook, {k: torch.Size(v) for k, v in ours.items()}, "multiple")

    assert mapping.source_of == {
        "vision.backbone.embeddings.patch_embedding.weight": "vision.b.vision_model.embeddings.patch_embedding.weight",
        "vision.backbone.encoder.layers.0.self_attn.q_proj.lora_A.default.weight":
            "vision.b.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight",
        "text.base_model.model.embeddings.word_embeddings.weight":
            "text.base_model.model.embeddings.word_embeddings.weight",
        "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight":
            "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight",
        "fusion.cross.0.in_proj_weight": "fusion.cross.0.in_proj_weight",
        "pred.4.weight": "pred.4.weight", "final.bias": "final.bias"}
    # MVSA-Single's prefix has no place in an MVSA-Multiple file; the derived buffer is dropped.
    assert mapping.unused == ["vision.backbone.vision_model.post_layernorm.weight"]
    assert mapping.ignored == ["vision.b.vision_model.embeddings.position_ids"]
    assert (mapping.unfilled, mapping.shape_mismatches, mapping.conflicts) == ([], [], [])


def test_wrong_dataset_and_missing_sources_say_what_to_pass(tmp_path, sizes, tokenizer_dir):
    notebook = build_notebook_model("multiple", 3, sizes)
    full = save_notebook_way(tmp_path / "full.pt", notebook_state_dict(notebook))
    with pytest.raises(NotebookImportError, match=r"MVSA-Multiple notebook .* use --dataset mvsa_multiple"):
        import_notebook_checkpoint(full, "mvsa_single", tmp_path / "a", tokenizer_from=str(tokenizer_dir))
    with pytest.raises(NotebookImportError, match=r"predicts 2 classes but --dataset mvsa_single has 3 "
                                                  r"\(positive, neutral, negative\); pick the dataset"):
        two_classes = notebook_state_dict(build_notebook_model("single", 2, sizes))
        single = save_notebook_way(tmp_path / "single.pt", two_classes, num_classes=2)
        import_notebook_checkpoint(single, "mvsa_single", tmp_path / "b", tokenizer_from=str(tokenizer_dir))
    with pytest.raises(NotebookImportError, match=r"tiny encoders, which have no published tokenizer: pass "
                                                  r"--tokenizer-from"):
        import_notebook_checkpoint(full, "mvsa_multiple", tmp_path / "c")
    trainable = save_notebook_way(tmp_path / "trainable.pt", notebook_state_dict(notebook, trainable_only=True))
    with pytest.raises(NotebookImportError, match=r"cannot build the encoders \(.* hub ids of the "
                                                  r"notebook's CONFIG\): .*; offline, pass --encoders-from"):
        import_notebook_checkpoint(trainable, "mvsa_multiple", tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_cli_reports_one_line_and_exit_2(tmp_path, sizes, tokenizer_dir, capsys):
    spec = importlib.util.spec_from_file_location("import_notebook_checkpoint", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    state = notebook_state_dict(build_notebook_model("single", 2, sizes))
    state["fusion.extra_gate.weight"] = torch.zeros(4)
    pt = save_notebook_way(tmp_path / "hfm.pt", state, num_classes=2)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--pt", str(pt), "--dataset", "hfm", "--out", str(tmp_path / "out"),
                  "--tokenizer-from", str(tokenizer_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"import_notebook_checkpoint.py: error: {pt}: refused: the state dict does not map")
    assert "  fusion.extra_gate.weight" in err

    del state["fusion.extra_gate.weight"]
    torch.save(state, pt)  # a bare state dict: no CONFIG, no metrics
    assert cli.main(["--pt", str(pt), "--dataset", "hfm", "--out", str(tmp_path / "ok"),
                     "--tokenizer-from", str(tokenizer_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"imported {pt} -> {tmp_path / 'ok'}"
    source = json.loads((tmp_path / "ok" / "config.json").read_text())["source"]
    assert (source["notebook_config"], source["notebook_entries"]) == (None, {})
