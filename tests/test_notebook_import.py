"""Importing the CLARA notebooks' checkpoints: the authors' own models, saved the notebooks' way.

Each notebook model is built by the authors' code (tests/_authors.py runs it from
../shared/reference/clara-notebooks; these tests skip without it), saved with torch.save with
the transformers-4.x key names the notebooks wrote, imported, and compared with our outputs.
The MVSA-Single and HFM notebooks hard-code 768-wide encoders, so their models use narrow
768-wide test encoders, which only --encoders-from describes; MVSA-Multiple's reads its widths
from the configs and also runs on our tiny encoders.
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

import _authors as authors
from _authors import runs_authors_code
from clara.checkpoint import load_checkpoint
from clara.checkpoint.notebook import import_notebook_checkpoint
from clara.checkpoint.notebook_files import NOTEBOOK_FILES, NotebookImportError, read_notebook_file
from clara.checkpoint.notebook_keys import map_notebook_state_dict

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_notebook_checkpoint.py"
TEXTS = ["i love this sunny day at the park", "what an awful rainy morning on the bus",
         "just a photo of the street today", "the best coffee with my friend"]
DATASET_VARIANT = {"mvsa_single": "single", "hfm": "single", "mvsa_multiple": "multiple"}
IMAGE_SIZE = {"narrow": 64, "tiny": 96}

# The notebook-import fixtures (tests/_authors.py), over this module's TEXTS.
tokenizer_dir, tokenizer, encoder_configs, encoders = (authors.tokenizer_dir, authors.tokenizer,
                                                       authors.encoder_configs, authors.encoders)


@pytest.fixture(scope="module")
def inputs(tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    return {kind: {"pixel_values": torch.randn(3, 3, size, size, generator=generator),
                   "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            for kind, size in IMAGE_SIZE.items()}


@pytest.fixture(scope="module")
def notebook_model(encoder_configs):
    """build(dataset, kind="narrow", num_classes=None): the authors' model (random weights, LoRA B
    non-zero); `num_classes` overrides the notebook CONFIG's."""
    def build(dataset: str, kind: str = "narrow", num_classes: int | None = None) -> authors.AuthorsModel:
        overrides = {} if num_classes is None else {"num_classes": num_classes}
        return authors.build_authors_model(dataset, encoder_configs[kind], overrides)
    return build


def save_notebook_way(path: Path, state: dict, **entries) -> Path:
    config = {"vision_encoder": "openai/clip-vit-base-patch32", "text_encoder": "microsoft/deberta-v3-base",
              "hidden_dim": 512, "num_classes": entries.pop("num_classes", 3)}
    torch.save({"model_state_dict": state, "config": config, "epoch": 7,
                "best_val_f1": np.float64(0.8125), **entries}, path)
    return path


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


@pytest.mark.parametrize("dataset", ["mvsa_single", "mvsa_multiple"])  # HFM: the 3-output test below
@runs_authors_code
def test_full_state_dict_imports_with_identical_outputs(dataset, tmp_path, tokenizer_dir, encoders, inputs,
                                                        notebook_model):
    # MVSA-Multiple on our tiny encoders (the file alone describes them); MVSA-Single's 768-wide
    # encoders fit no offline architecture of ours but the published ones, so --encoders-from.
    kind = "tiny" if dataset == "mvsa_multiple" else "narrow"
    notebook = notebook_model(dataset, kind)
    pt = save_notebook_way(tmp_path / Path(NOTEBOOK_FILES[dataset].file_name).name,
                           authors.transformers4_state_dict(notebook))

    folder = import_notebook_checkpoint(pt, dataset, tmp_path / "imported", tokenizer_from=str(tokenizer_dir),
                                        encoders_from=str(encoders) if kind == "narrow" else None)

    loaded, ours = our_outputs(folder, inputs[kind])
    assert_same_outputs(ours, notebook.outputs(**inputs[kind]))
    cfg = loaded.config
    assert (cfg.data.dataset, cfg.model.fusion, cfg.model.variant, cfg.model.encoders) == \
        (dataset, "pooled", DATASET_VARIANT[dataset], "tiny" if kind == "tiny" else "published")
    info = json.loads((folder / "config.json").read_text())
    source = info["source"]
    assert source["kind"] == "notebook"
    assert source["file"] == pt.name
    assert source["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert source["weights_in_file"] == "full"
    assert source["notebook_entries"] == {"epoch": 7, "best_val_f1": 0.8125}
    assert source["notebook_config"]["num_classes"] == 3
    if dataset == "mvsa_single":
        assert_predicts_and_explains(folder)


def assert_predicts_and_explains(folder: Path) -> None:
    """The imported folder serves the Predictor and the Explainer like a checkpoint trained here."""
    from PIL import Image

    from clara.explain.explainer import Explainer
    from clara.inference import Predictor

    predictor = Predictor.from_checkpoint(folder, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8))
    [prediction] = predictor.predict([image], [TEXTS[0]])
    assert prediction.label in ("positive", "neutral", "negative")
    assert abs(sum(prediction.probs.values()) - 1.0) < 1e-5
    explanation = Explainer(predictor, n_steps=4).explain(image, TEXTS[0], methods=["attention", "modality_share"])
    assert "attention" in explanation.skipped  # pooled fusion: one key per side, no map (recorded, not faked)
    assert explanation.modality_share is not None


