"""Training losses as published (clara-reference.md §3).

One formula covers both notebooks; each preset sets the weights it does not use to zero:

    total = L(final) + aux_weight * (L(pred) + L(verify)) + verify_weight * L(verify)
            + kl_weight * KL(final || verify) + sym_kl_weight * symKL(pred, verify)

with L the class-weighted, label-smoothed cross entropy (`loss="clara"`: MVSA-Single, HFM) or
the focal cross entropy with per-class gamma (`loss="focal"`: MVSA-Multiple).

Targets are either class indices `[B]` or class distributions `[B, C]` (soft labels, e.g. from
mixup), so one code path serves both; for indices it equals `F.cross_entropy(weight=...,
label_smoothing=...)` exactly, including its weighted-mean normalisation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clara.config import TrainConfig


def class_weights(class_counts: Sequence[int], labels: Sequence[str],
                  boost: Mapping[str, float] | None = None) -> torch.Tensor:
    """Weights N / count_c (N = number of training posts), times `boost[label]` where given.

    A class absent from the training split gets weight 0: it can never be a target there, and
    N / 0 would turn every smoothed loss into inf.
    """
    if len(class_counts) != len(labels):
        raise ValueError(f"{len(class_counts)} class counts for {len(labels)} labels {list(labels)}")
    total = float(sum(class_counts))
    weights = torch.tensor([total / count if count > 0 else 0.0 for count in class_counts],
                           dtype=torch.float32)
    for name, factor in (boost or {}).items():
        if name not in labels:
            raise ValueError(f"class weight boost names unknown label {name!r}; labels: {list(labels)}")
        weights[list(labels).index(name)] *= float(factor)
    return weights


def as_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices `[B]` -> one-hot `[B, C]`; a `[B, C]` distribution passes through as float."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).float()
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise ValueError(f"targets must be class indices [B] or a distribution [B, {num_classes}], "
                     f"got shape {tuple(targets.shape)}")


def _weighted_mean(per_sample: torch.Tensor, sample_weights: torch.Tensor) -> torch.Tensor:
    # torch's weighted CE divides by the summed weights of the targets; clamp guards a batch of
    # only zero-weight classes.
    return (per_sample * sample_weights).sum() / sample_weights.sum().clamp_min(1e-12)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross entropy with class weights and label smoothing, for hard or soft targets.

    Per sample: -sum_c w_c * t'_c * log p_c with t' = (1 - eps) t + eps / C; the batch loss is
    the sum over samples divided by sum_i sum_c w_c t_ic (the weight of each sample's target).
    """
    num_classes = logits.shape[-1]
    dist = as_distribution(targets, num_classes).to(logits.device)
    weights = torch.ones(num_classes, device=logits.device) if weights is None else weights.to(logits.device)
    smoothed = dist * (1.0 - label_smoothing) + label_smoothing / num_classes
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_sample = -(smoothed * weights * log_probs).sum(dim=-1)
    return per_sample.sum() / (dist * weights).sum().clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gammas: Sequence[float] | torch.Tensor,
               weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Focal cross entropy with a gamma per class (MVSA-Multiple: pos 1, neu 2, neg 4).

    Per sample: w_y * (1 - p_y)^gamma_y * CE_smoothed (the class weight multiplies the sample's
    loss, as in the usual `alpha[target] * focal` form), divided by sum_i w_{y_i}; for soft
    targets w, p and gamma are the target-weighted averages. With all gammas 0 and no smoothing
    this is exactly `weighted_cross_entropy`.
    """
    num_classes = logits.shape[-1]
    dist = as_distribution(targets, num_classes).to(logits.device)
    gamma = torch.as_tensor(gammas, dtype=torch.float32, device=logits.device)
    if gamma.numel() != num_classes:
        raise ValueError(f"focal loss needs one gamma per class ({num_classes}), got {gamma.tolist()}")
    weights = torch.ones(num_classes, device=logits.device) if weights is None else weights.to(logits.device)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    smoothed = dist * (1.0 - label_smoothing) + label_smoothing / num_classes
    ce = -(smoothed * log_probs).sum(dim=-1)
    p_target = (dist * log_probs.exp()).sum(dim=-1)
    modulation = (1.0 - p_target).clamp_min(0.0) ** (dist * gamma).sum(dim=-1)
    return _weighted_mean(modulation * ce, (dist * weights).sum(dim=-1))


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) between the softmax distributions of two logit tensors, averaged over the batch."""
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def symmetric_kl(a_logits: torch.Tensor, b_logits: torch.Tensor) -> torch.Tensor:
    """(KL(A || B) + KL(B || A)) / 2."""
    return 0.5 * (kl_divergence(a_logits, b_logits) + kl_divergence(b_logits, a_logits))


def clara_loss(out: Any, labels: torch.Tensor, class_weights: torch.Tensor | None,
               cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a `CLARAOutput` (see the module docstring) and its parts for logging.

    `labels` are class indices `[B]` or distributions `[B, C]`. Terms whose weight is 0, or whose
    logits the model did not produce (a train-time ablation without that head), are left out.
    Parts are detached 0-d tensors (no device sync until the caller reads them): `loss` (the
    total), `final`, and where used `pred`, `verify`, `kl`, `sym_kl` (each unweighted).
    """
    def base_loss(logits: torch.Tensor) -> torch.Tensor:
        if cfg.loss == "focal" and cfg.focal_gammas:
            return focal_loss(logits, labels, cfg.focal_gammas, class_weights, cfg.label_smoothing)
        return weighted_cross_entropy(logits, labels, class_weights, cfg.label_smoothing)

    pred_logits = getattr(out, "pred_logits", None)
    verify_logits = getattr(out, "verify_logits", None)
    terms: dict[str, tuple[float, torch.Tensor]] = {"final": (1.0, base_loss(out.logits))}
    if cfg.aux_weight and pred_logits is not None:
        terms["pred"] = (cfg.aux_weight, base_loss(pred_logits))
    verify_weight = cfg.verify_weight + cfg.aux_weight
    if verify_weight and verify_logits is not None:
        terms["verify"] = (verify_weight, base_loss(verify_logits))
    if cfg.kl_weight and verify_logits is not None:
        terms["kl"] = (cfg.kl_weight, kl_divergence(out.logits, verify_logits))
    if cfg.sym_kl_weight and pred_logits is not None and verify_logits is not None:
        terms["sym_kl"] = (cfg.sym_kl_weight, symmetric_kl(pred_logits, verify_logits))

    total = sum(weight * value for weight, value in terms.values())
    parts = {name: value.detach() for name, (_, value) in terms.items()}
    parts["loss"] = total.detach()
    return total, parts
