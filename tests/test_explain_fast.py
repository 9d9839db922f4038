"""The fast explanation paths: converged at the library's defaults on the bundled examples, the
other modality's encoder run once without changing any score, adaptive refinement of the path
integral, one set of defaults for the dashboard and the CLI, and the bf16 path."""
import json
import threading

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients

from _app_utils import DEMO_CHECKPOINT, EXAMPLES_DIR, require_demo
from _explain_utils import one_torch_thread  # noqa: F401
from clara.explain import EXPLAIN_DEFAULTS, Explainer, ExplainSettings
from clara.explain.attributions import (class_probabilities, find_text_embedding_layer, integrate_path,
                                        text_baseline_ids)
from clara.inference import Predictor


def _examples() -> list[dict]:
    """The bundled examples that have a post text (the meme's text is in its picture: OCR reads it)."""
    entries = json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))
    return [entry for entry in entries if entry["text"].strip()]


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def demo(request):
    require_demo()
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision=request.param)


def test_defaults_converge_on_the_bundled_examples(demo):
    explainer = Explainer(demo)
    assert explainer.settings == EXPLAIN_DEFAULTS
    examples = _examples()
    assert len(examples) == 4
    for entry in examples:
        explanation = explainer.explain(EXAMPLES_DIR / entry["image"], entry["text"], methods=["text_ig", "image_ig"])
        for result in (explanation.text_ig, explanation.image_ig):
            limit = max(EXPLAIN_DEFAULTS.max_relative_delta * abs(result.output_change), EXPLAIN_DEFAULTS.delta_floor)
            assert result.converged and abs(result.convergence_delta) <= limit, (entry["name"], result)
            assert result.n_steps <= EXPLAIN_DEFAULTS.max_steps and result.steps_tried[-1] == result.n_steps
        # the output change is f(input) - f(baseline) of the explained class's probability
        assert explanation.text_ig.output_change == pytest.approx(
            explanation.text_ig.token_scores.sum() - explanation.text_ig.convergence_delta, abs=1e-6)


def test_defaults_are_shared_and_leave_deletion_off():
    from clara.cli import explain as explain_cli

    assert "deletion" not in EXPLAIN_DEFAULTS.methods
    assert explain_cli.EXPLAIN_DEFAULTS is EXPLAIN_DEFAULTS  # the CLI reads the library's defaults
    with pytest.raises(ValueError, match="nodes_per_segment <= n_steps <= max_steps"):
        ExplainSettings(n_steps=16, max_steps=8)
    with pytest.raises(ValueError, match="integration='simpson'"):
        ExplainSettings(integration="simpson")


@pytest.fixture(scope="module")
def fp32_demo():
    require_demo()
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="fp32")


def test_one_encoder_run_gives_the_full_models_attributions(fp32_demo):
    """Text tokens / image tokens held fixed while the other modality is attributed: the scores equal
    Captum's on the whole model (both encoders run at every step) for the same quadrature."""
    explainer = Explainer(fp32_demo)
    model = fp32_demo.model
    entry = _examples()[0]
    inputs = explainer.prepare(EXAMPLES_DIR / entry["image"], entry["text"])
    target = inputs.target_index
    steps = 16
    text = explainer.text_attributions(inputs, n_steps=steps)
    image = explainer.image_attributions(inputs, n_steps=steps)
    assert text.n_steps == image.n_steps == steps and text.steps_tried == (steps,)

    def full(ids, pixels, mask):
        return class_probabilities(model, pixels, ids, mask)

    _, embedding = find_text_embedding_layer(model)
    lig = LayerIntegratedGradients(full, embedding)
    reference = lig.attribute(inputs=inputs.input_ids, baselines=text_baseline_ids(fp32_demo.tokenizer, inputs.input_ids),
                              additional_forward_args=(inputs.pixel_values, inputs.attention_mask), target=target,
                              n_steps=steps, method="gausslegendre", internal_batch_size=steps)
    np.testing.assert_allclose(text.token_scores, reference.detach().sum(-1)[0].numpy(), rtol=1e-4, atol=1e-6)

    def full_image(pixels, ids, mask):
        return class_probabilities(model, pixels, ids, mask)

    pixels = inputs.pixel_values.clone()
    reference = IntegratedGradients(full_image).attribute(
        inputs=pixels, baselines=torch.zeros_like(pixels), additional_forward_args=(inputs.input_ids, inputs.attention_mask),
        target=target, n_steps=steps, method="gausslegendre", internal_batch_size=steps)
    np.testing.assert_allclose(image.pixel_scores, reference.detach()[0].sum(0).numpy(), rtol=1e-4, atol=1e-7)
    assert not explainer.model.training


