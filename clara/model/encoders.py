"""The two encoder towers (vision, text), their tokenizer and image statistics.

`ModelConfig.encoders`: `published` (hub id or local folder of any architecture in
clara/model/backbones.py, dispatched by its config's model_type; never remote code: local folders
are checked by `clara.untrusted` first), `tiny` (small CLIP / DeBERTa configs and a tokenizer built
from the training texts, for tests and the demo) or `random-full` (the real ViT-B/32 and
DeBERTa-v3-base architectures with random weights, so counts and speed match the published model).
Base weights are frozen and peft adds LoRA; the parameter names follow the notebooks' state-dict
keys (docs/METHOD.md, docs/FIDELITY.md).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import string
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (MODEL_MAPPING, AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer, CLIPVisionConfig,
                          CLIPVisionModel, DebertaV2Config, DebertaV2Model, PretrainedConfig, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast)

from clara.config import ModelConfig
from clara.model.backbones import (TEXT_BACKBONES, VISION_BACKBONES, Backbone, peft_targets, text_backbone,
                                   vision_backbone)
from clara.untrusted import UntrustedFolderError, check_model_folder

ENCODER_SOURCES = ("published", "tiny", "random-full")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEBERTA_V3_VOCAB_SIZE = 128_100
TOKENIZER_MAX_LENGTH = 512
# Random encoder weights come from fixed seeds inside a forked RNG: the tiny / random-full towers
# stand in for pretrained weights, so they are the same in every run and do not shift the
# global RNG that seeds the trainable parts (LoRA, fusion, heads).
VISION_INIT_SEED = 1234
TEXT_INIT_SEED = 5678

# Small enough for CPU tests: 96 px / 16 px patches -> a 6x6 grid (+ CLS = 37 image tokens).
TINY_VISION_SIZES = dict(image_size=96, patch_size=16, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       position_buckets=32, max_position_embeddings=128)
TINY_TOKENIZER_VOCAB = 4000
FULL_TOKENIZER_VOCAB = 30000

# Used when no training texts are given (e.g. `--print-params`, a model built only to be loaded).
BUILTIN_CORPUS = (
    "what a wonderful sunny day at the beach with friends!",
    "i love this beautiful picture of my dog :)",
    "so happy and proud of our team, great win tonight",
    "the concert was amazing, best night ever #music",
    "new coffee shop in town, the cake looks delicious",
    "this is the worst service i have ever had.",
    "sad news today, rest in peace",
    "traffic again... late for work, so annoying",
    "i hate rainy mondays and broken phones",
    "terrible weather, the flight is delayed for 3 hours",
    "meeting at 10 am in room 204 about the report",
    "photo of the city skyline taken from the bridge",
    "the new schedule is posted on the website @user http",
    "oh great, another day of fun at the dentist #sarcasm",
    "yeah right, because that worked so well last time",
    "a red car parked next to a green tree and a blue house",
    "cats, dogs, birds and 12 fish; numbers 0 1 2 3 4 5 6 7 8 9",
)


class EncoderError(ValueError):
    """An encoder or tokenizer that cannot be built; the message names the config field and a fix."""


@dataclass(frozen=True)
class ImageStats:
    """What the image transform and the explanations need to know about the vision encoder."""
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    cls_token: bool = True  # token 0 is a CLS token (CLIP); SigLIP has none

    @property
    def grid_size(self) -> int:
        return self.size // self.patch_size

    @property
    def n_tokens(self) -> int:
        """last_hidden_state length: CLS (if any) + the row-major patch grid."""
        return self.grid_size ** 2 + int(self.cls_token)


class VisionTower(nn.Module):
    """A vision model (CLIPVisionModel, SiglipVisionModel; LoRA injected in place) returning all of
    its last-layer tokens."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.hidden_size: int = backbone.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, (1 +) grid², hidden] (CLIP: index 0 is CLS)."""
        return self.backbone(pixel_values=pixel_values).last_hidden_state


# --------------------------------------------------------------------------- configs

def _check_source(cfg: ModelConfig) -> None:
    if cfg.encoders not in ENCODER_SOURCES:
        raise EncoderError(f"model.encoders={cfg.encoders!r} is not one of: {', '.join(ENCODER_SOURCES)}")


