"""Encoders by name (issue 16): every architecture of clara/model/backbones.py, as a tiny local folder
with random weights (the published path: a hub id or a folder, dispatched by model_type), trains one
epoch, reloads from its checkpoint, predicts and runs every explanation method; unknown
architectures get a one-line error naming the field to set."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers import SentencePieceUnigramTokenizer, processors
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import (BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model,
                          PreTrainedTokenizerFast, RobertaConfig, RobertaModel, SiglipConfig, SiglipImageProcessor,
                          SiglipModel, SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel, XLMRobertaConfig,
                          XLMRobertaModel)

from _explain_utils import one_torch_thread  # noqa: F401
from clara.config import ModelConfig, get_preset
from clara.data import load_dataset
from clara.data.synthetic import write_synthetic
from clara.explain import Explainer
from clara.explain.settings import METHODS
from clara.inference import Predictor
from clara.model import EncoderError, build_text_encoder, build_vision_encoder, create_model, image_stats
from clara.model.backbones import TEXT_BACKBONES, VISION_BACKBONES
from clara.model.encoders import train_wordpiece_tokenizer

MAX_TEXT_LENGTH = 32
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
VISION = dict(image_size=32, patch_size=8, **TOWER)  # a 4x4 patch grid
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ROBERTA_SPECIALS = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                        cls_token="<s>", sep_token="</s>")


def _fast_tokenizer(backend, folder: Path, **specials: str) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=MAX_TEXT_LENGTH, **specials)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _roberta_style(backend, folder: Path) -> PreTrainedTokenizerFast:
    ids = [(token, backend.token_to_id(token)) for token in ("<s>", "</s>")]
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=ids)
    return _fast_tokenizer(backend, folder, **ROBERTA_SPECIALS)


def make_text_folder(kind: str, folder: Path, texts: list[str]) -> None:
    """A tokenizer trained on `texts` and a random 2-layer model of architecture `kind`, saved as from the hub."""
    sizes = dict(**TOWER, max_position_embeddings=MAX_TEXT_LENGTH + 8)
    if kind == "deberta-v2":  # DeBERTa-v3's settings (relative attention, no absolute positions)
        tokenizer = train_wordpiece_tokenizer(texts, 400)
        tokenizer.save_pretrained(folder)
        model = DebertaV2Model(DebertaV2Config(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, relative_attention=True,
            max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
            position_biased_input=False, type_vocab_size=0, position_buckets=16, **sizes))
    elif kind == "roberta":  # byte-level BPE, as roberta-base
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
        tokenizer = _roberta_style(bpe._tokenizer, folder)
        model = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes))
    elif kind == "xlm-roberta":  # sentencepiece unigram, as xlm-roberta-base
        unigram = SentencePieceUnigramTokenizer()
        unigram.train_from_iterator(texts, vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
        tokenizer = _roberta_style(unigram._tokenizer, folder)
        model = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                 **sizes))
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)


def make_vision_folder(kind: str, folder: Path) -> None:
    """A random 2-layer vision tower: CLIP's alone, SigLIP's alone with its image processor, or
    SigLIP's inside a checkpoint of both towers (what google/siglip-* are)."""
    if kind == "clip":
        CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(folder)
    elif kind == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**VISION)).save_pretrained(folder)
        SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6]).save_pretrained(folder)
    elif kind == "siglip-full":
        both = SiglipConfig(vision_config=VISION, text_config=dict(**TOWER, vocab_size=64))
        SiglipModel(both).save_pretrained(folder)
    else:
        raise ValueError(kind)


# Every named architecture at least once; the vision folders of each kind.
PAIRS = [("clip", "roberta"), ("siglip", "deberta-v2"), ("siglip-full", "xlm-roberta")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("backbones") / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=3, quirks=False)
    texts = [sample.text for sample in load_dataset("mvsa_single", data_dir, check_images=False).splits["train"]]
    return data_dir, texts


def _config(data_dir: Path, vision: Path, text: Path, out_dir: Path, **changes: str):
    return get_preset("mvsa_single").override({
        "model.encoders": "published", "model.vision_encoder": str(vision), "model.text_encoder": str(text),
        "model.fusion": "token", "model.hidden_dim": "32", "model.fusion_heads": "4", "model.fusion_layers": "1",
        "data.data_dir": str(data_dir), "data.max_text_length": str(MAX_TEXT_LENGTH), "data.check_images": "false",
        "train.epochs": "1", "train.batch_size": "8", "train.eval_batch_size": "64", "train.calibrate": "false",
        "train.output_dir": str(out_dir), **changes})


