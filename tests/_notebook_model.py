"""A re-creation of the CLARA notebooks' model classes, written from clara-reference.md §2 only.

It exists so the notebook importer can be tested against something shaped exactly like the
authors' checkpoints: the same module names (hence state-dict keys), the same pooled fusion and
head wiring, built from tiny encoder configs. It deliberately does not import clara.model.

The notebooks ran transformers 4.42 / peft 0.11; we have transformers 5.x, whose
CLIPVisionModel lost its `vision_model` child. `notebook_state_dict` therefore adds the
`vision_model.` segment back to the CLIP keys so the saved file has the 4.x layout. peft's
LoRA naming (`base_layer`, `lora_A.default.weight`) did not change between those versions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model


@dataclass
class TinyEncoderSizes:
    """Sizes of a notebook-shaped model small enough for CPU tests (defaults: a tiny CLIP/DeBERTa).

    Everything but the head counts is visible in the weights; the importer takes head counts
    from the encoder family the sizes identify.
    """
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 128
    image_size: int = 96
    patch_size: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    vocab_size: int = 120
    position_buckets: int = 32
    max_position_embeddings: int = 128
    pad_token_id: int = 0
    fusion_hidden: int = 32
    head_hidden: int = 24  # the "multiple" notebook's 256, shrunk
    lora_r_vision: int = 4
    lora_r_text: int = 8


def clip_config(s: TinyEncoderSizes) -> CLIPVisionConfig:
    # openai/clip-vit-base-patch32's non-size settings: quick_gelu, eps 1e-5.
    return CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=s.vision_intermediate,
                            num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                            image_size=s.image_size, patch_size=s.patch_size, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)


def deberta_config(s: TinyEncoderSizes) -> DebertaV2Config:
    # microsoft/deberta-v3-base's non-size settings.
    return DebertaV2Config(vocab_size=s.vocab_size, hidden_size=s.text_hidden,
                           num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                           intermediate_size=s.text_intermediate,
                           max_position_embeddings=s.max_position_embeddings,
                           relative_attention=True, position_buckets=s.position_buckets,
                           max_relative_positions=-1, norm_rel_ebd="layer_norm",
                           pos_att_type=["p2c", "c2p"], share_att_key=True, position_biased_input=False,
                           type_vocab_size=0, layer_norm_eps=1e-7, hidden_act="gelu",
                           pad_token_id=s.pad_token_id)


def _lora_clip(s: TinyEncoderSizes) -> CLIPVisionModel:
    # LoRA injected in place (no PeftModel wrapper): the published keys read
    # `vision.backbone.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight`.
    clip = CLIPVisionModel(clip_config(s))
    lora = LoraConfig(r=s.lora_r_vision, lora_alpha=2 * s.lora_r_vision, lora_dropout=0.05,
                      target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    return inject_adapter_in_model(lora, clip)


def _lora_deberta(s: TinyEncoderSizes, unfreeze_last: bool):
    lora = LoraConfig(r=s.lora_r_text, lora_alpha=2 * s.lora_r_text, lora_dropout=0.10,
                      target_modules=["query_proj", "key_proj", "value_proj"])
    with warnings.catch_warnings():
        # peft asks transformers 5 a deprecated question (is_gradient_checkpointing); not ours to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        text = get_peft_model(DebertaV2Model(deberta_config(s)), lora)  # keys `text.base_model.model.…`
    if unfreeze_last:
        for p in text.base_model.model.encoder.layer[-1].parameters():
            p.requires_grad = True
    return text


def _randomise_lora_b(module: nn.Module, seed: int) -> None:
    # peft starts lora_B at zero; a trained checkpoint has non-zero ones, and the test must see them.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _mlp_head(d_in: int, d_hidden: int, n_out: int, dropout: float = 0.2) -> nn.Sequential:
    # Linear -> LayerNorm -> GELU -> Dropout -> Linear: parameters at indices 0, 1, 4.
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(d_hidden, n_out))


# ---- MVSA-Single / HFM notebooks --------------------------------------------------------------

class VisionEncoder(nn.Module):
    def __init__(self, s: TinyEncoderSizes):
        super().__init__()
        self.backbone = _lora_clip(s)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=pixel_values).last_hidden_state.mean(dim=1)


class CoAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(query, context, context)
        x = self.norm1(query + attended)
        return self.norm2(x + self.ffn(x))


class PooledCoAttention(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, dim: int, layers: int = 2):
        super().__init__()
        self.v_proj = nn.Linear(vision_dim, dim)
        self.t_proj = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList([CoAttentionBlock(dim) for _ in range(layers)])

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.v_proj(v).unsqueeze(1)
        t = self.t_proj(t).unsqueeze(1)
        for block in self.blocks:  # the single text vector attends to the single vision vector
            t = block(t, v)
        return t.squeeze(1)


class Head(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, n_out: int):
        super().__init__()
        self.net = _mlp_head(d_in, d_hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Uncertainty(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(-1)


def _fuse_and_heads(model: nn.Module, pixel_values, input_ids, attention_mask):
    """Both notebooks' common start: pooled vision, masked-mean text, fusion, pred/verify heads."""
    v = model.vision(pixel_values)
    t = _masked_mean(model.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                     attention_mask)
    fused = model.fusion(v, t)
    return fused, model.pred(fused), model.veri(fused)


