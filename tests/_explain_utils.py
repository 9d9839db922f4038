"""Helpers shared by the explanation tests: tiny predictors, a model-state fingerprint, images."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clara.config import Config, get_preset
from clara.train.tiny import TINY_MODEL

TEXTS = [
    "i love this sunny day at the park",
    "what an awful rainy morning on the bus",
    "just a photo of the street today",
    "the best coffee with my friend",
]


# The presets' 512-wide fusion dominates a tiny model's cost; explanations run the model hundreds
# of times, so the tests use a narrow fusion (same code paths).
TINY_FUSION = {**TINY_MODEL, "model.fusion": "token"}


def tiny_config(dataset: str = "mvsa_single", **overrides: str) -> Config:
    return get_preset(dataset).override({**TINY_FUSION, **overrides})


def tiny_predictor(out_dir: Path, cfg: Config | None = None, texts: list[str] | None = None, seed: int = 0):
    """A Predictor over an untrained tiny model, through a real checkpoint folder."""
    from clara.checkpoint import save_checkpoint
    from clara.inference import Predictor
    from clara.model import create_model

    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    model, tokenizer = create_model(cfg, tokenizer_texts=texts or TEXTS)
    save_checkpoint(out_dir, model, tokenizer, cfg)
    return Predictor.from_checkpoint(out_dir)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a 2-core machine shared with other processes, two threads spin
    against each other and the many small forward passes of an explanation run ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Module-wide `single_torch_thread` (session fixtures set up earlier use it themselves)."""
    with single_torch_thread():
        yield


def model_fingerprint(model: torch.nn.Module) -> dict:
    """Everything an explanation must leave as it found it."""
    return {
        "hooks": {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                         len(getattr(m, "_backward_pre_hooks", {})))
                  for name, m in model.named_modules()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad is None for name, p in model.named_parameters()},
        "tensor_hooks": {name: bool(getattr(p, "_backward_hooks", None)) for name, p in model.named_parameters()},
    }


# Training for the learned-property tests: synthetic MVSA-Single whose labels need both cues.
# A direct loop over pre-encoded tensors (the model, Predictor.encode and the CLARA loss are the
# project's own) is ~3x faster than clara.train.loop.train, which re-decodes every image and
# validates and writes two checkpoints every epoch; the loop itself is tested elsewhere.
SYNTHETIC_POSTS = 1100


def trained_synthetic_predictor(root: Path, n_posts: int = SYNTHETIC_POSTS, max_epochs: int = 10,
                                stop_at_val_accuracy: float = 0.95, lr: float = 5e-3, batch_size: int = 64):
    """Train a tiny model; return (predictor, test samples, synthetic meta, summary dict)."""
    from clara.data import load_dataset
    from clara.data.synthetic import read_meta, write_synthetic
    from clara.inference import Predictor
    from clara.model import create_model
    from clara.train.losses import class_weights, clara_loss

    data_dir = root / "data"
    write_synthetic("mvsa_single", data_dir, n_posts, seed=0, quirks=False)
    cfg = tiny_config(**{"data.data_dir": str(data_dir)})
    data = load_dataset("mvsa_single", data_dir, check_images=False)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    torch.manual_seed(0)
    model, tokenizer = create_model(cfg, tokenizer_texts=[s.text for s in train])
    predictor = Predictor(model, tokenizer, cfg, cfg.labels, device="cpu")

    def encoded(samples):
        batch = predictor.encode([s.image_path for s in samples], [s.text for s in samples])
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        return inputs, torch.tensor([s.label for s in samples])

    def accuracy(inputs, labels) -> float:
        with torch.no_grad():
            return float((model(**inputs).logits.argmax(-1) == labels).float().mean())

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = encoded(train), encoded(val), encoded(test)
    weights = class_weights(torch.bincount(train_y, minlength=len(cfg.labels)).tolist(), cfg.labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=cfg.train.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    steps_per_epoch = -(-len(train_y) // batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, steps_per_epoch // 2, steps_per_epoch * max_epochs)
    order = torch.Generator().manual_seed(0)
    history = []
    for epoch in range(max_epochs):
        model.train()
        for index in torch.randperm(len(train_y), generator=order).split(batch_size):
            out = model(**{k: v[index] for k, v in train_x.items()})
            loss, _ = clara_loss(out, train_y[index], weights, cfg.train)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            schedule.step()
        model.eval()
        history.append(accuracy(val_x, val_y))
        if history[-1] >= stop_at_val_accuracy:
            break
    optimizer.zero_grad(set_to_none=True)  # leave no .grad on the weights the explainer uses
    summary = {"epochs": len(history), "val_accuracy": history, "test_accuracy": accuracy(test_x, test_y)}
    return predictor, test, read_meta(data_dir), summary