def test_refinement_spends_the_steps_where_the_output_changes():
    """f jumps near the start of the path (a saturating model): uniform Gauss-Legendre with 128 nodes is
    still off by a quarter of the change, the adaptive segments converge with fewer evaluations."""
    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(2000 * (x.sum(dim=1, keepdim=True) - 0.01))

    start, end = torch.zeros(1, 3), torch.full((1, 3), 1 / 3)
    ig = IntegratedGradients(model)

    def attribute(lows, highs, nodes):
        return ig.attribute(inputs=highs, baselines=lows, n_steps=nodes, method="gausslegendre")

    def values(points):
        return model(points)[:, 0]

    settings = ExplainSettings(n_steps=16, max_steps=128)
    adaptive = integrate_path(start, end, values, attribute, settings, None, batch=32)
    uniform = integrate_path(start, end, values, attribute, settings, 128, batch=32)
    change = float(model(end) - model(start))
    assert adaptive.output_change == pytest.approx(change)
    assert adaptive.converged and adaptive.steps < 128
    assert abs(adaptive.delta) <= settings.max_relative_delta * abs(change)
    assert not settings.converged(uniform.delta, change) and abs(uniform.delta) > 0.2
    assert adaptive.attributions.sum().item() == pytest.approx(change + adaptive.delta, abs=1e-6)  # float32 sum
    assert list(adaptive.steps_tried) == sorted(adaptive.steps_tried) and adaptive.steps_tried[-1] == adaptive.steps


# bf16 keeps about 3 significant digits: two fp32 scores closer than this share of the score range
# are a tie, and either may come out on top (seen: 5.280e-05 vs 5.263e-05 on a range of 1.2e-04).
TIE_SHARE = 0.02


def top_within_ties(fast_scores, reference_scores) -> bool:
    """bf16's top item is fp32's, or scores within TIE_SHARE of fp32's range of fp32's top one."""
    reference = np.asarray(reference_scores, dtype=np.float64).ravel()
    top = int(np.argmax(np.asarray(fast_scores).ravel()))
    return reference[top] >= reference.max() - TIE_SHARE * (reference.max() - reference.min())


def test_bf16_explanations_agree_with_fp32(fp32_demo):
    """The bf16 path (merged weights stored in bf16, autocast) explains like fp32: the same top word
    and top patch (up to ties) for relevancy and IG on the bundled examples, from any thread."""
    bf16 = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="bf16")
    assert bf16.path.precision == "bf16" and bf16.path.weights == "bf16"
    methods = ["relevancy", "text_ig", "image_ig", "attention"]
    for entry in _examples():
        image = EXAMPLES_DIR / entry["image"]
        results = {}
        for name, predictor in (("fp32", fp32_demo), ("bf16", bf16)):
            results[name] = Explainer(predictor).explain(image, entry["text"], methods=methods)
        reference, fast = results["fp32"], results["bf16"]
        assert fast.label == reference.label
        for method, scores in reference.word_scores().items():
            assert top_within_ties(fast.word_scores()[method], scores), (entry["name"], method)
        for method in ("relevancy", "attention"):
            assert top_within_ties(fast.heatmaps()[method], reference.heatmaps()[method]), (entry["name"], method)
    errors = []

    def explain_in_a_thread():
        try:
            Explainer(bf16).explain(EXAMPLES_DIR / _examples()[0]["image"], _examples()[0]["text"], methods=["relevancy"])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=explain_in_a_thread)
    worker.start()
    worker.join()
    assert not errors