@pytest.mark.parametrize("dataset", ["mvsa_single", "hfm", "mvsa_multiple"])
@runs_authors_code
def test_trainable_only_state_dict_takes_base_encoders_from_folder(dataset, tmp_path, encoders, inputs,
                                                                   notebook_model):
    # HFM with a 2-output head (as its labels need); its notebook's own 3 outputs: the test below.
    notebook = notebook_model(dataset, num_classes=2 if dataset == "hfm" else None)
    text_layers = notebook.model.text.base_model.model.encoder.layer
    trains_last_layer = all(p.requires_grad for p in text_layers[-1].parameters())
    assert trains_last_layer == (dataset == "mvsa_single")  # only MVSA-Single's cell 12 unfreezes it
    if trains_last_layer:
        # "Training" moved the unfrozen last DeBERTa layer away from the pretrained weights.
        with torch.no_grad():
            for p in text_layers[-1].parameters():
                p.add_(0.01 * torch.randn_like(p))
    trainable = authors.transformers4_state_dict(notebook, trainable_only=True)
    assert not any("embeddings" in k for k in trainable)
    pt = save_notebook_way(tmp_path / "trainable.pt", trainable, num_classes=notebook.config["num_classes"])

    folder = import_notebook_checkpoint(pt, dataset, tmp_path / "imported", encoders_from=str(encoders))

    loaded, ours = our_outputs(folder, inputs["narrow"])
    assert_same_outputs(ours, notebook.outputs(**inputs["narrow"]))
    assert loaded.config.model.encoders == "published"
    assert loaded.config.model.text_encoder == str(encoders / "text")
    # The trained last layer must be stored with the checkpoint (the importer unfreezes it so it is saved).
    assert loaded.config.model.unfreeze_last_text_layers == (1 if trains_last_layer else 0)
    assert json.loads((folder / "config.json").read_text())["source"]["weights_in_file"] == "trainable"


@runs_authors_code
def test_full_state_dict_with_encoders_from_must_agree_with_them(tmp_path, encoders, inputs, notebook_model):
    notebook = notebook_model("mvsa_single")
    pt = save_notebook_way(tmp_path / "full.pt", authors.transformers4_state_dict(notebook))

    folder = import_notebook_checkpoint(pt, "mvsa_single", tmp_path / "imported", encoders_from=str(encoders))
    _, ours = our_outputs(folder, inputs["narrow"])
    assert_same_outputs(ours, notebook.outputs(**inputs["narrow"]))

    # A frozen CLIP weight that differs from --encoders-from would be lost (trainable-only storage).
    state = authors.transformers4_state_dict(notebook)
    state["vision.backbone.vision_model.pre_layrnorm.weight"] += 1
    changed = save_notebook_way(tmp_path / "changed.pt", state)
    with pytest.raises(NotebookImportError, match=r"1 frozen encoder tensors in the file differ from --encoders-from "
                                                  r".*: vision pre_layrnorm\.weight\. Import without --encoders-from"):
        import_notebook_checkpoint(changed, "mvsa_single", tmp_path / "refused", encoders_from=str(encoders))
    assert not (tmp_path / "refused").exists()