class NotebookCLARASingle(nn.Module):
    """The MVSA-Single / HFM notebook model."""

    def __init__(self, s: TinyEncoderSizes, num_classes: int, unfreeze_last_text_layer: bool = True):
        super().__init__()
        self.vision = VisionEncoder(s)
        self.text = _lora_deberta(s, unfreeze_last_text_layer)
        self.fusion = PooledCoAttention(s.vision_hidden, s.text_hidden, s.fusion_hidden)
        self.pred = Head(s.fusion_hidden, s.fusion_hidden, num_classes)
        self.veri = Head(s.fusion_hidden, s.fusion_hidden, num_classes)
        self.unc = Uncertainty(s.fusion_hidden, s.fusion_hidden // 2)  # 256 for 512
        self.feed = Head(s.fusion_hidden + num_classes, s.fusion_hidden, s.fusion_hidden)
        _randomise_lora_b(self, seed=1)

    def forward(self, pixel_values, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        fused, pred_logits, verify_logits = _fuse_and_heads(self, pixel_values, input_ids, attention_mask)
        delta = F.softmax(verify_logits, -1) - F.softmax(pred_logits, -1)
        refined = self.feed(torch.cat([fused, delta], dim=-1))
        return {"logits": self.pred(refined), "pred_logits": pred_logits, "verify_logits": verify_logits,
                "uncertainty": self.unc(fused)}


# ---- MVSA-Multiple notebook -------------------------------------------------------------------

class VisionWrapper(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.b = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.b(pixel_values=pixel_values).last_hidden_state.mean(dim=1)


class SharedCrossAttention(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, dim: int, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.v_proj = nn.Linear(vision_dim, dim)
        self.t_proj = nn.Linear(text_dim, dim)
        self.cross = nn.ModuleList([nn.MultiheadAttention(dim, 8, dropout=dropout, batch_first=True)
                                    for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2 * layers)])
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.v_proj(v).unsqueeze(1)
        t = self.t_proj(t).unsqueeze(1)
        for i, attn in enumerate(self.cross):  # one attention module, used in both directions
            t_new = self.norms[2 * i](t + attn(t, v, v)[0])
            v_new = self.norms[2 * i + 1](v + attn(v, t, t)[0])
            t, v = t_new, v_new
        return self.fuse(torch.cat([t, v], dim=-1).squeeze(1))


class NotebookCLARAMultiple(nn.Module):
    """The MVSA-Multiple notebook model (vision module registered twice)."""

    def __init__(self, s: TinyEncoderSizes, num_classes: int, temperature: float = 0.5):
        super().__init__()
        clip = _lora_clip(s)
        self.vision = VisionWrapper(clip)
        self.vision_core = clip  # the same module again: its keys appear under both prefixes
        self.text = _lora_deberta(s, unfreeze_last=False)
        self.fusion = SharedCrossAttention(s.vision_hidden, s.text_hidden, s.fusion_hidden)
        self.pred = _mlp_head(s.fusion_hidden, s.head_hidden, num_classes)
        self.veri = _mlp_head(s.fusion_hidden, s.head_hidden, num_classes)
        self.feed = nn.Sequential(nn.Linear(s.fusion_hidden + num_classes, s.fusion_hidden),
                                  nn.LayerNorm(s.fusion_hidden), nn.GELU())
        self.final = nn.Linear(s.fusion_hidden, num_classes)
        self.temperature = temperature
        _randomise_lora_b(self, seed=2)

    def forward(self, pixel_values, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        fused, pred_logits, verify_logits = _fuse_and_heads(self, pixel_values, input_ids, attention_mask)
        p_pred = F.softmax(pred_logits.detach() / self.temperature, -1)
        p_verify = F.softmax(verify_logits.detach() / self.temperature, -1)
        refined = self.feed(torch.cat([fused, p_verify - p_pred], dim=-1))
        return {"logits": self.final(refined), "pred_logits": pred_logits, "verify_logits": verify_logits}


# ---- saving the notebook's way ----------------------------------------------------------------

_CLIP_PREFIXES = ("vision.backbone.", "vision.b.", "vision_core.")


def to_transformers4_key(key: str) -> str:
    """Our transformers-5 CLIP key -> the 4.42 key the notebooks wrote (extra `vision_model.`)."""
    for prefix in _CLIP_PREFIXES:
        if key.startswith(prefix):
            return prefix + "vision_model." + key[len(prefix):]
    return key


def notebook_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """`model.state_dict()` as the notebooks' environment wrote it (or only the trainable tensors)."""
    if trainable_only:
        # named_parameters() lists a shared module once; the notebook's trainable-only dict would
        # come from the same call, so the MVSA-Multiple duplicate prefix is absent here.
        tensors = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    else:
        tensors = {name: t.clone() for name, t in model.state_dict().items()}
    return {to_transformers4_key(k): v for k, v in tensors.items()}


def freeze_like_notebook(model: nn.Module, unfreeze_last_text_layer: bool) -> None:
    """Base weights frozen, LoRA + fusion + heads trainable (and the last DeBERTa layer, MVSA-Single)."""
    for name, p in model.named_parameters():
        in_encoder = name.startswith(("vision.", "vision_core.", "text."))
        p.requires_grad = (not in_encoder) or "lora_" in name
    if unfreeze_last_text_layer:
        for p in model.text.base_model.model.encoder.layer[-1].parameters():
            p.requires_grad = True


def build_notebook_model(variant: str, num_classes: int, s: TinyEncoderSizes | None = None,
                         seed: int = 0) -> nn.Module:
    s = s or TinyEncoderSizes()
    torch.manual_seed(seed)
    if variant == "single":
        model = NotebookCLARASingle(s, num_classes)
        freeze_like_notebook(model, unfreeze_last_text_layer=True)
    elif variant == "multiple":
        model = NotebookCLARAMultiple(s, num_classes)
        freeze_like_notebook(model, unfreeze_last_text_layer=False)
    else:
        raise ValueError(variant)
    return model.eval()