def _offline_vision_config(cfg: ModelConfig) -> CLIPVisionConfig:
    if cfg.encoders == "tiny":
        return CLIPVisionConfig(**TINY_VISION_SIZES, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    # CLIPVisionConfig's defaults are ViT-B/32 (768 wide, 12 layers, 12 heads, 224 px, quick_gelu).
    patch_size = 16 if "patch16" in cfg.vision_encoder else 32
    return CLIPVisionConfig(patch_size=patch_size)


def _deberta_v3_config(vocab_size: int, pad_token_id: int, **sizes: int) -> DebertaV2Config:
    """microsoft/deberta-v3-base's settings; `sizes` overrides the dimensions (tiny)."""
    settings = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    position_buckets=256, max_position_embeddings=512)
    settings.update(sizes)
    return DebertaV2Config(vocab_size=vocab_size, pad_token_id=pad_token_id, relative_attention=True,
                           max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                           share_att_key=True, position_biased_input=False, type_vocab_size=0,
                           hidden_act="gelu", layer_norm_eps=1e-7, **settings)


def _published_config(source: str, field: str, what: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(_pretrained_source(source, field), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise EncoderError(_load_failure(what, field, source, exc)) from exc


def vision_architecture(cfg: ModelConfig) -> tuple[Backbone, PretrainedConfig]:
    """The vision tower's entry in clara/model/backbones.py and its transformers config (a composite
    checkpoint's vision sub-config); EncoderError for an architecture clara does not know."""
    _check_source(cfg)
    if cfg.encoders != "published":
        return VISION_BACKBONES["clip_vision_model"], _offline_vision_config(cfg)
    config = _published_config(cfg.vision_encoder, "model.vision_encoder", "vision encoder")
    config = getattr(config, "vision_config", None) or config  # clip, siglip: the checkpoint of both towers
    backbone = vision_backbone(config.model_type)
    if backbone is None:
        raise EncoderError(f"model.vision_encoder={cfg.vision_encoder!r} is a {config.model_type!r} model; clara "
                           f"reads these vision towers: {', '.join(VISION_BACKBONES)} (alone or inside a clip / "
                           "siglip checkpoint); another needs an entry in clara/model/backbones.py")
    return backbone, config


def text_architecture(cfg: ModelConfig) -> tuple[Backbone | None, str]:
    """The text encoder's entry in clara/model/backbones.py (None: not known) and its model_type."""
    _check_source(cfg)
    if cfg.encoders != "published":
        return TEXT_BACKBONES["deberta-v2"], "deberta-v2"
    model_type = _published_config(cfg.text_encoder, "model.text_encoder", "text encoder").model_type
    return text_backbone(model_type), model_type


def configured_encoder_width(cfg: ModelConfig) -> int | None:
    """The wider tower's hidden size that `cfg` builds, read from the configs before the model exists
    (training decides its precision first); None when a published encoder's config cannot be read."""
    if cfg.encoders != "published":
        text_sizes = TINY_TEXT_SIZES if cfg.encoders == "tiny" else {}
        return max(_offline_vision_config(cfg).hidden_size, _deberta_v3_config(1, 0, **text_sizes).hidden_size)
    try:
        vision_config = vision_architecture(cfg)[1]
        text_config = _published_config(cfg.text_encoder, "model.text_encoder", "text encoder")
    except EncoderError:  # not on this machine (offline) or not a model clara reads: building it will say why
        return None
    widths = [getattr(config, "hidden_size", None) for config in (vision_config, text_config)]
    return max(widths) if all(isinstance(width, int) for width in widths) else None


def _field_default(name: str) -> tuple[str, ...]:
    return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == name)


def _lora_targets(configured: tuple[str, ...], name: str, backbone: Backbone | None, source: str,
                  model_type: str) -> tuple[str, ...]:
    """`configured`, unless it is left at the field's default (CLIP's / DeBERTa's names): then the
    architecture's own. An architecture without an entry needs them set."""
    if tuple(configured) != _field_default(name):
        return tuple(configured)
    if backbone is None:
        tower = name.split("_")[0]
        raise EncoderError(f"model.{tower}_encoder={source!r} is a {model_type!r} model, for which clara has no "
                           f"LoRA targets: set model.{name} (its attention projections' module names, or "
                           f"all-linear), or add it to clara/model/backbones.py")
    return backbone.lora_targets


def resolved_model_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the LoRA targets its encoders take (backbones.py, where left at the defaults), as
    the model is built and a checkpoint records them, so that a reload builds the same model."""
    vision, vision_config = vision_architecture(cfg)
    text, text_type = text_architecture(cfg)
    targets = {"vision_lora_targets": _lora_targets(cfg.vision_lora_targets, "vision_lora_targets", vision,
                                                    cfg.vision_encoder, vision_config.model_type),
               "text_lora_targets": _lora_targets(cfg.text_lora_targets, "text_lora_targets", text,
                                                  cfg.text_encoder, text_type)}
    if all(tuple(getattr(cfg, name)) == value for name, value in targets.items()):
        return cfg  # nothing to resolve (CLIP and DeBERTa, or targets set by hand): the same object
    return dataclasses.replace(cfg, **targets)


@contextlib.contextmanager
def _seeded_init(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- tokenizer

def train_wordpiece_tokenizer(texts: list[str], max_vocab_size: int) -> PreTrainedTokenizerFast:
    """A lowercasing WordPiece tokenizer whose vocabulary is built from `texts`, deterministically.

    The `tokenizers` trainers give different vocabularies in different processes (Rust hash-map
    order decides ties), so the vocabulary is built here instead: the special tokens, every
    character seen (plus ASCII letters, digits and punctuation) as a word start and as a `##`
    continuation, then whole words by descending count (ties alphabetical) up to
    `max_vocab_size`. An unseen word falls back to its characters.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        normalized = normalizer.normalize_str(text)
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalized))
    alphabet = sorted(set(string.ascii_lowercase + string.digits + string.punctuation)
                      | {char for word in word_counts for char in word})
    vocab_tokens = list(SPECIAL_TOKENS) + alphabet + ["##" + char for char in alphabet]
    if len(vocab_tokens) > max_vocab_size:
        raise EncoderError(f"the texts use {len(alphabet)} distinct characters, more than a "
                           f"{max_vocab_size}-token vocabulary can hold")
    known = set(vocab_tokens)
    by_count = sorted((word for word in word_counts if word not in known), key=lambda w: (-word_counts[w], w))
    vocab_tokens += by_count[:max_vocab_size - len(vocab_tokens)]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}

    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=TOKENIZER_MAX_LENGTH, padding_side="right")


