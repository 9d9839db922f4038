"""Training losses as the notebooks compute them (docs/FIDELITY.md; tests/test_fidelity_training.py).

One formula covers all three notebooks; each preset sets the weights it does not use to zero:

    total = L(final) + aux_weight * (L(pred) + L(verify)) + verify_weight * L(verify)
            + kl_weight * KL(verify || final)
            + sym_kl_weight * (KL(verify || pred) + KL(pred || verify)) / 2
            + consistency_weight * (KL(verify || pred) + KL(pred || verify))

with L the class-weighted, label-smoothed cross entropy (`loss="clara"`: MVSA-Single, HFM cell 16)
or the focal loss with per-class gamma (`loss="focal"`: MVSA-Multiple cells 12 and 14).

Targets are either class indices `[B]` or class distributions `[B, C]` (soft labels, e.g. from
mixup), so one code path serves both; for indices the cross entropy equals
`F.cross_entropy(weight=..., label_smoothing=...)` exactly, including its weighted-mean normalisation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clara.config import TrainConfig

CLASS_WEIGHT_SCHEMES = ("inverse_frequency", "count_boosted", "none")


def class_weights(class_counts: Sequence[int], labels: Sequence[str], boost: Mapping[str, float] | None = None,
                  scheme: str = "inverse_frequency") -> torch.Tensor | None:
    """The loss's class weights from the training split's class counts (None: unweighted).

    Counts are clipped at 1 first, as the notebooks do (a class absent from the training split
    gets the largest weight, never N / 0). With N the sum of the clipped counts n_c:
    - `inverse_frequency` (MVSA-Single cell 14): N / n_c, times `boost[label]` where given;
    - `count_boosted` (MVSA-Multiple cell 12): each count is multiplied by `boost[label]` first,
      then N' / (C * n'_c) with N' the boosted sum. A boost > 1 therefore *lowers* that class's
      weight: the notebook's 12x "negative boost" gives positive 0.735, neutral 1.261,
      negative 1.180 on its split, as it prints;
    - `none` (HFM: the Trainer of cell 16 gets no weights).
    """
    if len(class_counts) != len(labels):
        raise ValueError(f"{len(class_counts)} class counts for {len(labels)} labels {list(labels)}")
    if scheme not in CLASS_WEIGHT_SCHEMES:
        raise ValueError(f"unknown class weight scheme {scheme!r}; choose one of: {', '.join(CLASS_WEIGHT_SCHEMES)}")
    factors = torch.ones(len(labels), dtype=torch.float32)
    for name, factor in (boost or {}).items():
        if name not in labels:
            raise ValueError(f"class weight boost names unknown label {name!r}; labels: {list(labels)}")
        factors[list(labels).index(name)] = float(factor)
    if scheme == "none":
        return None
    counts = torch.tensor([max(float(count), 1.0) for count in class_counts], dtype=torch.float32)
    if scheme == "inverse_frequency":
        return counts.sum() / counts * factors
    boosted = counts * factors
    return (boosted.sum() / (len(labels) * boosted)).clamp_min(1e-8)


def training_class_weights(cfg: TrainConfig, class_counts: Sequence[int], labels: Sequence[str],
                           device: torch.device | str | None = None) -> torch.Tensor | None:
    """`class_weights` as `cfg` (train.class_weights, train.class_weight_boost) asks, on `device`."""
    weights = class_weights(class_counts, labels, cfg.class_weight_boost, cfg.class_weights)
    return None if weights is None else weights.to(device)


def as_distribution(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices `[B]` -> one-hot `[B, C]`; a `[B, C]` distribution passes through as float."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).float()
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise ValueError(f"targets must be class indices [B] or a distribution [B, {num_classes}], "
                     f"got shape {tuple(targets.shape)}")


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
    """MVSA-Multiple's `ExtremeFocalLoss` (cell 12): a gamma per class (pos 1, neu 2, neg 4).

    Per sample: w_y * (1 - p_y)^gamma_y * -sum_c t'_c log p_c, with the smoothed target
    t' = 1 - eps on the true class and eps / (C - 1) on each other class (p_y clamped at 1e-8);
    the batch loss is the plain mean over samples (not divided by the summed weights). For soft
    targets t, t' = (1 - eps) t + eps / (C - 1) (1 - t), and w, gamma and p are t-weighted averages.
    """
    num_classes = logits.shape[-1]
    dist = as_distribution(targets, num_classes).to(logits.device)
    gamma = torch.as_tensor(gammas, dtype=torch.float32, device=logits.device)
    if gamma.numel() != num_classes:
        raise ValueError(f"focal loss needs one gamma per class ({num_classes}), got {gamma.tolist()}")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    smoothed = dist * (1.0 - label_smoothing) + (1.0 - dist) * (label_smoothing / (num_classes - 1))
    ce = -(smoothed * log_probs).sum(dim=-1)
    p_target = (dist * log_probs.exp().clamp_min(1e-8)).sum(dim=-1)
    modulation = (1.0 - p_target).clamp_min(0.0) ** (dist * gamma).sum(dim=-1)
    per_sample = modulation * ce
    if weights is not None:
        per_sample = per_sample * (dist * weights.to(logits.device)).sum(dim=-1)
    return per_sample.mean()


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) between the softmax distributions of two logit tensors, averaged over the batch."""
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def symmetric_kl(a_logits: torch.Tensor, b_logits: torch.Tensor) -> torch.Tensor:
    """(KL(A || B) + KL(B || A)) / 2: MVSA-Single / HFM `Trainer._contrastive` (cell 16)."""
    return 0.5 * (kl_divergence(a_logits, b_logits) + kl_divergence(b_logits, a_logits))


def consistency(pred_logits: torch.Tensor, verify_logits: torch.Tensor) -> torch.Tensor:
    """KL(V || P) + KL(P || V), summed, with log(p + 1e-8) as MVSA-Multiple's train_epoch (cell 14) takes it."""
    p_pred = F.softmax(pred_logits.float(), dim=-1)
    p_verify = F.softmax(verify_logits.float(), dim=-1)
    return (F.kl_div((p_pred + 1e-8).log(), p_verify, reduction="batchmean")
            + F.kl_div((p_verify + 1e-8).log(), p_pred, reduction="batchmean"))


def clara_loss(out: Any, labels: torch.Tensor, class_weights: torch.Tensor | None,
               cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a `CLARAOutput` (see the module docstring) and its parts for logging.

    `labels` are class indices `[B]` or distributions `[B, C]`. Terms whose weight is 0, or whose
    logits the model did not produce (a train-time ablation without that head), are left out.
    Parts are detached 0-d tensors (no device sync until the caller reads them): `loss` (the
    total), `final`, and where used `pred`, `verify`, `kl`, `sym_kl`, `consistency` (each unweighted).
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
        # F.kl_div(log_softmax(final), softmax(verify)) in the notebooks: KL(verify || final).
        terms["kl"] = (cfg.kl_weight, kl_divergence(verify_logits, out.logits))
    if cfg.sym_kl_weight and pred_logits is not None and verify_logits is not None:
        terms["sym_kl"] = (cfg.sym_kl_weight, symmetric_kl(pred_logits, verify_logits))
    if cfg.consistency_weight and pred_logits is not None and verify_logits is not None:
        terms["consistency"] = (cfg.consistency_weight, consistency(pred_logits, verify_logits))

    total = sum(weight * value for weight, value in terms.values())
    parts = {name: value.detach() for name, (_, value) in terms.items()}
    parts["loss"] = total.detach()
    return total, parts