def test_lora_alpha_comes_from_config_only_with_a_matching_rank():
    from clara.checkpoint.notebook_keys import lora_alpha as _lora_alpha

    def assumed(why: str) -> tuple[int, str]:
        return 64, (f"assumed 64 = 2 x rank 32: {why}, and every notebook's CONFIG sets alpha = 2 x r "
                    "(lora_clip r 32 alpha 64, lora_deb r 64 alpha 128)")

    # The notebooks' own CONFIG (cell 4): nested per encoder.
    notebook = {"lora_clip": {"r": 32, "alpha": 48, "dropout": 0.05}, "lora_deb": {"r": 64, "alpha": 96}}
    assert _lora_alpha(notebook, "vision", 32) == (48, "CONFIG['lora_clip']['alpha']")
    assert _lora_alpha(notebook, "text", 64) == (96, "CONFIG['lora_deb']['alpha']")
    with pytest.raises(NotebookImportError, match=r"CONFIG\['lora_clip'\]\['r'\] = 32 but the file's CLIP LoRA "
                                                  r"adapters have rank 16"):
        _lora_alpha(notebook, "vision", 16)
    with pytest.raises(NotebookImportError, match=r"CONFIG\['lora_deb'\]\['alpha'\] = 'x': expected a whole number"):
        _lora_alpha({"lora_deb": {"r": 64, "alpha": "x"}}, "text", 64)
    assert _lora_alpha(None, "vision", 32) == assumed(
        "the file holds no CONFIG (the MVSA-Multiple notebook saves the bare state dict)")
    assert _lora_alpha({"lora_alpha": 16}, "vision", 32) == assumed("its CONFIG has no 'lora_clip'")  # which encoder?
    assert _lora_alpha({"lora_rank": 8, "lora_alpha": 16}, "vision", 32) == assumed("its CONFIG has no 'lora_clip'")
    # Top-level forms (no notebook writes them) still count when they name a rank equal to the file's.
    assert _lora_alpha({"lora_rank": 32, "lora_alpha": 16}, "vision", 32) == (16, "CONFIG['lora_alpha']")
    config = {"vision_lora_r": 32, "vision_lora_alpha": 48, "text_lora_r": 64, "text_lora_alpha": 96}
    assert _lora_alpha(config, "vision", 32) == (48, "CONFIG['vision_lora_alpha']")
    assert _lora_alpha(config, "text", 64) == (96, "CONFIG['text_lora_alpha']")


def test_config_settings_not_in_the_weights_are_read_and_sizes_checked():
    from clara.checkpoint.notebook_keys import apply_config_settings
    from clara.config import get_preset

    model_cfg = get_preset("mvsa_multiple").model
    record = apply_config_settings(model_cfg, {"coattn_heads": 4, "feedback_tau": 0.25, "hidden_dim": 512,
                                               "lora_clip": {"r": 32, "alpha": 64, "dropout": 0.2}}, "multiple")
    assert (model_cfg.fusion_heads, model_cfg.feedback_temperature, model_cfg.vision_lora_dropout) == (4, 0.25, 0.2)
    assert record == {"fusion_heads": {"value": 4, "from": "CONFIG['coattn_heads']"},
                      "feedback_temperature": {"value": 0.25, "from": "CONFIG['feedback_tau']"}}
    single = get_preset("mvsa_single").model
    assert apply_config_settings(single, None, "single") == {
        "fusion_heads": {"value": 8, "from": "the preset (not in the weights; the file holds no CONFIG)"}}
    with pytest.raises(NotebookImportError, match=r"CONFIG\['coattn_layers'\] = 3 but the tensors show 2"):
        apply_config_settings(single, {"coattn_layers": 3}, "single")


def _assert_no_unsafe_advice(message: str) -> None:
    assert "weights_only=False" not in message and "safe_globals" not in message


