"""Predictor: predictions survive a save/reload exactly, every input form gives the same answer,
the ablation probabilities are the model's, truncation is flagged, threads can share one; the
loaded model is prepared once (LoRA merged, frozen, eval) without changing its answers.

These tests pin fp32 (exact comparisons); the bf16 path is tested in test_perf_options.py."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from peft.tuners.tuners_utils import BaseTunerLayer

from clara.checkpoint import save_checkpoint
from clara.data.images import ImageError
from clara.inference import Prediction, Predictor, merge_lora
from _app_utils import DEMO_CHECKPOINT, require_demo
from _eval_utils import TEXTS, build_model, jpeg_bytes, one_thread, random_image, tiny_config  # noqa: F401

# Merged vs unmerged LoRA: the same arithmetic regrouped, (W + s·BA)x vs Wx + s·B(Ax), in fp32.
MERGE_LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(Predictor on the model before saving, Predictor.from_checkpoint (merged), the folder); fp32."""
    cfg = tiny_config(**{"data.max_text_length": "16"})
    model, tokenizer = build_model(cfg)  # LoRA B moved away from zero: merging really changes the weights
    before = Predictor(model, tokenizer, cfg, cfg.labels, device="cpu", precision="fp32")
    folder = save_checkpoint(tmp_path_factory.mktemp("ck") / "clara_best", model, tokenizer, cfg)
    return before, Predictor.from_checkpoint(folder, device="cpu", precision="fp32"), folder


def images(n: int) -> list:
    return [random_image(seed) for seed in range(n)]


def test_predictions_after_reload_equal_predictions_before_save(saved):
    before, _, folder = saved
    after = Predictor.from_checkpoint(folder, device="cpu", precision="fp32", merge=False)  # the same arithmetic
    posts = images(4)
    texts = TEXTS[:3] + [""]
    assert before.predict(posts, texts) == after.predict(posts, texts)


def _logits(predictor: Predictor, posts, texts) -> torch.Tensor:
    batch = predictor.encode(posts, texts)
    with torch.inference_mode(), predictor.autocast():
        return predictor.model(**{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}).logits


def test_loaded_model_is_merged_frozen_and_gives_the_adapters_answers(saved):
    before, merged, _ = saved
    assert any(isinstance(m, BaseTunerLayer) for m in before.model.modules())  # the adapters were there
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.model.modules())
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())
    assert not any(p.requires_grad for p in merged.model.parameters()) and not merged.model.training
    assert (merged.path.lora, merged.path.precision, merged.path.weights) == ("merged", "fp32", "fp32")
    assert (before.path.lora, before.path.precision) == ("adapters", "fp32")
    posts, texts = images(5), TEXTS
    reference, folded = _logits(before, posts, texts), _logits(merged, posts, texts)
    assert (reference - folded).abs().max() > 0  # merging regroups the arithmetic: not bit-identical
    torch.testing.assert_close(folded, reference, rtol=0, atol=MERGE_LOGIT_TOLERANCE)
    assert [p.label for p in before.predict(posts, texts)] == [p.label for p in merged.predict(posts, texts)]


def test_merge_lora_folds_a_non_zero_adapter_exactly():
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    import copy
    merged = copy.deepcopy(model)
    n_layers = merge_lora(merged)
    assert n_layers == sum(isinstance(m, BaseTunerLayer) for m in model.modules()) > 0
    from _eval_utils import model_batch
    batch = model_batch(model, tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, rtol=0, atol=MERGE_LOGIT_TOLERANCE)


def test_demo_checkpoint_merged_gives_the_same_labels_and_probabilities():
    require_demo()
    import csv
    with (DEMO_CHECKPOINT / "results" / "predictions.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    posts = [DEMO_CHECKPOINT / "results" / row["image_path"] for row in rows]
    texts = [row["text"] for row in rows]
    adapters = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="fp32", merge=False)
    merged = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="fp32")
    reference, folded = adapters.predict(posts, texts, batch_size=64), merged.predict(posts, texts, batch_size=64)
    assert [p.label for p in folded] == [p.label for p in reference] == [row["predicted"] for row in rows]
    change = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(reference, folded) for k in a.probs)
    assert change < MERGE_LOGIT_TOLERANCE


