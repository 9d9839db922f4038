"""With the real architectures (random weights) and the notebooks' pooled fusion, the parameter
counts equal the ones the CLARA notebooks printed (their *_outputs.txt): this pins the encoder
configs, the LoRA placement and ranks, the unfrozen DeBERTa layer and the fusion/head wiring.

Each random-full model takes ~1.2 GB and a few seconds, so each preset is built once and the
token-fusion counts are derived by swapping the fusion module's size, which is checked exactly.
"""
from __future__ import annotations

import gc
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from clara.config import get_preset
from clara.model import CLARAModel, TokenCoAttentionFusion, build_text_encoder, build_tokenizer, \
    build_vision_encoder, image_stats

# dataset -> (trainable, total) as printed by the notebooks.
PUBLISHED = {
    "mvsa_single": (21_268_231, 285_467_911),
    "hfm": (14_180_359, 285_467_911),
    "mvsa_multiple": (9_848_841, 281_136_393),
}
# The same presets with the paper's token co-attention fusion (measured; the fusion grows from the
# pooled blocks to two bidirectional layers over all tokens).
TOKEN_FUSION = {
    "mvsa_single": (27_572_999, 291_772_679),
    "hfm": (20_485_127, 291_772_679),  # 3-class head as above; the 2-class preset: 20,483,589 / 291,771,141
    "mvsa_multiple": (19_827_209, 291_114_761),
}


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build_random_full(dataset: str, num_classes: int) -> CLARAModel:
    cfg = get_preset(dataset).override({"model.encoders": "random-full", "model.fusion": "pooled"})
    tokenizer = build_tokenizer(cfg.model)
    return CLARAModel(cfg.model, num_classes, build_vision_encoder(cfg.model), build_text_encoder(cfg.model, tokenizer),
                      image_stats(cfg.model))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_random_full_pooled_counts_equal_the_published_ones(dataset):
    # The HFM notebook's printed count only matches a 3-class head (it kept num_classes=3 from the
    # MVSA notebook it was adapted from), so that count is checked with 3 classes; the HFM preset
    # itself builds the correct 2-class head (1,538 fewer trainable parameters).
    torch.manual_seed(0)
    model = _build_random_full(dataset, num_classes=3)
    counts = model.param_counts()
    assert (counts["trainable"], counts["total"]) == PUBLISHED[dataset]

    assert _n_params(model.vision) - sum(p.numel() for n, p in model.vision.named_parameters() if "lora_" in n) \
        == 87_456_000  # CLIP ViT-B/32 vision tower
    lora_text = sum(p.numel() for n, p in model.text.named_parameters() if "lora_" in n)
    assert _n_params(model.text) - lora_text == 183_831_552  # DeBERTa-v3-base, 128,100-row embedding table
    assert lora_text == 3_538_944

    cfg = model.config
    token_fusion = TokenCoAttentionFusion(768, 768, cfg.hidden_dim, cfg.fusion_layers, cfg.fusion_heads)
    delta = _n_params(token_fusion) - _n_params(model.fusion)
    assert (counts["trainable"] + delta, counts["total"] + delta) == TOKEN_FUSION[dataset]
    del model
    gc.collect()


def test_hfm_preset_has_a_two_class_head_with_1538_fewer_parameters():
    # Heads depend only on hidden_dim (512 in every preset), so tiny encoders show the difference.
    from clara.model import create_model

    cfg = get_preset("hfm").override({"model.encoders": "tiny", "model.fusion": "pooled"})
    torch.manual_seed(0)
    two_class, tokenizer = create_model(cfg)
    three_class = CLARAModel(cfg.model, 3, build_vision_encoder(cfg.model), build_text_encoder(cfg.model, tokenizer),
                             image_stats(cfg.model))
    assert two_class.num_classes == 2 and two_class.pred.net[4].out_features == 2
    # pred and veri lose 513 each (512 weights + 1 bias), the feedback input one 512-wide column.
    assert three_class.param_counts()["trainable"] - two_class.param_counts()["trainable"] == 1_538
    two = {name: p.numel() for name, p in two_class.named_parameters()}
    differences = {name: p.numel() - two[name] for name, p in three_class.named_parameters() if p.numel() != two[name]}
    assert differences == {"pred.net.4.weight": 512, "pred.net.4.bias": 1, "veri.net.4.weight": 512,
                           "veri.net.4.bias": 1, "feed.net.0.weight": 512}


def _load_train_cli():
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    spec = importlib.util.spec_from_file_location("train_cli", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_print_params_prints_the_notebooks_counts(dataset, capsys):
    """`train.py --print-params --encoders random-full --fusion pooled` (built on the meta device: no
    memory) prints the notebooks' counts; HFM's 2-class preset prints 1,538 fewer than its notebook's
    3-output heads (test above)."""
    train_cli = _load_train_cli()
    with torch.device("meta"):
        assert train_cli.main(["--dataset", dataset, "--print-params", "--encoders", "random-full",
                               "--fusion", "pooled"]) == 0
    printed = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", capsys.readouterr().out)
    trainable, total = (int(group.replace(",", "")) for group in printed.groups())
    head_difference = 1_538 if dataset == "hfm" else 0
    assert (trainable + head_difference, total + head_difference) == PUBLISHED[dataset]