def test_other_layouts_are_refused_with_the_keys_we_read_and_a_snippet_that_converts_them(tmp_path, monkeypatch):
    state = {"fusion.v_proj.weight": torch.ones(2, 2), "fusion.v_proj.bias": torch.zeros(2)}
    pt = tmp_path / "mine.pt"
    torch.save({"weights": state, "settings": {"hidden_dim": 2}, "epoch": 3}, pt)

    with pytest.raises(NotebookImportError) as caught:
        read_notebook_file(pt)

    message = str(caught.value)
    first, *snippet = message.splitlines()
    assert first.startswith(f"{pt}: not a layout the CLARA notebooks write: it holds a dict with keys 'weights', "
                            "'settings', 'epoch'; we read {'model_state_dict': state dict, 'config': CONFIG, ...} "
                            "(as the MVSA-Single notebook saves artifacts_clara/clara_mvsa_single.pt, cell 18); bare "
                            "state dict (as the MVSA-Multiple notebook saves clara_mvsa_multi.pt")
    assert "{'model_state': state dict, 'cfg': CONFIG, ...} (as the HFM notebook saves clara_hfm.pt" in first
    assert snippet == ["  import torch",
                       "  ckpt = torch.load('mine.pt', map_location='cpu', weights_only=True)",
                       "  torch.save({'model_state_dict': ckpt['weights'], 'config': ckpt.get('settings')}, "
                       "'clara_converted.pt')"]
    _assert_no_unsafe_advice(message)

    monkeypatch.chdir(tmp_path)  # the snippet, run as printed, converts the file
    exec("\n".join(line.strip() for line in snippet), {})  # noqa: S102
    converted = read_notebook_file(tmp_path / "clara_converted.pt")
    assert converted.notebook_config == {"hidden_dim": 2} and set(converted.state_dict) == set(state)

    for other, found in (([torch.ones(2)], "it holds a list"), ({"a": 1, "b": torch.ones(2)}, "keys 'a', 'b'")):
        torch.save(other, pt)
        with pytest.raises(NotebookImportError, match=found) as caught:
            read_notebook_file(pt)
        assert "ckpt[KEY_OF_THE_STATE_DICT]" in str(caught.value)
        _assert_no_unsafe_advice(str(caught.value))
    torch.save({"model_state": {"a": [1, 2]}, "cfg": {}}, pt)  # HFM's keys, but no tensors under them
    with pytest.raises(NotebookImportError, match=r"'model_state' is not a dict of tensors \(dict\)"):
        read_notebook_file(pt)


def test_hfm_layout_is_read_with_its_config_and_history(tmp_path):
    history = {"epoch": [1], "val_f1": [np.float64(0.5)]}
    pt = tmp_path / "clara_hfm.pt"
    torch.save({"model_state": {"a.weight": torch.ones(2)}, "cfg": {"num_classes": 3}, "epoch": 1,
                "best_val_f1": np.float64(0.5), "history": history}, pt)

    loaded = read_notebook_file(pt)

    assert loaded.notebook_config == {"num_classes": 3}
    assert loaded.extras == {"epoch": 1, "best_val_f1": 0.5, "history": {"epoch": [1], "val_f1": [0.5]}}
    assert loaded.layout.startswith("{'model_state': state dict, 'cfg': CONFIG, ...} (as the HFM notebook saves")


@runs_authors_code
def test_hfm_three_output_heads_need_explicit_drop(tmp_path, encoders, inputs, notebook_model):
    """The HFM notebook's heads have 3 outputs for 2 labels; dropping output 2 is opt-in and inexact."""
    notebook = notebook_model("hfm")
    assert notebook.config["num_classes"] == 3  # CONFIG of the HFM notebook, cell 4
    pt = save_notebook_way(tmp_path / "clara_hfm.pt", authors.transformers4_state_dict(notebook))
    with pytest.raises(NotebookImportError, match=r"predicts 3 classes but --dataset hfm has 2 .*--drop-extra-classes"):
        import_notebook_checkpoint(pt, "hfm", tmp_path / "refused", encoders_from=str(encoders))
    assert not (tmp_path / "refused").exists()

    folder = import_notebook_checkpoint(pt, "hfm", tmp_path / "imported", encoders_from=str(encoders),
                                        drop_extra_classes=True)

    loaded, ours = our_outputs(folder, inputs["narrow"])
    theirs = notebook.outputs(**inputs["narrow"])
    assert loaded.labels == ["not_sarcastic", "sarcastic"]
    # The heads on the fused vector are the notebook's first two rows exactly; the feedback path differs.
    torch.testing.assert_close(ours.pred_logits, theirs["pred_logits"][:, :2], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.verify_logits, theirs["verify_logits"][:, :2], rtol=0, atol=1e-5)
    assert ours.logits.shape == (3, 2)
    source = json.loads((folder / "config.json").read_text())["source"]
    assert (source["dropped_classes"], source["exact"]) == ([2], False)


@runs_authors_code
def test_extra_and_renamed_keys_are_refused_with_their_names(tmp_path, encoders, notebook_model):
    state = authors.transformers4_state_dict(notebook_model("mvsa_single"))
    state["fusion.extra_gate.weight"] = torch.zeros(4)
    state["pred.net.5.weight"] = state.pop("pred.net.4.weight")
    pt = save_notebook_way(tmp_path / "renamed.pt", state)
    out = tmp_path / "imported"

    with pytest.raises(NotebookImportError) as caught:
        import_notebook_checkpoint(pt, "mvsa_single", out, encoders_from=str(encoders))

    message = str(caught.value)
    assert "2 notebook keys unused, 1 of our tensors unfilled" in message.splitlines()[0]
    lines = [line.strip() for line in message.splitlines()]
    assert "fusion.extra_gate.weight" in lines
    assert "pred.net.5.weight" in lines
    assert "pred.net.4.weight" in lines
    assert not out.exists()