def build_tokenizer(cfg: ModelConfig, texts: list[str] | None = None) -> PreTrainedTokenizerBase:
    """The text encoder's tokenizer: loaded for `published`, built from `texts` otherwise.

    `texts=None` uses a small built-in corpus (every character still tokenizes, words fall back
    to characters).
    """
    _check_source(cfg)
    if cfg.encoders == "published":
        source = _pretrained_source(cfg.text_encoder, "model.text_encoder")
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise EncoderError(_load_failure("tokenizer", "model.text_encoder", cfg.text_encoder, exc)) from exc
    corpus = list(texts) if texts else list(BUILTIN_CORPUS)
    max_vocab = TINY_TOKENIZER_VOCAB if cfg.encoders == "tiny" else FULL_TOKENIZER_VOCAB
    return train_wordpiece_tokenizer(corpus, max_vocab)


# --------------------------------------------------------------------------- towers

def _pretrained_source(source: str, field: str) -> str:
    """`source` unchanged, once a local folder there is known to hold no code (clara.untrusted)."""
    if Path(source).is_dir():
        try:
            check_model_folder(source)
        except UntrustedFolderError as exc:
            raise EncoderError(f"refusing {field}={source!r}: {exc}") from None
    return source


def _load_failure(what: str, field: str, source: str, exc: Exception) -> str:
    looks_local = source.startswith(("/", ".", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().is_dir():
        reason = "no such folder"
    else:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (f"cannot load the {what} from {field}={source!r}: {reason}.\n"
            "Point it at a local folder holding the model's config.json, weights and tokenizer files "
            "(save_pretrained output), or use --encoders tiny / random-full, which need no download.")


def _add_lora(model: nn.Module, r: int, alpha: int, dropout: float, targets: tuple[str, ...], field: str,
              wrap: bool) -> nn.Module:
    """Freeze `model` and add LoRA (peft); `wrap` returns a PeftModel, else injects in place."""
    for param in model.parameters():
        param.requires_grad = False
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=peft_targets(targets))
    try:
        with warnings.catch_warnings():
            # peft asks transformers 5 a deprecated question; the warning is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
            return get_peft_model(model, lora) if wrap else inject_adapter_in_model(lora, model)
    except ValueError as exc:
        raise EncoderError(f"LoRA targets {field}={list(targets)} do not fit {type(model).__name__}: {exc}") from exc


def _enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (the notebooks' memory saver); transformers 5 renamed
    gradient to activation checkpointing and warns on the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_vision_encoder(cfg: ModelConfig) -> VisionTower:
    """The vision tower (CLIP, SigLIP: `vision_architecture`), frozen, with LoRA on the resolved
    `cfg.vision_lora_targets` (`resolved_model_config`)."""
    architecture, config = vision_architecture(cfg)
    targets = _lora_targets(cfg.vision_lora_targets, "vision_lora_targets", architecture, cfg.vision_encoder,
                            config.model_type)
    if cfg.encoders == "published":
        source = _pretrained_source(cfg.vision_encoder, "model.vision_encoder")
        try:  # the tower's own class (CLIPVisionModel, ...), also from a checkpoint of both towers
            backbone = MODEL_MAPPING[type(config)].from_pretrained(source, trust_remote_code=False,
                                                                   **architecture.load_options)
        except (OSError, ValueError) as exc:
            raise EncoderError(_load_failure("vision encoder", "model.vision_encoder", cfg.vision_encoder,
                                             exc)) from exc
    else:
        with _seeded_init(VISION_INIT_SEED):
            backbone = CLIPVisionModel(config)
    backbone = _add_lora(backbone, cfg.vision_lora_r, cfg.vision_lora_alpha, cfg.vision_lora_dropout,
                         targets, "model.vision_lora_targets", wrap=False)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(backbone)
    return VisionTower(backbone)


def build_text_encoder(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> PeftModel:
    """The text encoder (DeBERTa, RoBERTa, XLM-R, ...: `AutoModel`) inside a peft `PeftModel`, frozen
    except LoRA (on the resolved `cfg.text_lora_targets`) and the last `cfg.unfreeze_last_text_layers` layers.

    `tokenizer` sizes the tiny model's embedding table and is checked against the others';
    without it one is built as `build_tokenizer(cfg)` would.
    """
    architecture, model_type = text_architecture(cfg)
    targets = _lora_targets(cfg.text_lora_targets, "text_lora_targets", architecture, cfg.text_encoder, model_type)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    if cfg.encoders == "published":
        source = _pretrained_source(cfg.text_encoder, "model.text_encoder")
        options = dict(architecture.load_options) if architecture is not None else {}
        try:
            base = AutoModel.from_pretrained(source, trust_remote_code=False, **options)
        except (OSError, ValueError) as exc:
            raise EncoderError(_load_failure("text encoder", "model.text_encoder", cfg.text_encoder, exc)) from exc
    else:
        vocab_size = len(tokenizer) if cfg.encoders == "tiny" else DEBERTA_V3_VOCAB_SIZE
        sizes = TINY_TEXT_SIZES if cfg.encoders == "tiny" else {}
        with _seeded_init(TEXT_INIT_SEED):
            base = DebertaV2Model(_deberta_v3_config(vocab_size, tokenizer.pad_token_id, **sizes))
    embedding_rows = base.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedding_rows:
        raise EncoderError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder "
                           f"(model.text_encoder={cfg.text_encoder!r}) embeds only {embedding_rows}: "
                           "they do not belong together")
    text = _add_lora(base, cfg.text_lora_r, cfg.text_lora_alpha, cfg.text_lora_dropout, targets,
                     "model.text_lora_targets", wrap=True)
    _unfreeze_last_layers(base, cfg.unfreeze_last_text_layers)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(base)
    return text


def _unfreeze_last_layers(base: nn.Module, n_layers: int) -> None:
    """Make every weight of the last `n_layers` encoder layers trainable (LoRA-wrapped ones included)."""
    if n_layers <= 0:
        return
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or n_layers > len(layers):
        available = "no `encoder.layer` list" if layers is None else f"{len(layers)} layers"
        raise EncoderError(f"model.unfreeze_last_text_layers={n_layers} but the text encoder has {available}")
    for layer in layers[-n_layers:]:
        for param in layer.parameters():
            param.requires_grad = True


# --------------------------------------------------------------------------- image statistics

def image_stats(cfg: ModelConfig) -> ImageStats:
    """Input size, normalisation, patch size and CLS token of the vision encoder `cfg` describes.

    Mean/std are the architecture's (backbones.py: OpenAI CLIP's, SigLIP's 0.5), except for a
    published encoder with an image-processor config (preprocessor_config.json), whose values are used.
    """
    architecture, vision_config = vision_architecture(cfg)
    mean, std = architecture.image_mean, architecture.image_std
    folder = Path(cfg.vision_encoder)
    if cfg.encoders == "published" and (not folder.is_dir() or (folder / "preprocessor_config.json").is_file()):
        try:
            processor = AutoImageProcessor.from_pretrained(cfg.vision_encoder, trust_remote_code=False)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except OSError:
            pass  # a hub model without a processor config (or not cached): the architecture's constants apply
    return ImageStats(int(vision_config.image_size), mean, std, int(vision_config.patch_size),
                      cls_token=architecture.cls_token)
