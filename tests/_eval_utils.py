"""Helpers for the checkpoint / evaluation / inference tests: small models, images, encoder folders."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clara.config import Config, get_preset

TEXTS = [
    "i love this sunny day at the park",
    "what an awful rainy morning on the bus",
    "just a photo of the street today",
    "the best coffee with my friend",
    "terrible traffic again, so sad",
]
# Narrow fusion and heads keep every test model well under a million parameters.
SMALL = {"model.encoders": "tiny", "model.hidden_dim": "32", "model.fusion_heads": "4", "model.fusion": "token"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these modules: their models are tiny, and on a busy 2-core machine a
    second thread makes each matrix product wait on the other (about 10x slower here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(dataset: str = "mvsa_single", **overrides: str) -> Config:
    return get_preset(dataset).override({**SMALL, **overrides})


def build_model(cfg: Config, texts: list[str] | None = None, seed: int = 0, perturb: bool = True):
    """A tiny model in eval mode; `perturb` moves every trainable tensor away from its
    initialisation (LoRA B starts at zero), as training would, so reloads are really checked."""
    from clara.model import create_model

    torch.manual_seed(seed)
    model, tokenizer = create_model(cfg, tokenizer_texts=texts or TEXTS)
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn_like(param))
    return model.eval(), tokenizer


def random_image(seed: int = 0, width: int = 120, height: int = 100) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def model_batch(model: torch.nn.Module, tokenizer, n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels and real token ids, shaped for `model`."""
    size = model.image_stats.size
    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(TEXTS[:n], padding="longest", return_tensors="pt", return_token_type_ids=False)
    return {"pixel_values": torch.randn(n, 3, size, size, generator=generator),
            "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def write_encoder_folders(root: Path, text_hidden: int = 32) -> tuple[Path, Path]:
    """Tiny CLIP-vision and DeBERTa-v2 models saved with save_pretrained (plus the tokenizer),
    standing in for hub downloads: `--encoders published` with local folders."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model

    from clara.model.encoders import train_wordpiece_tokenizer

    vision_dir, text_dir = root / "vision", root / "text"
    torch.manual_seed(123)
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=2))
    vision.save_pretrained(vision_dir)
    tokenizer = train_wordpiece_tokenizer(TEXTS, 400)
    text = DebertaV2Model(DebertaV2Config(vocab_size=len(tokenizer), hidden_size=text_hidden,
                                          intermediate_size=2 * text_hidden, num_hidden_layers=2,
                                          num_attention_heads=2, relative_attention=True, position_buckets=16,
                                          max_position_embeddings=64, pos_att_type=["p2c", "c2p"],
                                          position_biased_input=False, type_vocab_size=0,
                                          pad_token_id=tokenizer.pad_token_id))
    text.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir


def published_config(vision_dir: Path, text_dir: Path, dataset: str = "mvsa_single", **overrides: str) -> Config:
    return get_preset(dataset).override({**SMALL, "model.encoders": "published", "model.vision_encoder": str(vision_dir),
                                         "model.text_encoder": str(text_dir), **overrides})
