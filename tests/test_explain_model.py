"""Explanations on a real (untrained) tiny CLARA model: attention properties, IG completeness,
no mutation of the shared model, thread safety, plain outputs and the script."""
import importlib.util
import json
import subprocess
import sys
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from clara.explain import METHODS, Explainer, fusion_attentions, patch_grid
from clara.explain.attributions import class_probabilities, text_baseline_ids
from clara.precision import PRECISION_ENV

from _explain_utils import (TEXTS, model_fingerprint, one_torch_thread, random_image, tiny_config,  # noqa: F401
                            tiny_predictor)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def fp32_arithmetic():
    """These tests compare against exact fp32 arithmetic (eager attention, Captum's delta to 1e-5); the
    bf16 path on CPUs that choose it is tested in test_explain_fast.py with its own tolerances."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PRECISION_ENV, "fp32")
        yield


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return tiny_predictor(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="module")
def explainer(predictor):
    # few steps, big internal batches and short deletion curves: the tiny model is cheap per
    # sample, so the cost is the number of forward calls
    return Explainer(predictor, n_steps=8, internal_batch_size=64, deletion_points=8, deletion_random_orders=1)


@pytest.fixture(scope="module")
def image():
    return random_image(90, 60, seed=1)  # landscape: the center crop drops the sides


def _batch(predictor, images, texts):
    batch = predictor.encode(images, texts)
    return {k: batch[k].to(predictor.device) for k in ("pixel_values", "input_ids", "attention_mask")}


def test_patch_grid_comes_from_the_model_config(predictor):
    grid = patch_grid(predictor.model)
    stats = predictor.model.image_stats
    assert grid.grid_size == stats.size // stats.patch_size
    assert grid.n_image_tokens == grid.grid_size ** 2 + 1


def test_attention_rows_sum_to_one_over_unmasked_keys_and_padding_gets_zero(predictor, image):
    batch = _batch(predictor, [image, image], ["love", TEXTS[1] + " " + TEXTS[2]])
    mask = batch["attention_mask"].cpu().numpy().astype(bool)
    assert not mask[0].all() and mask[1].all()  # the short text is padded
    text_to_image, image_to_text = fusion_attentions(predictor.model, **batch)
    n_layers = predictor.config.model.fusion_layers
    assert text_to_image.shape[1] == image_to_text.shape[1] == n_layers
    # text queries over image keys: every real token's row is a distribution over CLS + patches
    rows = text_to_image.sum(axis=-1)  # [B, L, H, T]
    np.testing.assert_allclose(rows[0][..., mask[0]], 1.0, atol=1e-5)
    np.testing.assert_allclose(rows[1], 1.0, atol=1e-5)
    # image queries over text keys: rows sum to 1 over the unmasked keys, padding gets exactly 0
    np.testing.assert_allclose(image_to_text[0][..., mask[0]].sum(axis=-1), 1.0, atol=1e-5)
    assert np.all(image_to_text[0][..., ~mask[0]] == 0.0)


def test_attention_maps_are_reshaped_to_the_patch_grid(explainer, image):
    inputs = explainer.prepare(image, "i love this sunny day")
    maps = explainer.attention(inputs)
    g = inputs.grid.grid_size
    n_tokens = inputs.input_ids.shape[1]
    assert maps.kind == "attention"
    assert maps.text_to_image.shape[2:] == (n_tokens, g, g)
    assert maps.image_to_text.shape[2:] == (g * g + 1, n_tokens)
    total = maps.text_to_image.sum(axis=(-2, -1)) + maps.text_to_image_cls
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert maps.head_mean_text_to_image.shape == (maps.n_layers, len(inputs.words.words), g, g)
    np.testing.assert_allclose(maps.image_to_text_weights(layer=0, head=0, patch=(0, 0)).sum(),
                               maps.image_to_text[0, 0, 1, inputs.words.token_to_word >= 0].sum(), rtol=1e-6)


def test_integrated_gradients_are_complete(predictor, explainer, image):
    inputs = explainer.prepare(image, "what an awful rainy morning")
    target = inputs.target_index
    with torch.no_grad():
        p_input = class_probabilities(predictor.model, inputs.pixel_values, inputs.input_ids,
                                      inputs.attention_mask)[0, target].item()
        p_no_text = class_probabilities(predictor.model, inputs.pixel_values,
                                        text_baseline_ids(predictor.tokenizer, inputs.input_ids),
                                        inputs.attention_mask)[0, target].item()
        p_no_image = class_probabilities(predictor.model, torch.zeros_like(inputs.pixel_values), inputs.input_ids,
                                         inputs.attention_mask)[0, target].item()
    text = explainer.text_attributions(inputs, n_steps=128)
    image_ig = explainer.image_attributions(inputs, n_steps=128)
    for result, expected in ((text, p_input - p_no_text), (image_ig, p_input - p_no_image)):
        total = float(result.token_scores.sum() if hasattr(result, "token_scores") else result.pixel_scores.sum())
        # Captum's delta is exactly (sum of attributions) - (f(input) - f(baseline))
        assert result.convergence_delta == pytest.approx(total - expected, abs=1e-5)
        assert abs(result.convergence_delta) < max(0.02 * abs(expected), 2e-4)
    # words carry all of the token mass except the special tokens' (those equal their baseline: 0)
    assert text.word_scores.sum() == pytest.approx(text.token_scores.sum(), abs=1e-6)
    assert image_ig.patch_scores.sum() == pytest.approx(image_ig.pixel_scores.sum(), rel=1e-4, abs=1e-7)
    # the delta is what tells the user to take more steps: it shrinks as they grow
    coarse = explainer.text_attributions(inputs, n_steps=4)
    assert abs(coarse.convergence_delta) > abs(text.convergence_delta)


def test_explaining_leaves_the_shared_model_unchanged(predictor, explainer, image):
    model = predictor.model
    batch = _batch(predictor, [image, random_image(40, 70, seed=2)], TEXTS[:2])
    before = model_fingerprint(model)
    with torch.no_grad():
        logits_before = model(**batch).logits.clone()
    explanation = explainer.explain(image, TEXTS[0], methods=METHODS)
    inputs = explainer.prepare(image, TEXTS[1], target=0)
    explainer.relevancy(inputs)
    explainer.text_attributions(inputs)
    explainer.occlusion(inputs)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, logits_before)
    assert explanation.skipped == {}


def test_encoder_attention_and_its_gradient_match_eager_attention(predictor, explainer, image):
    """The relevancy's CLIP attention (recomputed beside SDPA) and ∇A = ∇O·Vᵀ equal what an eager
    copy of the model returns; DeBERTa's are its own probabilities; the shared model keeps SDPA."""
    import copy

    from transformers.models.clip.modeling_clip import CLIPAttention
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    from clara.explain.relevancy import attention_gradients, recomputed_attention_gradients, recording_encoder_attentions

    model = predictor.model
    inputs = explainer.prepare(image, TEXTS[0])
    forward = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    assert model.vision.backbone.config._attn_implementation == "sdpa"  # no probabilities kept by itself
    with torch.enable_grad():
        with recording_encoder_attentions(model) as recorded:
            score = model(pixel_values=inputs.pixel_values.clone().requires_grad_(True), **forward).logits[0, 1]
        grads = attention_gradients(score, recorded.text, [layer.heads_output for layer in recorded.vision])
    n_text = len(recorded.text)
    vision_grads = recomputed_attention_gradients(recorded.vision, grads[n_text:])

    eager = copy.deepcopy(model)
    eager.vision.backbone.config._attn_implementation = "eager"
    for param in eager.parameters():  # the prepared model is frozen; the copy's weights put both towers on the graph
        param.requires_grad_(True)
    caught = {"vision": [], "text": []}
    for module in eager.modules():
        if isinstance(module, CLIPAttention):
            module.register_forward_hook(lambda m, args, out: caught["vision"].append(out[1]))
        elif isinstance(module, DisentangledSelfAttention):
            module.register_forward_pre_hook(lambda m, args: (*args[:2], True, *args[3:]))
            module.register_forward_hook(lambda m, args, out: caught["text"].append(out[1]))
    with torch.enable_grad():
        eager_score = eager(pixel_values=inputs.pixel_values.clone().requires_grad_(True), **forward).logits[0, 1]
        eager_grads = torch.autograd.grad(eager_score, caught["vision"] + caught["text"])
    assert len(recorded.vision) == len(caught["vision"]) == model.vision.backbone.config.num_hidden_layers
    assert n_text == len(caught["text"]) == model.text.config.num_hidden_layers
    for layer, attention, mine, reference in zip(recorded.vision, caught["vision"], vision_grads, eager_grads):
        torch.testing.assert_close(layer.attention, attention, atol=1e-6, rtol=1e-5)
        assert reference.abs().max() > 1e-4  # a real gradient, not an all-zero match
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-4)
    for attention, mine, reference, eager_attention in zip(recorded.text, grads[:n_text],
                                                            eager_grads[len(caught["vision"]):], caught["text"]):
        torch.testing.assert_close(attention, eager_attention, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-4)