def test_the_table_names_every_architecture_of_the_issue():
    assert set(VISION_BACKBONES) == {"clip_vision_model", "siglip_vision_model"}
    assert set(TEXT_BACKBONES) == {"deberta-v2", "roberta", "xlm-roberta"}
    assert VISION_BACKBONES["clip_vision_model"].cls_token and not VISION_BACKBONES["siglip_vision_model"].cls_token


@pytest.mark.parametrize("vision_kind,text_kind", PAIRS)
def test_each_architecture_trains_reloads_predicts_and_explains(vision_kind, text_kind, synthetic, tmp_path):
    from clara.train import train

    data_dir, texts = synthetic
    vision, text = tmp_path / vision_kind, tmp_path / text_kind
    make_vision_folder(vision_kind, vision)
    make_text_folder(text_kind, text, texts)
    result = train(_config(data_dir, vision, text, tmp_path / "out"), progress=False)

    # The checkpoint records the targets resolved for the architecture and stores their adapters.
    info = json.loads((result.best_dir / "config.json").read_text())
    assert info["weights"] == "trainable"
    targets = info["config"]["model"]["text_lora_targets"]
    assert tuple(targets) == TEXT_BACKBONES[text_kind].lora_targets
    with safe_open(str(result.best_dir / "model.safetensors"), framework="pt") as stored:
        keys = list(stored.keys())
    for target in targets:
        assert any(f".{target}.lora_A." in key and key.startswith("text.") for key in keys), target
    assert any(".q_proj.lora_A." in key and key.startswith("vision.") for key in keys)
    if text_kind == "roberta":  # --resume compares the settings through the same resolved targets: the
        from clara.train.resume import RunAlreadyFinished  # finished run is recognised, not "settings differ"
        with pytest.raises(RunAlreadyFinished):
            train(_config(data_dir, vision, text, tmp_path / "out"), progress=False, resume=True)

    predictor = Predictor.from_checkpoint(result.best_dir, device="cpu", precision="fp32")
    names = [name for name, _ in predictor.model.named_parameters()]
    assert not any(".head." in name or ".pooler." in name for name in names)  # SigLIP's head, RoBERTa's pooler
    stats = predictor.model.image_stats
    assert (stats.size, stats.patch_size, stats.cls_token) == (32, 8, vision_kind == "clip")
    if vision_kind == "siglip":  # the folder's image processor gives the statistics
        assert stats.mean == (0.4, 0.5, 0.6) and stats.std == (0.5, 0.5, 0.5)
    samples = load_dataset("mvsa_single", data_dir, check_images=False).splits["test"][:2]
    images, posts = [s.image_path for s in samples], [s.text for s in samples]
    first, second = predictor.predict(images, posts), predictor.predict(images, posts)
    assert [p.probs for p in first] == [p.probs for p in second]
    for prediction in first:
        assert sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-5)

    explanation = Explainer(predictor, n_steps=8, deletion_points=5, deletion_random_orders=1).explain(
        images[0], posts[0], methods=METHODS)
    assert explanation.skipped == {}
    n_tokens, grid = len(explanation.tokens), explanation.grid_size
    assert grid == 4 and n_tokens == int(predictor.encode(images[:1], posts[:1])["attention_mask"].sum())
    # Words line up with their tokens: each word is what its tokens spell.
    assert explanation.words == posts[0].split()
    tokenizer = predictor.tokenizer
    for index, word in enumerate(explanation.words):
        pieces = [explanation.tokens[t] for t in np.flatnonzero(explanation.token_to_word == index)]
        assert tokenizer.convert_tokens_to_string(pieces).strip() == word.lower(), (word, pieces)

    text_ig, image_ig, occlusion = explanation.text_ig, explanation.image_ig, explanation.occlusion
    assert text_ig.token_scores.shape == (n_tokens,) and text_ig.word_scores.shape == (len(explanation.words),)
    assert text_ig.layer.endswith(".embeddings")
    assert image_ig.pixel_scores.shape == (32, 32) and image_ig.patch_scores.shape == (grid, grid)
    assert occlusion.patch_scores.shape == (grid, grid)
    attention, relevancy = explanation.attention, explanation.relevancy
    assert attention.text_to_image.shape == (1, 4, n_tokens, grid, grid)
    assert attention.image_to_text.shape[-2:] == (grid * grid + int(stats.cls_token), n_tokens)
    assert (attention.text_to_image_cls is not None) == stats.cls_token
    assert relevancy.layers == {"vision_self_attention": 2, "text_self_attention": 2, "co_attention": 1}
    assert relevancy.patch_scores.shape == (grid, grid) and relevancy.token_scores.shape == (n_tokens,)
    assert (relevancy.cls_score is not None) == stats.cls_token
    for self_relevancy in (relevancy.image_image, relevancy.text_text):  # every token was mixed by its encoder
        assert ((self_relevancy - np.eye(len(self_relevancy))).sum(axis=1) > 0).all()
    arrays = [text_ig.token_scores, image_ig.pixel_scores, occlusion.patch_scores, attention.text_to_image,
              relevancy.patch_scores, relevancy.word_scores, relevancy.text_image]
    assert all(np.isfinite(array).all() for array in arrays)
    assert 0.0 <= explanation.modality_share.text <= 1.0
    assert explanation.deletion and all(np.isfinite(curve.probs).all() for curve in explanation.deletion)