@runs_authors_code
def test_disagreeing_duplicate_vision_registration_is_refused(tmp_path, tokenizer_dir, notebook_model):
    state = authors.transformers4_state_dict(notebook_model("mvsa_multiple", "tiny"))
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


def test_pickle_with_custom_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"fusion.v_proj.weight": torch.zeros(2, 2)},
                "config": _RunsCodeWhenUnpickled(marker)}, pt)

    with pytest.raises(NotebookImportError, match=r"refused: it needs unpickling of arbitrary Python objects "
                                                  r"\(io\.open\), which could run code") as caught:
        import_notebook_checkpoint(pt, "mvsa_single", tmp_path / "out")
    assert "torch.save({'model_state_dict': model.state_dict(), 'config': CONFIG}" in str(caught.value)
    _assert_no_unsafe_advice(str(caught.value))
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


@runs_authors_code
def test_wrong_dataset_and_missing_sources_say_what_to_pass(tmp_path, tokenizer_dir, notebook_model):
    notebook = notebook_model("mvsa_multiple", "tiny")
    full = save_notebook_way(tmp_path / "full.pt", authors.transformers4_state_dict(notebook))
    with pytest.raises(NotebookImportError, match=r"MVSA-Multiple notebook .* use --dataset mvsa_multiple"):
        import_notebook_checkpoint(full, "mvsa_single", tmp_path / "a", tokenizer_from=str(tokenizer_dir))
    with pytest.raises(NotebookImportError, match=r"predicts 2 classes but --dataset mvsa_single has 3 "
                                                  r"\(positive, neutral, negative\); pick the dataset"):
        two_classes = authors.transformers4_state_dict(notebook_model("mvsa_single", num_classes=2))
        single = save_notebook_way(tmp_path / "single.pt", two_classes, num_classes=2)
        import_notebook_checkpoint(single, "mvsa_single", tmp_path / "b", tokenizer_from=str(tokenizer_dir))
    with pytest.raises(NotebookImportError, match=r"tiny encoders, which have no published tokenizer: pass "
                                                  r"--tokenizer-from"):
        import_notebook_checkpoint(full, "mvsa_multiple", tmp_path / "c")
    trainable = save_notebook_way(tmp_path / "trainable.pt",
                                  authors.transformers4_state_dict(notebook, trainable_only=True))
    with pytest.raises(NotebookImportError, match=r"cannot build the encoders \(.* hub ids of the "
                                                  r"notebook's CONFIG\): .*; offline, pass --encoders-from"):
        import_notebook_checkpoint(trainable, "mvsa_multiple", tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


@runs_authors_code
def test_cli_reports_one_line_and_exit_2(tmp_path, encoders, notebook_model, capsys):
    spec = importlib.util.spec_from_file_location("import_notebook_checkpoint", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    state = authors.transformers4_state_dict(notebook_model("hfm", num_classes=2))
    state["fusion.extra_gate.weight"] = torch.zeros(4)
    pt = save_notebook_way(tmp_path / "hfm.pt", state, num_classes=2)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--pt", str(pt), "--dataset", "hfm", "--out", str(tmp_path / "out"),
                  "--encoders-from", str(encoders)])
    assert exit_info.value.code == 2
    # transformers' "Loading weights" progress bars (the --encoders-from folders) also go to stderr.
    err = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("Loading weights")]
    assert err[0].startswith(f"import_notebook_checkpoint.py: error: {pt}: refused: the state dict does not map")
    assert "  fusion.extra_gate.weight" in err

    del state["fusion.extra_gate.weight"]
    torch.save(state, pt)  # a bare state dict: no CONFIG, no metrics
    assert cli.main(["--pt", str(pt), "--dataset", "hfm", "--out", str(tmp_path / "ok"),
                     "--encoders-from", str(encoders)]) == 0
    assert capsys.readouterr().out.strip() == f"imported {pt} -> {tmp_path / 'ok'}"
    source = json.loads((tmp_path / "ok" / "config.json").read_text())["source"]
    assert (source["notebook_config"], source["notebook_entries"]) == (None, {})


def test_cli_help_names_the_files_the_notebooks_write():
    from clara.cli import import_notebook_checkpoint as cli

    for layout in NOTEBOOK_FILES.values():
        assert layout.file_name in cli.__doc__
        assert Path(layout.file_name).name in cli.build_parser().format_help()
