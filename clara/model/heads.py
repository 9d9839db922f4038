"""Prediction, verification, uncertainty and feedback heads, layer for layer as the notebooks'.

Two wirings (checked against the authors' code by tests/test_fidelity_model.py):
- "single" (MVSA-Single / HFM cell 12): `ClassifierHead`s (`net.{0,1,4}`, dropout 0.2), an
  `UncertaintyEstimator` (`net.{0,3}`, ReLU) and a `FeedbackRefiner` (`net.{0,1,4}`, dropout 0.1)
  whose refined vector goes back through the prediction head.
- "multiple" (MVSA-Multiple cell 10): bare `mlp_head` Sequentials (`pred.{0,1,4}`), a
  `TemperatureFeedback` (`feed.{0,1}`) feeding a separate `final` Linear, and no uncertainty
  parameters (the notebook has none; `EntropyUncertainty` reports the normalised entropy).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Dropout -> Linear (parameters at indices 0, 1, 4)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, out_dim))


class ClassifierHead(nn.Module):
    """Prediction or verification head of the "single" wiring: fused [B, H] -> logits [B, C]."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.net = mlp_head(in_dim, hidden_dim, num_classes, dropout)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)


# The notebooks' fixed dropout rates of these two modules (MVSA-Single / HFM cell 12).
UNCERTAINTY_DROPOUT = 0.1
FEEDBACK_DROPOUT = 0.1


class UncertaintyEstimator(nn.Module):
    """MLP (ReLU) -> sigmoid on the fused vector: [B, H] -> [B] in (0, 1). Reported, not trained by the loss."""

    def __init__(self, in_dim: int, dropout: float = UNCERTAINTY_DROPOUT):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim // 2), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(in_dim // 2, 1), nn.Sigmoid())

    def forward(self, fused: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.net(fused).squeeze(-1)


class EntropyUncertainty(nn.Module):
    """Parameter-free uncertainty of the "multiple" wiring: entropy of `probs` / log(C), in [0, 1]."""

    def forward(self, fused: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1)
        return entropy / math.log(probs.shape[-1])


class FeedbackRefiner(nn.Module):
    """"single" feedback: concat(fused, p_verify - p_pred) -> an MLP back to the hidden size."""

    def __init__(self, hidden_dim: int, num_classes: int, dropout: float = FEEDBACK_DROPOUT):
        super().__init__()
        self.net = mlp_head(hidden_dim + num_classes, hidden_dim, hidden_dim, dropout)

    def forward(self, fused: torch.Tensor, pred_logits: torch.Tensor, verify_logits: torch.Tensor) -> torch.Tensor:
        disagreement = verify_logits.softmax(dim=-1) - pred_logits.softmax(dim=-1)
        return self.net(torch.cat([fused, disagreement], dim=-1))


class TemperatureFeedback(nn.Sequential):
    """"multiple" feedback: Linear -> LayerNorm -> GELU -> Dropout on concat(fused, p_verify - p_pred), the
    probabilities taken at `temperature` and detached (the heads learn only from their own losses)."""

    def __init__(self, hidden_dim: int, num_classes: int, temperature: float, dropout: float):
        super().__init__(nn.Linear(hidden_dim + num_classes, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                         nn.Dropout(dropout))
        if temperature <= 0:
            raise ValueError(f"model.feedback_temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, fused: torch.Tensor, pred_logits: torch.Tensor,  # type: ignore[override]
                verify_logits: torch.Tensor) -> torch.Tensor:
        p_pred = F.softmax(pred_logits.detach() / self.temperature, dim=-1)
        p_verify = F.softmax(verify_logits.detach() / self.temperature, dim=-1)
        return super().forward(torch.cat([fused, p_verify - p_pred], dim=-1))