def test_an_unknown_text_architecture_needs_its_lora_targets(synthetic, tmp_path):
    data_dir, texts = synthetic
    vision, text = tmp_path / "clip", tmp_path / "bert"
    make_vision_folder("clip", vision)
    tokenizer = train_wordpiece_tokenizer(texts, 400)
    tokenizer.save_pretrained(text)
    BertModel(BertConfig(vocab_size=len(tokenizer), **TOWER)).save_pretrained(text)
    cfg = _config(data_dir, vision, text, tmp_path / "out")
    with pytest.raises(EncoderError, match=r"is a 'bert' model, for which clara has no LoRA targets: set "
                                           r"model\.text_lora_targets") as caught:
        create_model(cfg)
    assert "\n" not in str(caught.value)
    # Set by hand, they are used; peft's all-linear is the other way out.
    model, _ = create_model(cfg.override({"model.text_lora_targets": "query,value"}))
    assert model.config.text_lora_targets == ("query", "value")
    text_model = build_text_encoder(dataclasses.replace(cfg.model, text_lora_targets=("all-linear",)))
    wrapped = {name.split(".lora_A.")[0] for name, _ in text_model.named_parameters() if ".lora_A." in name}
    assert any(name.endswith("intermediate.dense") for name in wrapped)


def test_an_unknown_vision_architecture_is_refused_in_one_line(tmp_path):
    ViTModel(ViTConfig(image_size=32, patch_size=8, **TOWER)).save_pretrained(tmp_path / "vit")
    cfg = ModelConfig(encoders="published", vision_encoder=str(tmp_path / "vit"))
    for build in (build_vision_encoder, image_stats):
        with pytest.raises(EncoderError, match=r"model\.vision_encoder=.* is a 'vit' model; clara reads these "
                                               r"vision towers: clip_vision_model, siglip_vision_model") as caught:
            build(cfg)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("vision_kind,text_kind", [("siglip", "roberta"), ("clip", "xlm-roberta")])
def test_recomputed_attention_and_its_gradient_match_eager_attention(vision_kind, text_kind, synthetic, tmp_path):
    """Relevancy's attention of the SDPA encoders, recomputed from q/k (padded keys masked), and
    ∇A = ∇O·Vᵀ equal an eager copy's own probabilities and gradients."""
    import copy

    from clara.explain.relevancy import (attention_gradients, recomputed_attention_gradients,
                                         recording_encoder_attentions)

    data_dir, texts = synthetic
    vision, text = tmp_path / vision_kind, tmp_path / text_kind
    make_vision_folder(vision_kind, vision)
    make_text_folder(text_kind, text, texts)
    torch.manual_seed(0)
    model, tokenizer = create_model(_config(data_dir, vision, text, tmp_path / "out"))
    model.eval()
    batch = dict(tokenizer(texts[:2], padding=True, return_tensors="pt"))
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert not batch["attention_mask"].all()  # a padded row: its keys must be masked
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():
        with recording_encoder_attentions(model, text_mask=batch["attention_mask"]) as recorded:
            score = model(pixel_values=pixels.clone().requires_grad_(True), **batch).logits[:, 1].sum()
        layers = recorded.vision + recorded.text
        grads = recomputed_attention_gradients(layers, attention_gradients(score, [], [l.heads_output for l in layers]))

    eager = copy.deepcopy(model)
    eager.vision.backbone.config._attn_implementation = "eager"
    eager.text.config._attn_implementation = "eager"
    names = {VISION_BACKBONES[eager.vision.backbone.config.model_type].attention.module_class,
             TEXT_BACKBONES[text_kind].attention.module_class}
    caught = []
    for module in eager.modules():
        if type(module).__name__ in names:
            module.register_forward_hook(lambda m, args, out: caught.append(out[1]))
    with torch.enable_grad():
        eager_score = eager(pixel_values=pixels.clone().requires_grad_(True), **batch).logits[:, 1].sum()
        eager_grads = torch.autograd.grad(eager_score, caught)
    assert len(layers) == len(caught) == 4
    for layer, attention, mine, reference in zip(layers, caught, grads, eager_grads):
        torch.testing.assert_close(layer.attention, attention, atol=1e-6, rtol=1e-5)
        assert reference.abs().max() > 1e-6
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-4)
