"""CLARAModel: encoders -> fusion -> prediction / verification / feedback heads, and `create_model`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from clara.config import ABLATIONS, Config, ModelConfig
from clara.model.encoders import (ImageStats, VisionTower, build_text_encoder, build_tokenizer,
                                  build_vision_encoder, image_stats, resolved_model_config)
from clara.model.fusion import FusionAttentions, PooledFusion, TokenCoAttentionFusion
from clara.model.heads import (ClassifierHead, EntropyUncertainty, FeedbackRefiner, TemperatureFeedback,
                               UncertaintyEstimator, mlp_head)


@dataclass
class CLARAOutput:
    """What `CLARAModel.forward` returns.

    logits: final logits [B, C] (after feedback unless an ablation removes it); pred_logits and
    verify_logits: the two heads on the fused vector (verify_logits is None under the
    `no_verification` ablation); probs = softmax(logits) in float32; uncertainty [B] in [0, 1];
    attentions: the token fusion's per-layer weights when asked for, else None.
    """
    logits: torch.Tensor
    pred_logits: torch.Tensor
    verify_logits: torch.Tensor | None
    probs: torch.Tensor
    uncertainty: torch.Tensor
    attentions: FusionAttentions | None = None


class CLARAModel(nn.Module):
    """Submodules: `vision` (VisionTower), `text` (PeftModel over the text encoder), `fusion`, `pred`,
    `veri`, `unc`, `feed`, and `final` for the "multiple" variant. `config` holds the LoRA targets
    as resolved for the encoders' architectures (clara/model/backbones.py)."""

    def __init__(self, config: ModelConfig, num_classes: int, vision: VisionTower, text: PeftModel,
                 stats: ImageStats):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.image_stats = stats
        self.vision = vision
        self.text = text
        hidden, heads_hidden = config.hidden_dim, config.head_hidden_dim or config.hidden_dim
        fusion_args = dict(vision_dim=vision.hidden_size, text_dim=text.config.hidden_size, hidden_dim=hidden,
                           layers=config.fusion_layers, heads=config.fusion_heads, dropout=config.fusion_dropout)
        if config.fusion == "token":
            self.fusion = TokenCoAttentionFusion(**fusion_args)
        elif config.fusion == "pooled":
            self.fusion = PooledFusion(**fusion_args, variant=config.variant)
        else:
            raise ValueError(f"model.fusion={config.fusion!r} is not one of: token, pooled")
        if config.variant == "single":
            self.pred = ClassifierHead(hidden, heads_hidden, num_classes, config.head_dropout)
            self.veri = ClassifierHead(hidden, heads_hidden, num_classes, config.head_dropout)
            self.unc = UncertaintyEstimator(hidden)
            self.feed = FeedbackRefiner(hidden, num_classes)
        elif config.variant == "multiple":
            self.pred = mlp_head(hidden, heads_hidden, num_classes, config.head_dropout)
            self.veri = mlp_head(hidden, heads_hidden, num_classes, config.head_dropout)
            self.unc = EntropyUncertainty()
            self.feed = TemperatureFeedback(hidden, num_classes, config.feedback_temperature, config.head_dropout)
            self.final = nn.Linear(hidden, num_classes)
        else:
            raise ValueError(f"model.variant={config.variant!r} is not one of: single, multiple")

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_attentions: bool = False, ablation: str | None = None) -> CLARAOutput:
        """pixel_values [B, 3, S, S], input_ids / attention_mask [B, T] -> CLARAOutput.

        `ablation` (default: `config.ablation`): text_only / image_only (the fused vector is
        that modality's pooled projection; the other encoder is not run), no_coattention (LayerNorm
        of the mean of the two pooled projections, as the notebooks), no_verification (final = prediction head on the fused
        vector, no verification logits), no_feedback (final = prediction head on the fused vector).
        """
        ablation = self._check_ablation(ablation)
        vision_tokens, text_tokens = self.encode(pixel_values, input_ids, attention_mask,
                                                 vision=ablation != "text_only", text=ablation != "image_only")
        return self.decide(vision_tokens, text_tokens, attention_mask, output_attentions, ablation)

    def _check_ablation(self, ablation: str | None) -> str | None:
        ablation = ablation if ablation is not None else self.config.ablation
        if ablation is not None and ablation not in ABLATIONS:
            raise ValueError(f"ablation {ablation!r} is not one of: {', '.join(ABLATIONS)}")
        return ablation

    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               vision: bool = True, text: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The encoders' token outputs (None for an encoder switched off).

        Split from `decide` so that inference can run the (costly) encoders once and the fusion and
        heads once per inference-time ablation.
        """
        vision_tokens = self.vision(pixel_values) if vision else None
        text_tokens = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state if text else None
        return vision_tokens, text_tokens

    def decide(self, vision_tokens: torch.Tensor | None, text_tokens: torch.Tensor | None,
               attention_mask: torch.Tensor, output_attentions: bool = False,
               ablation: str | None = None, feedback_gate: float | None = None) -> CLARAOutput:
        """Fusion and heads over `encode`'s outputs (see `forward` for the ablations).

        `feedback_gate` (MVSA-Single's ablation table, cell 23): the feedback reads the heads'
        disagreement p_verify - p_pred only for posts where sum |p_verify - p_pred| > gate, and a
        zero signal for the others (the refined vector still goes through the feedback MLP).
        """
        ablation = self._check_ablation(ablation)
        attentions = None
        if ablation == "text_only":
            fused = self.fusion.pool_text(text_tokens, attention_mask)
        elif ablation == "image_only":
            fused = self.fusion.pool_vision(vision_tokens)
        elif ablation == "no_coattention":
            fused = self.fusion.merge_without_coattention(vision_tokens, text_tokens, attention_mask)
        else:
            fused, attentions = self.fusion(vision_tokens, text_tokens, attention_mask, output_attentions)

        pred_logits = self.pred(fused)
        verify_logits = None if ablation == "no_verification" else self.veri(fused)
        if ablation in ("no_verification", "no_feedback"):
            logits = pred_logits
        else:
            if feedback_gate is not None:
                disagreement = (verify_logits.softmax(dim=-1) - pred_logits.softmax(dim=-1)).abs().sum(-1, keepdim=True)
                # Below the gate the feedback reads the prediction head twice: p_pred - p_pred is exactly 0.
                verify_logits_fed = torch.where(disagreement > feedback_gate, verify_logits, pred_logits)
            else:
                verify_logits_fed = verify_logits
            refined = self.feed(fused, pred_logits, verify_logits_fed)
            logits = self.final(refined) if self.config.variant == "multiple" else self.pred(refined)
        probs = logits.float().softmax(dim=-1)  # float32 even under bf16 autocast: metrics and calibration read it
        return CLARAOutput(logits=logits, pred_logits=pred_logits, verify_logits=verify_logits, probs=probs,
                           uncertainty=self.unc(fused, probs), attentions=attentions)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        overrides: Mapping[str, Any] | None = None) -> CLARAModel:
        """The model of a checkpoint folder, in eval mode on `device` (clara.checkpoint.load_checkpoint,
        which also gives the tokenizer and config)."""
        from clara.checkpoint import load_checkpoint  # local: clara.checkpoint imports this module

        return load_checkpoint(path, device=device, overrides=overrides).model

    def save_pretrained(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, cfg: Config,
                        **kwargs: Any) -> Path:
        """Write this model, its tokenizer and `cfg` as a checkpoint folder (clara.checkpoint.save_checkpoint;
        `kwargs`: its metrics, history, extra, training_state)."""
        from clara.checkpoint import save_checkpoint  # local: clara.checkpoint imports this module

        return save_checkpoint(path, self, tokenizer, cfg, **kwargs)

    def unfreeze_encoders(self) -> int:
        """Make every encoder weight trainable, LoRA and pretrained alike: MVSA-Multiple's
        `set_trainable_except_lora(model.text / model.vision_core, True)` (cell 14, from epoch 3).
        Returns how many parameter values became trainable."""
        frozen = [p for encoder in (self.vision, self.text) for p in encoder.parameters() if not p.requires_grad]
        for param in frozen:
            param.requires_grad_(True)
        return sum(p.numel() for p in frozen)

    def param_counts(self) -> dict[str, int]:
        """{"total", "trainable"} parameter counts (shared tensors counted once)."""
        params = list(self.parameters())
        return {"total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad)}


def create_model(cfg: Config, tokenizer_texts: list[str] | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[CLARAModel, PreTrainedTokenizerBase]:
    """Build the model `cfg` describes, with `len(cfg.labels)` classes, and its tokenizer.

    The tokenizer is `tokenizer` when given (e.g. one saved in a checkpoint; it sizes the tiny
    text encoder), else built by `build_tokenizer(cfg.model, tokenizer_texts)`. Trainable
    weights are initialised from torch's global RNG (seed it for a reproducible model); the
    random tiny / random-full encoder weights are fixed (see encoders.py). The model's `config` is
    `cfg.model` with the LoRA targets resolved for the encoders' architectures (what a checkpoint records).
    """
    model_cfg = resolved_model_config(cfg.model)
    if tokenizer is None:
        tokenizer = build_tokenizer(model_cfg, tokenizer_texts)
    vision = build_vision_encoder(model_cfg)
    text = build_text_encoder(model_cfg, tokenizer)
    model = CLARAModel(model_cfg, len(cfg.labels), vision, text, image_stats(model_cfg))
    return model, tokenizer
