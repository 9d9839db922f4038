"""clara.model on tiny encoders: shapes, masking, attention weights, gradients, ablations, loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, DebertaV2Model,
                          PreTrainedTokenizerFast)

from clara.config import ABLATIONS, ModelConfig, get_preset
from clara.model import (CLARAModel, EncoderError, FusionAttentions, ImageStats, build_text_encoder,
                         build_tokenizer, create_model, image_stats)
from clara.model.encoders import TINY_VISION_SIZES, _deberta_v3_config
from clara.model.fusion import cross_attention

TEXTS = ["A happy dog on the sunny beach!", "sad rainy day", "the red car is parked", "i love this so much",
         "worst day ever, so annoying", "a photo of the city"]
N_IMAGE_TOKENS = 1 + (96 // 16) ** 2  # tiny CLIP: CLS + 6x6 patches


def tiny_config(dataset: str = "mvsa_single", **overrides: str):
    small = {"model.encoders": "tiny", "model.hidden_dim": "32", "model.fusion_heads": "4", "model.fusion": "token"}
    return get_preset(dataset).override({**small, **overrides})


def build(cfg, seed: int = 0) -> tuple[CLARAModel, PreTrainedTokenizerFast]:
    torch.manual_seed(seed)
    model, tokenizer = create_model(cfg, tokenizer_texts=TEXTS)
    return model.eval(), tokenizer


def make_batch(tokenizer, texts=("a happy dog on the sunny beach with friends", "sad", "the red car"),
               image_seed: int = 0) -> dict[str, torch.Tensor]:
    encoded = tokenizer(list(texts), padding=True, return_tensors="pt")
    pixels = torch.randn(len(texts), 3, 96, 96, generator=torch.Generator().manual_seed(image_seed))
    return {"pixel_values": pixels, "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@pytest.fixture(scope="module")
def shared_model():
    """Models in eval mode, built once per (dataset, fusion), for tests that only run forward passes
    (or take gradients with torch.autograd.grad, which leaves .grad alone)."""
    cache: dict[tuple[str, str], tuple[CLARAModel, PreTrainedTokenizerFast]] = {}

    def get(dataset: str = "mvsa_single", fusion: str = "token"):
        if (dataset, fusion) not in cache:
            cache[dataset, fusion] = build(tiny_config(dataset, **{"model.fusion": fusion}))
        return cache[dataset, fusion]
    return get


@pytest.fixture(scope="module")
def token_model(shared_model):
    return shared_model()


VARIANTS = [("token", "mvsa_single"), ("token", "mvsa_multiple"), ("pooled", "mvsa_single"),
            ("pooled", "mvsa_multiple"), ("token", "hfm")]


@pytest.mark.parametrize("fusion,dataset", VARIANTS)
def test_output_shapes_probabilities_and_attentions(shared_model, fusion, dataset):
    model, tokenizer = shared_model(dataset, fusion)
    batch = make_batch(tokenizer)
    n_classes = len(get_preset(dataset).labels)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    batch_size, n_text = batch["input_ids"].shape
    for logits in (out.logits, out.pred_logits, out.verify_logits, out.probs):
        assert logits.shape == (batch_size, n_classes)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(batch_size))
    torch.testing.assert_close(out.probs, out.logits.softmax(-1))
    assert out.uncertainty.shape == (batch_size,)
    assert ((out.uncertainty >= 0) & (out.uncertainty <= 1)).all()
    if fusion == "pooled":
        assert out.attentions is None
        return
    assert isinstance(out.attentions, FusionAttentions)
    assert len(out.attentions.text_to_image) == len(out.attentions.image_to_text) == 2
    for t2i, i2t in zip(out.attentions.text_to_image, out.attentions.image_to_text):
        assert t2i.shape == (batch_size, 4, n_text, N_IMAGE_TOKENS)
        assert i2t.shape == (batch_size, 4, N_IMAGE_TOKENS, n_text)


def test_submodule_names_follow_the_notebooks(shared_model):
    single, _ = shared_model("mvsa_single", "pooled")
    multiple, _ = shared_model("mvsa_multiple", "pooled")
    single_keys, multiple_keys = set(single.state_dict()), set(multiple.state_dict())
    for key in ["vision.backbone.encoder.layers.0.self_attn.q_proj.lora_A.default.weight",
                "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight",
                "text.base_model.model.encoder.layer.0.attention.self.query_proj.lora_B.default.weight",
                "fusion.v_proj.weight", "fusion.t_proj.bias", "fusion.blocks.1.attn.in_proj_weight",
                "fusion.blocks.0.attn.out_proj.bias", "fusion.blocks.0.norm1.weight", "fusion.blocks.0.ffn.0.weight",
                "fusion.blocks.0.ffn.3.bias", "fusion.blocks.1.norm2.bias", "pred.net.0.weight", "pred.net.1.weight",
                "pred.net.4.bias", "veri.net.4.weight", "unc.net.0.weight", "unc.net.3.bias", "feed.net.0.weight",
                "feed.net.1.bias", "feed.net.4.weight"]:
        assert key in single_keys, key
    assert not any(k.startswith(("final.", "fusion.cross")) for k in single_keys)
    for key in ["fusion.cross.1.in_proj_weight", "fusion.cross.0.out_proj.weight", "fusion.norms.3.weight",
                "fusion.fuse.0.weight", "fusion.fuse.1.bias", "pred.0.weight", "pred.1.weight", "pred.4.bias",
                "veri.4.weight", "feed.0.weight", "feed.1.bias", "final.weight", "final.bias"]:
        assert key in multiple_keys, key
    assert not any(k.startswith("unc.") for k in multiple_keys)  # the notebook has no uncertainty weights
    # "multiple" wiring: 256-wide heads in the preset (here head_hidden_dim stays 256), feedback on H + C inputs.
    assert multiple.pred[0].out_features == 256 and multiple.feed[0].in_features == 32 + 3


def test_attention_rows_sum_to_one_and_padded_text_keys_get_exactly_zero(token_model):
    model, tokenizer = token_model
    batch = make_batch(tokenizer)
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions
    padding = batch["attention_mask"] == 0
    assert padding.any(), "the batch must contain padding for this test to mean anything"
    for t2i, i2t in zip(attentions.text_to_image, attentions.image_to_text):
        torch.testing.assert_close(t2i.sum(-1), torch.ones(t2i.shape[:-1]))
        torch.testing.assert_close(i2t.sum(-1), torch.ones(i2t.shape[:-1]))
        padded_key_weights = i2t.permute(0, 3, 1, 2)[padding]  # [n_padded, heads, P]
        assert torch.equal(padded_key_weights, torch.zeros_like(padded_key_weights))
        assert (i2t.permute(0, 3, 1, 2)[~padding] > 0).all()


def test_fast_path_and_attention_path_give_the_same_outputs(token_model):
    model, tokenizer = token_model
    batch = make_batch(tokenizer)
    with torch.no_grad():
        fast = model(**batch)
        explicit = model(**batch, output_attentions=True)
    assert fast.attentions is None
    torch.testing.assert_close(fast.logits, explicit.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.uncertainty, explicit.uncertainty, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_computes_what_torch_multihead_attention_computes(need_weights):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    query, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    expected, expected_weights = attn(query, context, context, key_padding_mask=padding, need_weights=True,
                                      average_attn_weights=False)
    out, weights = cross_attention(attn, query, context, padding, need_weights=need_weights)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    else:
        assert weights is None


@pytest.mark.parametrize("fusion", ["token", "pooled"])
def test_padding_token_ids_do_not_change_the_outputs(shared_model, fusion):
    model, tokenizer = shared_model("mvsa_single", fusion)
    batch = make_batch(tokenizer)
    padding = batch["attention_mask"] == 0
    altered_ids = batch["input_ids"].clone()
    generator = torch.Generator().manual_seed(3)
    altered_ids[padding] = torch.randint(5, len(tokenizer), (int(padding.sum()),), generator=generator)
    assert not torch.equal(altered_ids, batch["input_ids"])
    with torch.no_grad():
        original = model(**batch)
        altered = model(**{**batch, "input_ids": altered_ids})
    torch.testing.assert_close(altered.logits, original.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(altered.uncertainty, original.uncertainty, atol=1e-5, rtol=1e-5)


def _trainable_prefix_ok(name: str, last_text_layer: int | None) -> bool:
    if "lora_" in name or name.startswith(("fusion.", "pred.", "veri.", "unc.", "feed.", "final.")):
        return True
    return last_text_layer is not None and name.startswith(f"text.base_model.model.encoder.layer.{last_text_layer}.")


@pytest.mark.parametrize("dataset", ["mvsa_single", "mvsa_multiple"])
def test_gradients_reach_lora_and_trainable_parts_but_not_frozen_base_weights(dataset):
    model, tokenizer = build(tiny_config(dataset))
    model.train()
    out = model(**make_batch(tokenizer))
    (out.logits.sum() + out.pred_logits.sum() + out.verify_logits.sum() + out.uncertainty.sum()).backward()
    last_layer = 1 if dataset == "mvsa_single" else None  # MVSA-Single unfreezes the last of the 2 layers
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert param.requires_grad == _trainable_prefix_ok(name, last_layer), name
        if param.requires_grad:
            assert param.grad is not None, f"no gradient reached {name}"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    for tower in ("vision.", "text."):
        lora_b = [p for n, p in params.items() if n.startswith(tower) and "lora_B" in n]
        assert lora_b and all(p.grad.abs().sum() > 0 for p in lora_b)
    frozen_lora_base = params["text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight"]
    assert not frozen_lora_base.requires_grad
    if last_layer is not None:
        unfrozen = params["text.base_model.model.encoder.layer.1.attention.self.query_proj.base_layer.weight"]
        assert unfrozen.requires_grad and unfrozen.grad.abs().sum() > 0


def test_multiple_variant_feeds_back_detached_probabilities():
    model, tokenizer = build(tiny_config("mvsa_multiple"))
    model(**make_batch(tokenizer)).logits.sum().backward()
    # The final logits reach the fused vector through `feed`, but not the heads (detached probabilities).
    assert all(p.grad is None for p in model.veri.parameters())
    assert all(p.grad is None for p in model.pred.parameters())
    assert model.final.weight.grad is not None and model.feed[0].weight.grad is not None


def test_gradients_with_respect_to_the_returned_attention_weights_are_nonzero(token_model):
    model, tokenizer = token_model
    out = model(**make_batch(tokenizer), output_attentions=True)
    attention_tensors = out.attentions.text_to_image + out.attentions.image_to_text
    assert all(a.requires_grad for a in attention_tensors)
    grads = torch.autograd.grad(out.logits[:, 0].sum(), attention_tensors)
    for grad in grads:
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_runs(token_model, ablation):
    model, tokenizer = token_model
    batch = make_batch(tokenizer)
    with torch.no_grad():
        full = model(**batch)
        out = model(**batch, ablation=ablation, output_attentions=True)
    assert out.logits.shape == full.logits.shape and out.uncertainty.shape == full.uncertainty.shape
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(len(out.probs)))
    assert not torch.allclose(out.logits, full.logits)
    if ablation in ("no_verification", "no_feedback"):
        assert torch.equal(out.logits, out.pred_logits)
        torch.testing.assert_close(out.pred_logits, full.pred_logits)
    assert (out.verify_logits is None) == (ablation == "no_verification")
    assert (out.attentions is None) == (ablation in ("text_only", "image_only", "no_coattention"))


def test_text_only_ignores_the_image_and_image_only_ignores_the_text(token_model):
    model, tokenizer = token_model
    batch = make_batch(tokenizer, image_seed=0)
    other_image = make_batch(tokenizer, image_seed=1)
    other_text = make_batch(tokenizer, texts=("worst day ever so annoying", "i love this", "a photo"))
    assert other_text["input_ids"].shape != batch["input_ids"].shape or \
        not torch.equal(other_text["input_ids"], batch["input_ids"])
    with torch.no_grad():
        def logits(inputs, ablation=None):
            return model(**inputs, ablation=ablation).logits
        torch.testing.assert_close(logits(batch, "text_only"), logits(other_image, "text_only"), atol=0, rtol=0)
        image_batch_with_other_text = {**other_text, "pixel_values": batch["pixel_values"]}
        torch.testing.assert_close(logits(batch, "image_only"), logits(image_batch_with_other_text, "image_only"),
                                   atol=0, rtol=0)
        # ...while the full model sees both.
        assert not torch.allclose(logits(batch), logits(other_image))
        assert not torch.allclose(logits(batch), logits(image_batch_with_other_text))


def test_config_ablation_is_the_default_and_unknown_ablations_are_refused():
    model, tokenizer = build(tiny_config(**{"model.ablation": "text_only"}))
    batch = make_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**make_batch(tokenizer, image_seed=5)).logits)
    with pytest.raises(ValueError, match="ablation 'no_text' is not one of: text_only, image_only"):
        model(**batch, ablation="no_text")


def test_same_seed_gives_the_same_model_and_encoder_weights_do_not_depend_on_it():
    cfg = tiny_config()
    first, second, other_seed = build(cfg, seed=7)[0], build(cfg, seed=7)[0], build(cfg, seed=8)[0]
    a, b, c = first.state_dict(), second.state_dict(), other_seed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base_key = "text.base_model.model.encoder.layer.0.attention.self.query_proj.base_layer.weight"
    assert torch.equal(a[base_key], c[base_key])
    assert torch.equal(a["vision.backbone.embeddings.patch_embedding.weight"],
                       c["vision.backbone.embeddings.patch_embedding.weight"])
    assert not torch.equal(a["fusion.v_proj.weight"], c["fusion.v_proj.weight"])


def test_tiny_encoders_follow_the_v3_text_settings_and_report_image_stats(token_model):
    model, tokenizer = token_model
    text_config = model.text.config
    assert text_config.vocab_size == len(tokenizer)
    assert text_config.relative_attention and text_config.position_biased_input is False
    assert text_config.pos_att_type == ["p2c", "c2p"] and text_config.norm_rel_ebd == "layer_norm"
    assert (text_config.hidden_size, text_config.num_hidden_layers, text_config.num_attention_heads) == (64, 2, 4)
    stats = model.image_stats
    assert stats == ImageStats(96, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 16)
    assert (stats.grid_size, stats.n_tokens) == (6, N_IMAGE_TOKENS)
    assert model.vision.backbone.config.image_size == TINY_VISION_SIZES["image_size"]


def test_random_full_image_stats_follow_the_named_patch_size():
    cfg = get_preset("mvsa_single").override({"model.encoders": "random-full"})
    assert (image_stats(cfg.model).size, image_stats(cfg.model).patch_size, image_stats(cfg.model).grid_size) == \
        (224, 32, 7)
    patch16 = cfg.override({"model.vision_encoder": "openai/clip-vit-base-patch16"})
    assert (image_stats(patch16.model).patch_size, image_stats(patch16.model).grid_size) == (16, 14)


def test_tokenizer_is_lowercase_deterministic_and_reloads(tmp_path):
    tokenizer = build_tokenizer(ModelConfig(encoders="tiny"), TEXTS)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A HAPPY Dog zzqx")["input_ids"])
    assert tokens == ["[CLS]", "a", "happy", "dog", "z", "##z", "##q", "##x", "[SEP]"]
    assert [tokenizer.pad_token, tokenizer.cls_token, tokenizer.sep_token, tokenizer.unk_token,
            tokenizer.mask_token] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    assert tokenizer.pad_token_id == 0
    # The tokenizers library's trainers give different vocabularies in different processes (hash-map
    # order breaks ties); ours is a function of the word counts alone, whatever the text order.
    shuffled = [TEXTS[i] for i in (3, 0, 5, 1, 4, 2)]
    assert build_tokenizer(ModelConfig(encoders="tiny"), shuffled).get_vocab() == tokenizer.get_vocab()
    assert tokenizer.get_vocab()["[PAD]"] == 0 and tokenizer.get_vocab()["[MASK]"] == 4
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("A happy dog zzqx")["input_ids"] == tokenizer("A happy dog zzqx")["input_ids"]


def test_builtin_corpus_is_used_without_texts():
    cfg = tiny_config()
    tokenizer = build_tokenizer(cfg.model)
    assert "happy" in tokenizer.get_vocab() and len(tokenizer) < 4000
    model, _ = create_model(cfg)
    assert model.text.config.vocab_size == len(tokenizer)


def _save_published_like_folders(tmp_path, with_processor: bool):
    vision_dir, text_dir = tmp_path / "clip", tmp_path / "deberta"
    torch.manual_seed(11)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_SIZES))
    clip.save_pretrained(vision_dir)
    if with_processor:
        CLIPImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.2], crop_size=96,
                           size={"shortest_edge": 96}).save_pretrained(vision_dir)
    tokenizer = build_tokenizer(tiny_config().model, TEXTS)
    deberta = DebertaV2Model(_deberta_v3_config(len(tokenizer) + 10, tokenizer.pad_token_id, hidden_size=64,
                                                intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                                position_buckets=32))
    deberta.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir, clip, deberta


def test_published_encoders_load_from_local_folders(tmp_path):
    vision_dir, text_dir, clip, deberta = _save_published_like_folders(tmp_path, with_processor=True)
    cfg = tiny_config(**{"model.encoders": "published", "model.vision_encoder": str(vision_dir),
                         "model.text_encoder": str(text_dir)})
    model, tokenizer = build(cfg)
    expected_ids = build_tokenizer(tiny_config().model, TEXTS)("a happy dog")["input_ids"]
    assert tokenizer("a happy dog")["input_ids"] == expected_ids
    state = model.state_dict()
    assert torch.equal(state["vision.backbone.encoder.layers.0.self_attn.q_proj.base_layer.weight"],
                       clip.state_dict()["encoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(state["text.base_model.model.encoder.layer.1.attention.self.key_proj.base_layer.weight"],
                       deberta.state_dict()["encoder.layer.1.attention.self.key_proj.weight"])
    assert model.text.config.vocab_size == len(tokenizer) + 10
    assert model.image_stats == ImageStats(96, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 16)
    with torch.no_grad():
        out = model(**make_batch(tokenizer), output_attentions=True)
    assert out.logits.shape == (3, 3) and out.attentions.text_to_image[0].shape[-1] == N_IMAGE_TOKENS
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text.base_model.model.encoder.layer.1.attention.self.key_proj.base_layer.weight" in trainable
    assert "vision.backbone.encoder.layers.0.self_attn.q_proj.base_layer.weight" not in trainable


def test_published_folder_without_processor_config_uses_openai_statistics(tmp_path):
    vision_dir, _, _, _ = _save_published_like_folders(tmp_path, with_processor=False)
    cfg = tiny_config(**{"model.encoders": "published", "model.vision_encoder": str(vision_dir)})
    assert image_stats(cfg.model) == ImageStats(96, (0.48145466, 0.4578275, 0.40821073),
                                                (0.26862954, 0.26130258, 0.27577711), 16)


def test_a_missing_encoder_folder_names_the_field(tmp_path):
    missing = tmp_path / "no_such_model"
    cfg = tiny_config(**{"model.encoders": "published", "model.vision_encoder": str(missing)})
    expected = r"(?s)vision encoder from model\.vision_encoder='.*no_such_model': no such folder\..*--encoders tiny"
    with pytest.raises(EncoderError, match=expected):
        create_model(cfg, tokenizer=build_tokenizer(tiny_config().model, TEXTS))


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    _, text_dir, _, _ = _save_published_like_folders(tmp_path, with_processor=False)
    cfg = tiny_config(**{"model.encoders": "published", "model.text_encoder": str(text_dir)})
    big_tokenizer = build_tokenizer(tiny_config().model, TEXTS + [f"word{i} extra{i}x" for i in range(40)])
    with pytest.raises(EncoderError, match="tokenizer has .* tokens but the text encoder .* embeds only"):
        build_text_encoder(cfg.model, big_tokenizer)


def test_gradient_checkpointing_option_trains_the_same_parameters():
    plain, tokenizer = build(tiny_config())
    checkpointed, _ = build(tiny_config(**{"model.gradient_checkpointing": "true"}))
    batch = make_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(**batch).logits, plain(**batch).logits)
    checkpointed.train()
    checkpointed(**batch).logits.sum().backward()
    lora_b = [p for n, p in checkpointed.named_parameters() if "lora_B" in n and n.startswith("text.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