def test_relevancy_propagates_through_both_encoders(explainer, image):
    inputs = explainer.prepare(image, "i love this sunny day")
    relevancy = explainer.relevancy(inputs)
    assert relevancy.layers == {"vision_self_attention": 2, "text_self_attention": 2, "co_attention": 2}
    # every token's row got non-negative relevancy beyond its identity (the encoders' self-attention
    # mixes every token; the rule's exact arithmetic is checked in test_explain_units.py)
    for self_relevancy in (relevancy.image_image, relevancy.text_text):
        residual = self_relevancy - np.eye(len(self_relevancy))
        assert (residual >= -1e-7).all() and (residual.sum(axis=1) > 0).all()
    assert relevancy.patch_scores.shape == (inputs.grid.grid_size,) * 2 and (relevancy.patch_scores >= 0).all()
    assert relevancy.word_scores.shape == (5,) and (relevancy.word_scores > 0).all()


def test_relevancy_does_not_disturb_concurrent_predictions(predictor, explainer, image):
    """The encoder hooks act only in the explaining thread: another thread's outputs are unchanged."""
    model = predictor.model
    batch = _batch(predictor, [image, image], TEXTS[2:4])
    with torch.no_grad():
        reference = model(**batch).logits.clone()
    inputs = explainer.prepare(image, TEXTS[0])
    alone = explainer.relevancy(inputs)
    results, errors = [], []

    def explain_repeatedly():
        try:
            results.extend(explainer.relevancy(inputs) for _ in range(20))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=explain_repeatedly)
    worker.start()
    checked = 0
    while worker.is_alive() or checked == 0:
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reference)
        checked += 1
    worker.join()
    assert not errors and len(results) == 20
    for result in results:
        np.testing.assert_allclose(result.patch_scores, alone.patch_scores, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(result.token_scores, alone.token_scores, rtol=1e-5, atol=1e-9)


def test_text_attributions_do_not_disturb_concurrent_predictions(predictor, image):
    """LIG's hooks live on a per-call module: another thread's forward passes are unaffected."""
    model = predictor.model
    batch = _batch(predictor, [image, image], TEXTS[2:4])
    with torch.no_grad():
        reference = model(**batch).logits.clone()
    explainer = Explainer(predictor, n_steps=48, internal_batch_size=4)
    inputs = explainer.prepare(image, TEXTS[0])
    results, errors = [], []

    def attribute():
        try:
            results.append(explainer.text_attributions(inputs))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=attribute)
    worker.start()
    checked = 0
    while worker.is_alive():
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reference)
        checked += 1
    worker.join()
    assert not errors and len(results) == 1 and checked > 0
    alone = explainer.text_attributions(inputs)
    np.testing.assert_allclose(results[0].token_scores, alone.token_scores, rtol=1e-5, atol=1e-8)


