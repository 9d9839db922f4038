"""Our model against the authors' own notebook models (run by tests/_authors.py, not re-created).

For each notebook the authors' CLARAModel is built by their code with random weights (LoRA B
non-zero, so the adapters count), its state dict is copied into our model with the importer's
key mapping, and every output is compared on random inputs (docs/FIDELITY.md).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import _authors as authors
from _authors import AUTHORS_CODE_WARNINGS, requires_notebooks
from clara.config import get_preset
from clara.checkpoint.notebook_keys import map_notebook_state_dict
from clara.model import CLARAModel, build_text_encoder, build_tokenizer, build_vision_encoder, image_stats

pytestmark = [requires_notebooks, *AUTHORS_CODE_WARNINGS]

TEXTS = ["i love this sunny day at the park", "what an awful rainy morning on the bus",
         "just a photo of the street today", "the best coffee with my friend", "no"]
VARIANT = {"mvsa_single": "single", "hfm": "single", "mvsa_multiple": "multiple"}
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(get_preset("mvsa_single").override({"model.encoders": "tiny"}).model, TEXTS)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory, tokenizer):
    configs = authors.narrow_encoder_configs(len(tokenizer), tokenizer.pad_token_id)
    return authors.save_encoders(tmp_path_factory.mktemp("encoders"), configs, tokenizer), configs


@pytest.fixture(scope="module")
def inputs(tokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # "no" is padded: the mask matters
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(len(TEXTS), 3, 64, 64, generator=generator),
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def build_pair(dataset: str, encoder_folder, tokenizer, state_layout: str = "transformers5"
               ) -> tuple[authors.AuthorsModel, CLARAModel]:
    """The authors' model and ours (preset, pooled fusion, same encoders), holding the same weights."""
    folder, configs = encoder_folder
    theirs = authors.build_authors_model(dataset, configs)
    num_classes = theirs.config["num_classes"]  # HFM's notebook keeps 3 outputs for its 2 labels
    cfg = get_preset(dataset).override({"model.encoders": "published", "model.vision_encoder": str(folder / "vision"),
                                        "model.text_encoder": str(folder / "text"), "model.fusion": "pooled"})
    torch.manual_seed(1)
    ours = CLARAModel(cfg.model, num_classes, build_vision_encoder(cfg.model), build_text_encoder(cfg.model, tokenizer),
                      image_stats(cfg.model))
    state = (authors.transformers4_state_dict(theirs) if state_layout == "transformers4"
             else theirs.model.state_dict())
    mapping = map_notebook_state_dict(state, {k: v.shape for k, v in ours.state_dict().items()}, VARIANT[dataset])
    assert (mapping.unused, mapping.unfilled, mapping.shape_mismatches, mapping.conflicts) == ([], [], [], [])
    ours.load_state_dict(mapping.tensors, strict=True)
    return theirs, ours.eval()


@pytest.mark.parametrize("state_layout", ["transformers5", "transformers4"])
@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_outputs_equal_the_authors_model(dataset, state_layout, encoder_folder, tokenizer, inputs):
    theirs, ours = build_pair(dataset, encoder_folder, tokenizer, state_layout)
    expected = theirs.outputs(**inputs)
    with torch.no_grad():
        got = ours(**inputs)
    for name in ("logits", "pred_logits", "verify_logits", "probs"):
        torch.testing.assert_close(getattr(got, name), expected[name], rtol=0, atol=ATOL, msg=name)
    if "uncertainty" in expected:  # MVSA-Multiple's notebook has no uncertainty head
        torch.testing.assert_close(got.uncertainty, expected["uncertainty"], rtol=0, atol=ATOL)
    assert expected["logits"].std() > 0.01  # the comparison is not between constants


