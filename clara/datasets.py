"""The dataset registry: one `DatasetSpec` entry per dataset, read by config, data and evaluation.

A new dataset is its reader module (clara/data/<name>.py) plus one entry in `REGISTRY`. The
reader is named by import path and imported on first use, so this module (imported by
clara.config, hence by everything) imports nothing but the standard library. Presets are data:
dotted overrides of the default `Config`, as nanoGPT's config/*.py. The published numbers are
percent, on CLARA's own protocol unless said otherwise; their sources are in docs/METHOD.md.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CalibrationGrids:
    """A notebook's post-hoc calibration search (clara.evaluate.calibration), as data: grids are
    np.linspace(start, stop, num), searched bias-outer / temperature-inner and scale-outer /
    shift-inner, the first best point on val kept. The defaults are MVSA-Single's and HFM's."""
    bias: tuple[float, float, int] = (-0.6, 0.6, 25)  # b in z / tau + b, on the target logit
    temperature: tuple[float, float, int] = (0.8, 1.4, 13)  # tau, on the target logit only
    affine_scale: tuple[float, float, int] = (0.8, 1.4, 13)  # w in w * z + b, on the target logit
    affine_shift: tuple[float, float, int] = (-0.6, 0.6, 25)  # b
    metric: str = "f1_weighted"  # maximised on val: sklearn's f1_score over the classes that occur
    top2_margin: float = 0.03  # top-2 flip: to the target class when p1 - p2 is below this
    source: str = ""  # the notebook cell these follow


@dataclass(frozen=True)
class AblationMethod:
    """How a notebook's inference-time ablation table reads a trained model (clara.evaluate.scoring).

    no_verification / no_feedback: the prediction head on the fused vector. text_only / image_only /
    no_coattention: through the feedback path when named in `through_feedback`, else the prediction
    head alone. `feedback_gate`: every row that reads the feedback (full included) keeps its signal
    p_v - p_p only where sum |p_v - p_p| > gate, zero elsewhere. Defaults: no gate, heads alone.
    """
    feedback_gate: float | None = None
    through_feedback: tuple[str, ...] = ()
    bias_temperature_row: bool = False  # also "full" under the fitted bias_temperature calibration
    source: str = ""  # the notebook cell this follows


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the code knows about one dataset, besides how to read its files."""
    name: str  # the --dataset value and config's data.dataset
    title: str  # as the papers write it
    labels: tuple[str, ...]  # class names in class-index order; empty: the data's own (data.class_names)
    reader_path: str  # "module:function" taking a clara.data.types.ReadRequest -> (layout, samples)
    preset: dict[str, Any]  # the published training settings as overrides of the default Config
    published: dict[str, Any]  # the CLARA paper's results on this dataset
    calibration_target: str | None  # the class the post-hoc calibration variants move the decision towards
    f1_classes: tuple[str, ...] = ()  # classes also scored alone: metrics["f1_<class>"] (binary F1)
    fixed_splits: bool = False  # ships its own train/val/test: the reader marks each sample's split
    calibration: CalibrationGrids = CalibrationGrids()  # the notebook's calibration grids and metric
    ablation_method: AblationMethod = AblationMethod()  # the notebook's ablation table (metrics["ablations_notebook"])

    @property
    def reader(self) -> Callable[..., Any]:
        module, _, function = self.reader_path.partition(":")
        return getattr(importlib.import_module(module), function)


