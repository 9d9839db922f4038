"""What the explanations of a trained tiny model show on synthetic data that needs both modalities.

One tiny model is trained once per session on synthetic MVSA-Single posts (label = agreement of
a planted sentiment word and a planted coloured square), then 40 of its test posts are explained
and the rates are compared with thresholds. The run is deterministic on one machine (seeded, one
thread); another CPU may round differently, hence the slack. Measured on 2026-12-02 (Intel Xeon;
`pytest -s` prints them): test accuracy 0.964; planted word ranked first: text LIG 0.90,
relevancy 0.60 (at its bar), raw attention 0.075 (chance ~0.1); top image patch on the cue:
image IG 0.475, occlusion 0.55, relevancy 0.35, raw attention 0.35 (chance 0.12); deletion AUC,
image: IG 0.54, occlusion 0.44, relevancy 0.64, attention 0.56, random 0.72; text: LIG 0.34,
relevancy 0.50, attention 0.62, random 0.66. These moved with the changes of 2026-12-01 (among
them the model made to match the notebooks); the earlier figures and the analysis of relevancy on the image side are
in docs/METHOD.md ("Relevancy on the learned synthetic model"). Occlusion slides 2x2-patch windows
by one patch: the cue spans 2-4 patches.
"""
import json

import numpy as np
import pytest

from clara.explain import METHODS, Explainer, patch_grid
from clara.precision import PRECISION_ENV

from _explain_utils import one_torch_thread, single_torch_thread, trained_synthetic_predictor  # noqa: F401

pytestmark = pytest.mark.slow

N_EXPLAINED = 40
IG_STEPS = 64
MIN_TEXT_IG_WORD_FIRST = 0.45  # measured 0.90 (0.675 before 2026-12-01)
MIN_RELEVANCY_WORD_FIRST = 0.6  # measured 0.60 (0.85 before 2026-12-01)
MIN_CUE_HIT_MARGIN_OVER_CHANCE = 0.3  # image IG: measured 0.475 - 0.12 (0.70 before)
MIN_OCCLUSION_CUE_HIT_MARGIN_OVER_CHANCE = 0.25  # measured 0.55 - 0.12 (0.60 before)
MIN_DELETION_AUC_GAIN_OVER_RANDOM = 0.1  # measured gains: image IG 0.18, occlusion 0.28, LIG 0.32, relevancy 0.16


@pytest.fixture(scope="session", autouse=True)
def fp32_arithmetic():
    """The measured rates are fp32's (on a CPU whose probe picks bf16 the model would train and explain
    in bf16 autocast otherwise)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PRECISION_ENV, "fp32")
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    with single_torch_thread():
        return trained_synthetic_predictor(tmp_path_factory.mktemp("explain_learned"))


def _overlapping_patches(grid, box) -> set[tuple[int, int]]:
    g = grid.grid_size
    hits = set()
    for row in range(g):
        for col in range(g):
            x0, y0, x1, y1 = grid.patch_box(row * g + col)
            if x0 < box[2] and x1 > box[0] and y0 < box[3] and y1 > box[1]:
                hits.add((row, col))
    return hits


def _box_in_model_pixels(record, image_size: int) -> list[float]:
    """The cue box in model-input pixels (synthetic images are square: resize only, no crop)."""
    width, height = record["image_size"]
    assert width == height
    return [v * image_size / width for v in record["box"]]


def _peak(scores: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(scores)), scores.shape))


@pytest.fixture(scope="session")
def measured(trained):
    predictor, samples, meta, training = trained
    explainer = Explainer(predictor, n_steps=IG_STEPS, internal_batch_size=64, deletion_points=13,
                          deletion_random_orders=2)
    grid = patch_grid(predictor.model)
    word_first: dict[str, list[bool]] = {"text_ig": [], "relevancy": [], "attention": []}
    cue_hit: dict[str, list[bool]] = {"relevancy": [], "image_ig": [], "occlusion": [], "attention": []}
    chance, text_deltas, image_deltas = [], [], []
    auc: dict[str, list[float]] = {}
    with single_torch_thread():
        for sample in samples[:N_EXPLAINED]:
            record = meta["posts"][sample.id]
            explanation = explainer.explain(sample.image_path, sample.text, methods=METHODS)
            assert explanation.words[record["word_index"]] == record["word"]
            for name, scores in explanation.word_scores().items():
                word_first[name].append(int(np.argmax(scores)) == record["word_index"])
            overlapping = _overlapping_patches(grid, _box_in_model_pixels(record, grid.image_size))
            chance.append(len(overlapping) / grid.n_patches)
            for name, scores in explanation.heatmaps().items():
                cue_hit[name].append(_peak(scores) in overlapping)
            text_deltas.append(abs(explanation.text_ig.convergence_delta))
            image_deltas.append(abs(explanation.image_ig.convergence_delta))
            for curve in explanation.deletion:
                auc.setdefault(f"{curve.method}/{curve.modality}", []).append(curve.auc)
    rates = {
        "training": training,
        "n_explained": len(chance),
        "word_first": {k: float(np.mean(v)) for k, v in word_first.items()},
        "cue_hit": {k: float(np.mean(v)) for k, v in cue_hit.items()},
        "cue_hit_chance": float(np.mean(chance)),
        "median_abs_delta": {"text_ig": float(np.median(text_deltas)), "image_ig": float(np.median(image_deltas))},
        "deletion_auc": {k: float(np.mean(v)) for k, v in sorted(auc.items())},
    }
    print("\nexplanation rates on the synthetic test split:", json.dumps(rates, indent=1))
    return rates


def test_the_model_learned_the_task(measured):
    assert measured["training"]["test_accuracy"] >= 0.85, measured["training"]


def test_text_attributions_and_relevancy_rank_the_planted_word_first(measured):
    assert measured["word_first"]["text_ig"] >= MIN_TEXT_IG_WORD_FIRST, measured
    assert measured["word_first"]["relevancy"] >= MIN_RELEVANCY_WORD_FIRST, measured


def test_image_attributions_peak_on_the_planted_cue(measured):
    chance = measured["cue_hit_chance"]
    assert measured["cue_hit"]["image_ig"] >= chance + MIN_CUE_HIT_MARGIN_OVER_CHANCE, measured
    assert measured["cue_hit"]["occlusion"] >= chance + MIN_OCCLUSION_CUE_HIT_MARGIN_OVER_CHANCE, measured


def test_deletion_curves_fall_faster_than_random(measured):
    auc = measured["deletion_auc"]
    for method, modality in (("image_ig", "image"), ("occlusion", "image"), ("text_ig", "text"),
                             ("relevancy", "text")):
        assert auc[f"{method}/{modality}"] < auc[f"random/{modality}"] - MIN_DELETION_AUC_GAIN_OVER_RANDOM, \
            (method, modality, auc)