def _layout(module: nn.Module) -> list[tuple[str, float | None]]:
    """Every submodule's type (and dropout rate) in registration order: what training depends on."""
    return [(type(m).__name__, getattr(m, "p", None)) for m in module.modules()
            if not list(m.children()) or isinstance(m, nn.MultiheadAttention)]


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_heads_and_fusion_have_the_notebooks_layers_and_dropout(dataset, encoder_folder, tokenizer):
    theirs, ours = build_pair(dataset, encoder_folder, tokenizer)
    names = ["fusion", "pred", "veri", "feed"] + (["final"] if dataset == "mvsa_multiple" else ["unc"])
    for name in names:
        assert _layout(getattr(ours, name)) == _layout(getattr(theirs.model, name)), name
    attention = [m for m in ours.fusion.modules() if isinstance(m, nn.MultiheadAttention)]
    their_attention = [m for m in theirs.model.fusion.modules() if isinstance(m, nn.MultiheadAttention)]
    assert [(m.num_heads, m.dropout) for m in attention] == [(m.num_heads, m.dropout) for m in their_attention]


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_gradients_of_the_trainable_weights_equal_the_authors(dataset, encoder_folder, tokenizer, inputs):
    """Same loss on both models (dropout off) -> the same gradient for every shared weight: the
    feedback path's detach (MVSA-Multiple) and the heads' wiring train the same way."""
    theirs, ours = build_pair(dataset, encoder_folder, tokenizer)
    labels = torch.arange(len(TEXTS)) % 3
    if dataset == "mvsa_multiple":
        their_logits = theirs.model(**inputs)
    else:
        out = theirs.model(inputs["pixel_values"], input_ids=inputs["input_ids"],
                           attention_mask=inputs["attention_mask"])
        their_logits = (out["logits"], out["pred_logits"], out["verify_logits"])
    our_out = ours(**inputs)
    our_logits = (our_out.logits, our_out.pred_logits, our_out.verify_logits)
    for logits, model in ((their_logits, theirs.model), (our_logits, ours)):
        sum(torch.nn.functional.cross_entropy(lg, labels) for lg in logits).backward()
    their_grads = {k: p.grad for k, p in theirs.model.named_parameters() if p.grad is not None}
    compared = 0
    for key, param in ours.named_parameters():
        if key.startswith(("fusion.", "pred.", "veri.", "feed.", "final.", "unc.")):
            if param.grad is None:
                assert their_grads.get(key) is None or not their_grads[key].any(), key
                continue
            torch.testing.assert_close(param.grad, their_grads[key], rtol=1e-4, atol=1e-6, msg=key)
            compared += 1
    assert compared > 10


# (total, trainable) as the notebooks print them; HFM's are of its 3-output heads (CONFIG num_classes 3).
PUBLISHED_COUNTS = {"mvsa_single": (285_467_911, 21_268_231), "hfm": (285_467_911, 14_180_359),
                    "mvsa_multiple": (281_136_393, 9_848_841)}


def _printed_counts(dataset: str) -> tuple[int, int]:
    if dataset == "mvsa_multiple":  # " Params: 9,848,841/281,136,393 (3.50%)"
        match = authors.printed(dataset, r"Params: ([\d,]+)/([\d,]+)")
        trainable, total = match.groups()
    else:  # "📊 Params: total=285,467,911 | trainable=21,268,231 (7.45%)"
        total, trainable = authors.printed(dataset, r"Params: total=([\d,]+) \| trainable=([\d,]+)").groups()
    return int(total.replace(",", "")), int(trainable.replace(",", ""))


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_authors_code_at_published_sizes_prints_the_published_counts(dataset):
    """The harness builds what the notebooks built: at ViT-B/32 + DeBERTa-v3-base sizes (on the meta
    device, no memory) the authors' model has the parameter counts their saved outputs print."""
    with torch.device("meta"):
        theirs = authors.build_authors_model(dataset, authors.published_encoder_configs(), randomise_lora_b=False)
    params = list(theirs.model.parameters())  # MVSA-Multiple's twice-registered vision tower counts once
    counts = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    assert counts == _printed_counts(dataset) == PUBLISHED_COUNTS[dataset]


# Where each notebook defines its "w/o Co-Attention" prediction: (cell, the helpers it calls).
WO_COATTN = {"mvsa_single": (22, ["_forward_feats", "_hidden_dim", "_predict_wo_coattn"]),
             "mvsa_multiple": (24, ["_forward_feats", "_pred_head_logits", "_predict_wo_coattn"]),
             "hfm": (23, ["_forward_feats", "_pred_head_logits", "_predict_wo_coattn"])}


@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_no_coattention_ablation_feeds_the_notebooks_fused_vector(dataset, encoder_folder, tokenizer, inputs):
    """The notebooks' `_predict_wo_coattn` feeds F.layer_norm(0.5 * (v_proj(v) + t_proj(t))) to the
    prediction head; its logits (caught at `model.pred`) are our pred_logits under no_coattention."""
    theirs, ours = build_pair(dataset, encoder_folder, tokenizer)
    cell, names = WO_COATTN[dataset]
    namespace = authors.notebook(dataset).run(cell, names, theirs.namespace)
    caught = []
    hook = theirs.model.pred.register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        predictions = namespace["_predict_wo_coattn"](theirs.model, [inputs], torch.device("cpu"))
    finally:
        hook.remove()
    # MVSA-Single / HFM heads return (logits, probs), MVSA-Multiple's the logits.
    expected = caught[0][0] if isinstance(caught[0], tuple) else caught[0]
    with torch.no_grad():
        got = ours(**inputs, ablation="no_coattention")
    torch.testing.assert_close(got.pred_logits, expected, rtol=0, atol=ATOL)
    assert got.pred_logits.argmax(-1).tolist() == predictions.tolist()
