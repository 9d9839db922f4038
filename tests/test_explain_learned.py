"""What the explanations of a trained tiny model show on synthetic data that needs both modalities.

One tiny model is trained once per session on synthetic MVSA-Single posts (label = agreement of
a planted sentiment word and a planted coloured square); its test posts are then explained and
the rates are compared with thresholds set below the measured values (see the constants).
"""
import json

import numpy as np
import pytest

from clara.explain import Explainer, patch_grid

from _explain_utils import one_torch_thread, trained_synthetic_predictor  # noqa: F401 (autouse)

pytestmark = pytest.mark.slow

N_EXPLAINED = 40
# Measured on 2 CPU cores with the fixture's training (see the report in the PR); thresholds
# leave a margin below the measured rates.
MIN_TEXT_IG_WORD_FIRST = 0.6
MIN_CUE_HIT_MARGIN_OVER_CHANCE = 0.25


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return trained_synthetic_predictor(tmp_path_factory.mktemp("explain_learned"))


def _overlaps(grid, row: int, col: int, box) -> bool:
    x0, y0, x1, y1 = grid.patch_box(row * grid.grid_size + col)
    return x0 < box[2] and x1 > box[0] and y0 < box[3] and y1 > box[1]


def _box_in_crop(record, image_size: int):
    """The cue box in model-input pixels (synthetic images are square: resize only, no crop)."""
    width, height = record["image_size"]
    assert width == height
    scale = image_size / width
    return [v * scale for v in record["box"]]


@pytest.fixture(scope="session")
def measured(trained):
    predictor, samples, meta, training = trained
    explainer = Explainer(predictor, n_steps=32, internal_batch_size=64, deletion_points=13,
                          deletion_random_orders=2)
    grid = patch_grid(predictor.model)
    methods = ("relevancy", "text_ig", "image_ig", "occlusion", "deletion")
    word_first = {"text_ig": [], "relevancy": []}
    cue_hit = {"relevancy": [], "image_ig": [], "occlusion": []}
    chance = []
    auc: dict[tuple[str, str], list[float]] = {}
    for sample in samples[:N_EXPLAINED]:
        record = meta["posts"][sample.id]
        explanation = explainer.explain(sample.image_path, sample.text, methods=methods)
        assert explanation.words[record["word_index"]] == record["word"]
        word_first["text_ig"].append(int(np.argmax(explanation.text_ig.word_scores)) == record["word_index"])
        word_first["relevancy"].append(int(np.argmax(explanation.relevancy.word_scores)) == record["word_index"])
        box = _box_in_crop(record, grid.image_size)
        overlapping = [(r, c) for r in range(grid.grid_size) for c in range(grid.grid_size)
                       if _overlaps(grid, r, c, box)]
        chance.append(len(overlapping) / grid.n_patches)
        for name, scores in (("relevancy", explanation.relevancy.patch_scores),
                             ("image_ig", explanation.image_ig.patch_scores),
                             ("occlusion", explanation.occlusion.patch_scores)):
            cue_hit[name].append(tuple(np.unravel_index(int(np.argmax(scores)), scores.shape)) in overlapping)
        for curve in explanation.deletion:
            auc.setdefault((curve.method, curve.modality), []).append(curve.auc)
    rates = {
        "training": training,
        "n_explained": len(chance),
        "word_first": {k: float(np.mean(v)) for k, v in word_first.items()},
        "cue_hit": {k: float(np.mean(v)) for k, v in cue_hit.items()},
        "cue_hit_chance": float(np.mean(chance)),
        "deletion_auc": {f"{m}/{mod}": float(np.mean(v)) for (m, mod), v in sorted(auc.items())},
    }
    print("\nexplanation rates on the synthetic test split:", json.dumps(rates, indent=1))
    return rates


def test_text_attributions_rank_the_planted_word_first(measured):
    assert measured["word_first"]["text_ig"] >= MIN_TEXT_IG_WORD_FIRST, measured


def test_image_relevancy_and_ig_peak_on_the_planted_cue(measured):
    chance = measured["cue_hit_chance"]
    assert measured["cue_hit"]["relevancy"] >= chance + MIN_CUE_HIT_MARGIN_OVER_CHANCE, measured
    assert measured["cue_hit"]["image_ig"] >= chance + MIN_CUE_HIT_MARGIN_OVER_CHANCE, measured


def test_deletion_curves_fall_faster_than_random(measured):
    auc = measured["deletion_auc"]
    for method in ("relevancy/image", "image_ig/image", "occlusion/image"):
        assert auc[method] < auc["random/image"], (method, auc)
    for method in ("relevancy/text", "text_ig/text"):
        assert auc[method] < auc["random/text"], (method, auc)
