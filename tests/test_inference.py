"""Predictor: predictions survive a save/reload exactly, every input form gives the same answer,
the ablation probabilities are the model's, truncation is flagged, threads can share one."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from clara.checkpoint import save_checkpoint
from clara.data.images import ImageError
from clara.inference import Prediction, Predictor
from _eval_utils import TEXTS, build_model, jpeg_bytes, one_thread, random_image, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = tiny_config(**{"data.max_text_length": "16"})
    model, tokenizer = build_model(cfg)
    before = Predictor(model, tokenizer, cfg, cfg.labels, device="cpu")
    folder = save_checkpoint(tmp_path_factory.mktemp("ck") / "clara_best", model, tokenizer, cfg)
    return before, Predictor.from_checkpoint(folder, device="cpu"), folder


def images(n: int) -> list:
    return [random_image(seed) for seed in range(n)]


def test_predictions_after_reload_equal_predictions_before_save(saved):
    before, after, _ = saved
    posts = images(4)
    texts = TEXTS[:3] + [""]
    assert before.predict(posts, texts) == after.predict(posts, texts)


def test_prediction_fields_come_from_the_model(saved):
    _, predictor, _ = saved
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
