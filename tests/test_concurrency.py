"""One cached model, several app sessions at once (issue 7, "Concurrency").

The app keeps one `Predictor` per checkpoint in `st.cache_resource` (clara_app/state.py `_load_predictor`),
shared by every browser session, and builds a cheap `Explainer` around it per request
(`explainer_for`). Streamlit runs each session's script in its own thread, so this test does the
same with a thread pool: one Predictor (the committed demo checkpoint), one Explainer, 8 jobs,
each a different post, each predicting and explaining with every method the app offers (the
Attention page: attention + relevancy; the Attributions page: text LIG, which hooks the text
embedding block, image IG, occlusion, modality share and deletion curves).

Every concurrent result must equal the sequential one EXACTLY: each thread runs its own
forward/backward passes on its own tensors with the same shapes and the same intra-op thread count
as the sequential run, so PyTorch performs the same float operations in the same order; any
difference would mean one thread saw another's state (a hook, a mode switch, a buffer). Afterwards
no hook may remain on any module, and the model's weights, modes and outputs are unchanged.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from _app_utils import DEMO_CHECKPOINT, require_demo
from _explain_utils import model_fingerprint, random_image, single_torch_thread
from clara.explain import Explainer
from clara.inference import Predictor

# What the app's pages ask for (pages/attention.py, pages/attributions.py with deletion on).
APP_METHODS = ["attention", "relevancy", "text_ig", "image_ig", "occlusion", "modality_share", "deletion"]
WORDS = ["sunny", "awful", "street", "coffee", "friend", "rain", "best", "bus", "park", "morning", "happy", "late"]
N_JOBS = 8
N_THREADS = 4


def _posts() -> list[tuple[object, str]]:
    """Different images (sizes, content) and texts per job; one text is longer than the model reads."""
    posts = []
    for index in range(N_JOBS):
        text = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(3 + index % 4))
        if index == N_JOBS - 1:
            text = " ".join(WORDS * 30)  # over max_text_length tokens: truncated, and flagged
        posts.append((random_image(40 + 7 * index, 90 - 3 * index, seed=index), text))
    return posts


def _all_hooks(model: nn.Module) -> dict[str, int]:
    """Modules that carry any hook (forward, forward-pre, backward, backward-pre, with kwargs)."""
    found = {}
    for name, module in model.named_modules():
        count = sum(len(getattr(module, attr, {}) or {}) for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
            "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"))
        if count:
            found[name or "<root>"] = count
    return found


def _global_hooks() -> int:
    from torch.nn.modules import module as torch_module
    return sum(len(getattr(torch_module, attr, {}) or {}) for attr in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def _plain(value):
    """An Explanation/Prediction as nested plain values, timings dropped (they differ by design)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "timings"}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return value


@pytest.fixture(scope="module")
def shared():
    require_demo()
    with single_torch_thread():
        predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
        # Few IG steps and deletion points keep the 24 explanations within ~30 s; the code paths are the app's.
        explainer = Explainer(predictor, n_steps=8, internal_batch_size=8, deletion_points=6)
        yield predictor, explainer


def test_concurrent_predictions_and_explanations_equal_sequential_ones(shared):
    predictor, explainer = shared
    model = predictor.model
    posts = _posts()
    probe = predictor.encode([p[0] for p in posts[:4]], [p[1] for p in posts[:4]])
    probe_inputs = {k: probe[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    def job(post):
        image, text = post
        [prediction] = predictor.predict([image], [text])
        explanation = explainer.explain(image, text, methods=APP_METHODS)
        return prediction, explanation

    with single_torch_thread():
        assert _all_hooks(model) == {} and _global_hooks() == 0
        before = model_fingerprint(model)
        state_before = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.inference_mode(), predictor.autocast():  # the precision the predictor runs its model at
            logits_before = model(**probe_inputs).logits.clone()

        sequential = [job(post) for post in posts]
        with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
            concurrent = list(pool.map(job, posts))
        # and once more with the jobs in another order, so different pairs overlap
        with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
            reversed_order = list(pool.map(job, posts[::-1]))[::-1]

        with torch.inference_mode(), predictor.autocast():  # the precision the predictor runs its model at
            logits_after = model(**probe_inputs).logits.clone()

    # the jobs really differ, and every method was computed (nothing skipped)
    assert len({round(p.probs[p.label], 9) for p, _ in sequential}) == N_JOBS
    assert sequential[-1][0].text_truncated and sequential[-1][1].text_truncated
    assert not any(p.text_truncated for p, _ in sequential[:-1])
    for _, explanation in sequential:
        assert explanation.skipped == {}
        assert explanation.attention is not None and explanation.relevancy is not None
        assert explanation.text_ig is not None and explanation.image_ig is not None
        assert explanation.occlusion is not None and explanation.modality_share is not None
        assert len(explanation.deletion) > 0

    for index, ((p_seq, e_seq), (p_con, e_con), (p_rev, e_rev)) in enumerate(zip(sequential, concurrent,
                                                                                  reversed_order)):
        assert p_con == p_seq and p_rev == p_seq, f"job {index}: prediction differs"
        assert _plain(e_con) == _plain(e_seq), f"job {index}: explanation differs when run concurrently"
        assert _plain(e_rev) == _plain(e_seq), f"job {index}: explanation differs (reversed order)"

    # nothing left behind on the shared model
    assert _all_hooks(model) == {}, "hooks left on the shared model"
    assert _global_hooks() == 0
    assert model_fingerprint(model) == before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    assert not model.training
    assert torch.equal(logits_after, logits_before)


def test_concurrent_batch_predictions_equal_sequential_ones(shared):
    """The Batch page: several sessions predict whole CSVs at once through the same Predictor."""
    predictor, _ = shared
    posts = _posts()
    batches = [posts[i:i + 5] for i in range(0, N_JOBS, 2)]

    def job(batch):
        return predictor.predict([p[0] for p in batch], [p[1] for p in batch], batch_size=3)

    with single_torch_thread():
        sequential = [job(batch) for batch in batches]
        with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
            concurrent = list(pool.map(job, batches))
    assert concurrent == sequential
    assert _all_hooks(predictor.model) == {}