def _assert_plain(value, path="explanation"):
    assert not isinstance(value, torch.Tensor), f"{path} is a tensor"
    if is_dataclass(value):
        for f in fields(value):
            _assert_plain(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_plain(v, f"{path}[{i}]")


def test_explanation_is_plain_data_with_every_method(predictor, explainer, image):
    seen = []
    explanation = explainer.explain(image, "the best coffee", target="negative", methods=METHODS,
                                    progress=lambda method, done, total: seen.append((method, done, total)))
    _assert_plain(explanation)
    assert explanation.target == "negative" and explanation.target_index == 2
    assert [s[0] for s in seen] == [*METHODS, "done"]
    assert explanation.words == ["the", "best", "coffee"]
    g = explanation.grid_size
    for grid in explanation.heatmaps().values():
        assert grid.shape == (g, g)
    assert explanation.relevancy.kind == "explanation" and explanation.attention.kind == "attention"
    share = explanation.modality_share
    assert share.text + share.image == pytest.approx(1.0) and 0 <= share.text <= 1
    assert "attribution mass" in share.method
    curves = {(c.method, c.modality) for c in explanation.deletion}
    assert curves == {("attention", "image"), ("relevancy", "image"), ("image_ig", "image"),
                      ("occlusion", "image"), ("random", "image"), ("attention", "text"),
                      ("relevancy", "text"), ("text_ig", "text"), ("random", "text")}
    for curve in explanation.deletion:
        # first point: nothing removed, i.e. the target probability of the input
        assert curve.probs[0] == pytest.approx(explanation.probs["negative"], abs=1e-5)
        assert curve.fractions[0] == 0 and curve.fractions[-1] == 1
    json.dumps(explanation.to_dict())
    with pytest.raises(ValueError, match="unknown explanation method"):
        explainer.explain(image, "x", methods=["gradcam"])
    with pytest.raises(ValueError, match="unknown target label 'happy'"):
        explainer.prepare(image, "x", target="happy")
    with pytest.raises(ValueError, match="text is empty"):
        explainer.prepare(image, "   ")


def test_pooled_fusion_skips_attention_methods_with_a_reason(tmp_path, image):
    predictor = tiny_predictor(tmp_path / "pooled", cfg=tiny_config(**{"model.fusion": "pooled"}))
    explanation = Explainer(predictor, n_steps=4, internal_batch_size=8).explain(
        image, TEXTS[0], methods=("attention", "relevancy", "text_ig"))
    assert set(explanation.skipped) == {"attention", "relevancy"}
    assert "pooled" in explanation.skipped["attention"]
    assert explanation.text_ig is not None


def _script_main():
    spec = importlib.util.spec_from_file_location("explain_script", REPO / "scripts" / "explain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_explain_script_writes_overlays_words_and_scores(predictor, tmp_path, image, capsys):
    main = _script_main()
    image_path = tmp_path / "post.jpg"
    image.save(image_path)
    checkpoint = tmp_path / "ckpt"
    tiny_predictor(checkpoint)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--image", str(image_path), "--text", "i love this",
                 "--out", str(out), "--steps", "4",
                 "--methods", "attention,relevancy,text_ig,image_ig,occlusion,modality_share"]) == 0
    assert "modality share: text" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["overlay_attention.png", "overlay_image_ig.png", "overlay_occlusion.png",
                     "overlay_relevancy.png", "scores.json", "words.html"]
    from PIL import Image
    assert Image.open(out / "overlay_relevancy.png").width > image.width  # picture + colour bar (test_explain_cli.py)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["words"] == ["i", "love", "this"] and len(scores["word_scores"]["text_ig"]) == 3
    assert scores["kinds"] == {"attention": "attention", "relevancy": "explanation"}
    assert "i</span>" in (out / "words.html").read_text()

    bad_image = tmp_path / "broken.jpg"
    bad_image.write_bytes(b"not an image")
    for args, message in (
            (("--image", bad_image, "--text", "x"), f"cannot use image {bad_image}"),
            (("--image", image_path, "--text", "  "), "--text is empty"),
            (("--image", image_path, "--text", "x", "--methods", "gradcam"), "unknown method(s) gradcam"),
            (("--image", image_path, "--text", "x", "--target", "happy"), "unknown --target 'happy'"),
            (("--image", image_path, "--text", "x", "--checkpoint", tmp_path / "nope"), "does not exist")):
        argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "bad"), *map(str, args)]
        assert main(argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("explain.py:")]
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "bad").exists()


def test_explain_script_exits_2_on_bad_input_as_a_process(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "explain.py"), "--checkpoint", str(tmp_path),
                           "--image", str(tmp_path / "missing.jpg"), "--text", "x", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"explain.py: error: cannot use image {tmp_path / 'missing.jpg'}: file not found" in done.stderr
