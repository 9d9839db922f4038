"""The model card: README.md in every checkpoint folder, written by save_checkpoint from what it
stores (config.json, metrics.json, history.json), so a folder copied or uploaded to the Hugging
Face Hub (clara.checkpoint.hub) says what it is: data, protocol, metrics, parameter counts,
intended use, and, loudly, when it was trained on synthetic data or with tiny test encoders.
The loader never reads it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
TEST_ENCODERS = ("tiny", "random-full")  # encoders without pretrained weights
CONFIG_SHOWN = {  # the settings a reader needs to judge a run, as config.json names them
    "data": ("protocol", "split_seed", "max_text_length"),
    "model": ("fusion", "variant", "hidden_dim", "fusion_layers", "vision_lora_r", "text_lora_r"),
    "train": ("epochs", "patience", "batch_size", "grad_accum_steps", "lr", "lr_scheduler", "warmup_ratio",
              "weight_decay", "loss", "sampler", "class_weights", "selection_metric", "mixed_precision", "seed"),
}


def not_a_real_model(info: Mapping[str, Any]) -> str | None:
    """Why this checkpoint is no sentiment model (synthetic data, test encoders), or None."""
    from clara.catalog import DEMO_SOURCE_KIND  # imported here: the catalog imports this package

    source = info.get("source") if isinstance(info.get("source"), Mapping) else {}
    record = info.get("data") if isinstance(info.get("data"), Mapping) else {}  # clara.data.provenance's
    reasons = []
    if record.get("synthetic") is True or source.get("kind") == DEMO_SOURCE_KIND:
        reasons.append("it was trained on synthetic posts (clara.data.synthetic), whose labels follow planted "
                       "cues, not real sentiment")
    kind = (info.get("encoders") or {}).get("kind")
    if kind in TEST_ENCODERS:
        reasons.append(f"its encoders are `{kind}` test encoders with random weights, not pretrained CLIP / DeBERTa")
    return "; ".join(reasons) or None


def model_card(info: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
               history: list[Mapping[str, Any]] | None = None) -> str:
    """The README.md text of a checkpoint whose config.json is `info`."""
    config = info.get("config") or {}
    data_cfg = config.get("data") or {}
    encoders, params = info.get("encoders") or {}, info.get("params") or {}
    dataset, labels = info.get("dataset"), list(info.get("labels") or [])
    warning = not_a_real_model(info)
    lines = ["---", "library_name: clara", "tags:", *(f"- {tag}" for tag in (
        "multimodal", "image-text-classification", "sentiment-analysis", "clara", *(["synthetic"] if warning else []))),
        "---", "", f"# CLARA on {_title(dataset)}", ""]
    if warning:
        lines += [f"> **Not a real model.** This checkpoint only shows that the code runs: {warning}. Its predictions "
                  "say nothing about real posts.", ""]
    lines += ["A CLARA multimodal sentiment classifier (image + text): a CLIP vision encoder and a DeBERTa-v3 "
              "text encoder with LoRA adapters, co-attention fusion, verification and feedback heads.", "",
              "## Model", "",
              f"- encoders: `{encoders.get('kind')}` (vision `{encoders.get('vision')}`, text `{encoders.get('text')}`)",
              f"- parameters: {_count(params.get('total'))} in all, {_count(params.get('trainable'))} trained"
              f" ({info.get('weights')} weights stored in model.safetensors)",
              f"- labels (class index order): {', '.join(f'`{label}`' for label in labels)}", "",
              "## Data and protocol", "",
              f"- dataset: {_title(dataset)} (`{dataset}`), protocol `{info.get('protocol')}`",
              f"- data folder: {_data_folder(info, data_cfg)}",
              f"- trained from: {_source(info)}", "",
              "| setting | value |", "|---|---|"]
    for section, names in CONFIG_SHOWN.items():
        lines += [f"| {section}.{name} | {(config.get(section) or {}).get(name)} |" for name in names
                  if name in (config.get(section) or {})]
    lines += ["", "## Metrics", "", *_metric_lines(metrics, history, info), "",
              "## Intended use", "",
              "Research on multimodal sentiment (or, for HFM, sarcasm) of social-media posts like the training data: "
              "comparing methods, studying which modality a prediction rests on (the dashboard's attention and "
              "attribution pages). Not for decisions about people, for moderation without human review, or for "
              "posts unlike the training data (other languages, platforms, times). Scores on a benchmark split "
              "are not accuracy in the wild.", "",
              "## Use", "", "```python", "from clara.inference import Predictor", "",
              'predictor = Predictor.from_pretrained("path/to/this/folder")',
              'print(predictor.predict(["photo.jpg"], ["what a day"]))', "```", "",
              "or `clara-predict --checkpoint path/to/this/folder --image photo.jpg --text \"what a day\"`. "
              "The folder loads without unpickling anything (config.json, model.safetensors, tokenizer/).", "",
              f"Written by clara {(info.get('versions') or {}).get('clara')} on {info.get('created')}"
              + (f" (commit {info['git_commit'][:12]})" if info.get("git_commit") else "") + ".", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, info: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                     history: list[Mapping[str, Any]] | None = None) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(model_card(info, metrics, history), encoding="utf-8")
    return path


def _title(dataset: Any) -> str:
    from clara.datasets import REGISTRY

    return REGISTRY[dataset].title if dataset in REGISTRY else str(dataset)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def _data_folder(info: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> str:
    record = info.get("data") if isinstance(info.get("data"), Mapping) else {}
    folder = record.get("dir") or data_cfg.get("data_dir")
    name = f"`{Path(str(folder)).name}`" if folder else "not recorded"  # the name only: no local paths published
    synthetic = record.get("synthetic")
    return name + (" (generated by clara.data.synthetic)" if synthetic else " (real data)" if synthetic is False else "")


def _source(info: Mapping[str, Any]) -> str:
    from clara.catalog import DEMO_SOURCE_KIND

    source = info.get("source") if isinstance(info.get("source"), Mapping) else {}
    kind = source.get("kind", "clara")
    described = {"clara": "clara's training loop", DEMO_SOURCE_KIND: "scripts/make_demo_checkpoint.py (the bundled demo)",
                 "notebook": "an import of the CLARA authors' notebook checkpoint"}.get(kind, f"`{kind}`")
    note = source.get("note") or source.get("data")
    return described + (f"; {note}" if note else "")


def _metric_lines(metrics: Mapping[str, Any] | None, history: list[Mapping[str, Any]] | None,
                  info: Mapping[str, Any]) -> list[str]:
    """A table of the stored metrics: per split when split-keyed (training writes the best epoch's
    `val`), else the top level."""
    from clara.evaluate import SUMMARY_METRICS

    metrics = metrics or {}
    splits = {name: part for name, part in metrics.items() if isinstance(part, Mapping) and "accuracy" in part}
    if not splits and "accuracy" in metrics:
        splits = {str(metrics.get("split", "evaluation")): metrics}
    if not splits:
        return ["No metrics stored with this checkpoint (see the results folder of its run)."]
    epoch = metrics.get("epoch") or (info.get("extra") or {}).get("best_epoch")
    lines = [f"Measured at epoch {epoch} of {len(history)} trained." if epoch and history else
             "As stored in metrics.json.", "", "| split | " + " | ".join(SUMMARY_METRICS) + " |",
             "|---|" + "---|" * len(SUMMARY_METRICS)]
    for name, part in splits.items():
        values = [f"{100 * part[m]:.2f}" if isinstance(part.get(m), (int, float)) else "" for m in SUMMARY_METRICS]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    lines += ["", "Percent." + ("" if "test" in splits else " A training run scores the test split once, on "
                                "its best epoch: those numbers are in the run's results folder (metrics.json).")]
    return lines