MVSA_LABELS = ("positive", "neutral", "negative")  # the notebooks' index order
_MVSA_PROTOCOL = "clara (agreement subset, 70/15/15)"

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        name="mvsa_single", title="MVSA-Single", labels=MVSA_LABELS,
        reader_path="clara.data.mvsa:load_mvsa",
        preset={
            "model.fusion": "pooled",  # the notebooks fuse pooled vectors (--fusion token: the paper's)
            "model.unfreeze_last_text_layers": 1,
            "model.gradient_checkpointing": False,  # the notebook used it; it only saves memory we have
            "train.selection_metric": "f1_weighted",
        },
        published={
            "accuracy": 83.16, "f1_weighted": 83.04, "f1_macro": 79.88,
            "per_class_f1": {"positive": 88.84, "neutral": 70.77, "negative": 79.83},
            "protocol": _MVSA_PROTOCOL},
        calibration_target="neutral",
        calibration=CalibrationGrids(source="MVSA-Single cell 18"),
        ablation_method=AblationMethod(feedback_gate=0.10,
                                       through_feedback=("text_only", "image_only", "no_coattention"),
                                       bias_temperature_row=True, source="MVSA-Single cell 23"),
    ),
    DatasetSpec(
        name="mvsa_multiple", title="MVSA-Multiple", labels=MVSA_LABELS,
        reader_path="clara.data.mvsa:load_mvsa",
        preset={
            "model.fusion": "pooled",  # the notebooks fuse pooled vectors (--fusion token: the paper's)
            "model.variant": "multiple",
            "model.head_hidden_dim": 256,
            "train.batch_size": 48,
            "train.grad_accum_steps": 2,
            "train.lr": 5e-5,
            "train.warmup_ratio": 0.16,
            "train.selection_metric": "f1_weighted",
            "train.loss": "focal",
            "train.label_smoothing": 0.02,
            "train.aux_weight": 0.30,
            "train.verify_weight": 0.0,
            "train.kl_weight": 0.0,
            "train.sym_kl_weight": 0.0,
            "train.consistency_weight": 0.10,  # 0.10 (KL(v||p) + KL(p||v)), the full sum (cell 14)
            "train.focal_gammas": (1.0, 2.0, 4.0),
            "train.class_weight_boost": {"negative": 12.0},
            "train.class_weights": "count_boosted",  # sum/(3 ce_w), ce_w = [n_pos, n_neu, 12 n_neg]
            "train.sampler": "extreme_negative",  # as coded: ~98 % negative draws (prints "target 30 %")
            "train.negative_boost": 12.0,
            "train.negative_min_fraction": 0.30,
            "train.negative_mixup_prob": 0.5,
            "train.negative_mixup_alpha": 0.4,
            "train.full_finetune_from_epoch": 3,  # set_trainable_except_lora(text / vision_core, True) (cell 14)
            "train.posthoc_logit_bias": {"negative": 0.6},  # CONFIG['negative_bias_posthoc'], reported (cell 18)
        },
        published={
            "accuracy": 73.51, "f1_weighted": 73.45, "f1_macro": 67.92,
            "per_class_f1": {"positive": 81.24, "neutral": 75.09, "negative": 47.43},
            "protocol": _MVSA_PROTOCOL},
        calibration_target="neutral",
        calibration=CalibrationGrids(bias=(-1.0, 1.0, 9), temperature=(0.7, 1.5, 9), affine_scale=(0.5, 1.5, 9),
                                     affine_shift=(-1.0, 1.0, 9), metric="f1_macro", source="MVSA-Multiple cell 22"),
        ablation_method=AblationMethod(source="MVSA-Multiple cells 24-25"),
    ),
    # Cai et al.'s Twitter sarcasm dataset: 1 = sarcastic (not Hateful Memes, not "positive").
    DatasetSpec(
        name="hfm", title="HFM", labels=("not_sarcastic", "sarcastic"),
        reader_path="clara.data.hfm:load_hfm",
        preset={
            "model.fusion": "pooled",  # the notebooks fuse pooled vectors (--fusion token: the paper's)
            "train.batch_size": 128,
            "train.patience": 10,
            "train.selection_metric": "f1_macro",
            "train.sampler": "weighted",  # inverse-frequency WeightedRandomSampler...
            "train.class_weights": "none",  # ...with an unweighted CE
            "data.max_text_length": 64,  # MAX_LENGTH = max(64, P98 of the train texts) = 64
        },
        published={
            "accuracy": 88.13, "f1_weighted": 88.13, "f1_macro": 87.82,
            "per_class_f1": {"not_sarcastic": 88.33, "sarcastic": 87.92},
            "protocol": "official splits, hashtag labels (the notebooks' choice)"},
        # No neutral class: the positive class, so the variants become a tuned decision threshold.
        calibration_target="sarcastic",
        f1_classes=("sarcastic",),
        fixed_splits=True,
        calibration=CalibrationGrids(metric="f1_macro", source="HFM cell 18"),  # the "neutral" index 1 is sarcastic
        ablation_method=AblationMethod(source="HFM cell 24"),
    ),
    # Bring your own data: one CSV / JSONL / Parquet table of image, text, label (clara/data/custom.py).
    DatasetSpec(
        name="custom", title="custom table", labels=(),
        reader_path="clara.data.custom:load_custom",
        preset={
            "train.selection_metric": "f1_macro",  # classes of any balance count alike
            # The notebooks' calibration variants move a dataset's own target class; a table has none.
            "train.calibrate": False,
        },
        published={}, calibration_target=None,
    ),
)}

# The published CLARA results per dataset (MVSA: agreement subset, 70/15/15; HFM: official splits).
PUBLISHED_CLARA: dict[str, dict[str, Any]] = {name: spec.published for name, spec in REGISTRY.items()
                                              if spec.published}
PUBLISHED_ABLATIONS = {  # MVSA-Single, accuracy / weighted F1
    "full": (83.16, 83.04), "no_verification": (82.91, 82.72), "no_feedback": (82.91, 82.72),
    "no_coattention": (75.77, 75.55), "text_only": (76.79, 76.47), "image_only": (27.81, 24.70),
}
# Other methods on the standard protocol (Xu et al. 2017 / CLMLF splits): accuracy, F1.
STANDARD_PROTOCOL_RESULTS = {
    "MultiSentiNet (2017)": {"mvsa_single": (69.84, 69.63), "mvsa_multiple": (68.86, 68.11)},
    "CLMLF (NAACL-F 2022)": {"mvsa_single": (75.33, 73.46), "mvsa_multiple": (72.00, 69.83), "hfm": (85.43, 84.87)},
    "MVCN (ACL 2023)": {"mvsa_single": (76.06, 74.55), "mvsa_multiple": (72.07, 70.01), "hfm": (85.68, 85.23)},
    "MSFN (TOMM 2025)": {"mvsa_single": (78.98, 78.48), "mvsa_multiple": (74.75, 72.62)},
    "SPP-SCL (AAAI 2026)": {"mvsa_single": (81.33, 80.15), "mvsa_multiple": (78.71, 77.53), "hfm": (94.69, 94.50)},
}

# Every per-class metric some dataset adds to accuracy / weighted F1 / macro F1.
CLASS_F1_METRICS = tuple(dict.fromkeys(f"f1_{c}" for spec in REGISTRY.values() for c in spec.f1_classes))


def spec_for_labels(labels: Sequence[str]) -> DatasetSpec | None:
    """The first dataset with exactly these labels (MVSA-Single and -Multiple share theirs), or None."""
    return next((spec for spec in REGISTRY.values() if spec.labels == tuple(labels)), None)