@pytest.mark.parametrize("merged", [False, True])
def test_prediction_fields_come_from_the_model(saved, merged):
    predictor = saved[1] if merged else saved[0]
    posts, texts = images(2), TEXTS[:2]
    predictions = predictor.predict(posts, texts)
    batch = predictor.encode(posts, texts)
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    with torch.inference_mode():
        out = predictor.model(**inputs)
        text_only = predictor.model(**inputs, ablation="text_only").probs
        image_only = predictor.model(**inputs, ablation="image_only").probs
    for i, prediction in enumerate(predictions):
        assert isinstance(prediction, Prediction)
        assert list(prediction.probs) == ["positive", "neutral", "negative"]
        assert sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label_index == int(out.probs[i].argmax())
        assert prediction.label == predictor.labels[prediction.label_index]
        assert list(prediction.probs.values()) == pytest.approx(out.probs[i].tolist(), abs=1e-6)
        assert list(prediction.pred_probs.values()) == pytest.approx(out.pred_logits[i].softmax(-1).tolist(), abs=1e-6)
        assert list(prediction.verify_probs.values()) == pytest.approx(out.verify_logits[i].softmax(-1).tolist(), abs=1e-6)
        assert list(prediction.text_only_probs.values()) == pytest.approx(text_only[i].tolist(), abs=1e-6)
        assert list(prediction.image_only_probs.values()) == pytest.approx(image_only[i].tolist(), abs=1e-6)
        assert prediction.uncertainty == pytest.approx(float(out.uncertainty[i]), abs=1e-6)
        assert prediction.to_dict()["label"] == prediction.label


def test_pil_path_and_bytes_give_the_same_prediction(saved, tmp_path):
    _, predictor, _ = saved
    data = jpeg_bytes(random_image(7))
    path = tmp_path / "post.jpg"
    path.write_bytes(data)
    from PIL import Image
    import io
    pil = Image.open(io.BytesIO(data))
    by_path, by_str, by_bytes, by_pil = (predictor.predict([source], ["great day"])[0]
                                         for source in (path, str(path), data, pil))
    assert by_path == by_str == by_bytes == by_pil


def test_encode_gives_the_model_ready_batch(saved):
    _, predictor, _ = saved
    long_text = " ".join(["sunny"] * 40)
    batch = predictor.encode(images(3), ["hi", long_text, ""])
    assert batch["pixel_values"].shape == (3, 3, 96, 96)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 16)  # truncated to max_text_length
    assert batch["attention_mask"][2].sum() == 2  # an empty text is [CLS] [SEP]
    assert batch["text_truncated"] == [False, True, False]
    assert predictor.predict(images(2), [long_text, "hi"])[0].text_truncated is True


def test_batch_size_does_not_change_predictions(saved):
    _, predictor, _ = saved
    posts, texts = images(5), TEXTS
    one_by_one = predictor.predict(posts, texts, batch_size=1)
    together = predictor.predict(posts, texts, batch_size=16)
    for a, b in zip(one_by_one, together):
        assert a.label == b.label
        assert list(a.probs.values()) == pytest.approx(list(b.probs.values()), abs=1e-5)


def test_threads_can_share_one_predictor(saved):
    _, predictor, _ = saved
    jobs = [([random_image(seed)], [TEXTS[seed % len(TEXTS)]]) for seed in range(8)]
    expected = [predictor.predict(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda job: predictor.predict(*job), jobs)) == expected


def test_bad_inputs_are_refused_clearly(saved):
    _, predictor, _ = saved
    with pytest.raises(ValueError, match="got 2 images but 1 texts"):
        predictor.predict(images(2), ["one"])
    with pytest.raises(TypeError, match="texts must be a list"):
        predictor.predict(images(1), "one")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        predictor.predict(images(2), ["one", None])
    with pytest.raises(ImageError, match="cannot use image <9 bytes>"):
        predictor.predict([b"not a jpg"], ["one"])
    assert predictor.predict([], []) == []


def test_device_defaults_to_cpu_without_cuda(saved):
    _, _, folder = saved
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert Predictor.from_checkpoint(folder).device == torch.device("cpu")
