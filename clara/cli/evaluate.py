"""Recompute a checkpoint's metrics on one split of a dataset folder.

    python scripts/evaluate.py --checkpoint checkpoints/clara_mvsa_single_best --dataset mvsa_single \
        --data-dir data/MVSA_Single [--split test] [--json] [--out metrics.json] [--results-dir DIR]

The split is rebuilt exactly as in training (protocol, HFM label, split seed or split file, from
the checkpoint's config.json). Prints accuracy, weighted/macro F1 (HFM: also the sarcastic-class
F1), per-class metrics, the confusion matrix, the inference-time ablations and, on the test
split, the post-hoc calibration variants fitted on val; --json prints the same as one JSON
object. Exit status 2 with one line on stderr for a missing or bad checkpoint, a bad data
folder or a dataset the checkpoint was not trained on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from clara.cli import OneLineParser, program_name, report_error, run_main
from clara.config import DATASETS, parse_assignments

PROG = program_name("evaluate.py")


def _fail(message: str) -> int:
    return report_error(PROG, message)


def format_metrics(metrics: dict[str, Any]) -> str:
    labels = metrics["labels"]
    lines = [f"{metrics.get('dataset')} {metrics.get('split')} split ({metrics.get('n')} posts, "
             f"{metrics.get('protocol')} protocol), checkpoint {metrics.get('checkpoint')}", ""]
    summary = ["accuracy", "f1_weighted", "f1_macro"] + (["f1_sarcastic"] if "f1_sarcastic" in metrics else [])
    lines += [f"{name:<14}{100 * metrics[name]:7.2f}" for name in summary]
    width = max(len(label) for label in labels) + 2
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for label in labels:
        row = metrics["per_class"][label]
        lines.append(f"{label:<{width}}{100 * row['precision']:10.2f}{100 * row['recall']:10.2f}"
                     f"{100 * row['f1']:10.2f}{row['support']:9d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "".join(f"{label[:9]:>10}" for label in labels)]
    for label, row in zip(labels, metrics["confusion_matrix"]):
        lines.append(f"{label:<{width}}" + "".join(f"{count:10d}" for count in row))
    for title, table in (("inference-time ablations", metrics.get("ablations")),
                         ("post-hoc calibration (fitted on val)", metrics.get("calibration"))):
        if not table:
            continue
        lines += ["", f"{title}:", f"{'':<18}{'accuracy':>10}{'f1_weighted':>13}{'f1_macro':>10}"]
        for name, row in table.items():
            params = ", ".join(f"{k}={v}" for k, v in row.get("params", {}).items())
            lines.append(f"{name:<18}{100 * row['accuracy']:10.2f}{100 * row['f1_weighted']:13.2f}"
                         f"{100 * row['f1_macro']:10.2f}" + (f"   {params}" if params else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", required=True, type=Path, help="the dataset folder in its raw format")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the checkpoint's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the inference-time ablations")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of the checkpoint's config when loading it, e.g. "
                             "model.vision_encoder=/models/clip-vit-base-patch32 (published encoders in local "
                             "folders on an offline machine); repeatable")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", type=Path, help="also write the metrics as JSON to this file")
    parser.add_argument("--results-dir", type=Path,
                        help="also write metrics.json, the plots and predictions.csv into this folder")
    args = parser.parse_args(argv)

    if args.dataset not in DATASETS:
        return _fail(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if not args.checkpoint.is_dir():
        return _fail(f"checkpoint folder {args.checkpoint} does not exist")
    if not args.data_dir.is_dir():
        what = "is not a folder" if args.data_dir.exists() else "does not exist"
        return _fail(f"--data-dir {args.data_dir} {what}")
    if args.batch_size is not None and args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")

    from clara.outputs import OutputPathError, check_writable_file, check_writable_folder

    try:  # before evaluating, not after
        if args.out is not None:
            check_writable_file(args.out, "--out")
        if args.results_dir is not None:
            check_writable_folder(args.results_dir, "--results-dir")
    except OutputPathError as exc:
        return _fail(str(exc))

    from clara.checkpoint import CheckpointError, read_checkpoint_info
    from clara.data import DatasetError, ImageError
    from clara.evaluate import EvaluationError, evaluate_checkpoint

    try:
        overrides = parse_assignments(args.assignments)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        trained_on = read_checkpoint_info(args.checkpoint).get("dataset")
        if trained_on != args.dataset:  # checked before loading anything heavy
            return _fail(f"checkpoint {args.checkpoint} was trained on {trained_on}, not {args.dataset}")
        metrics = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir, split=args.split,
                                      device=args.device, batch_size=args.batch_size,
                                      ablations=not args.no_ablations, results_dir=args.results_dir,
                                      overrides=overrides)
    except CheckpointError as exc:
        return _fail(f"bad checkpoint: {exc}")
    except DatasetError as exc:
        return _fail(f"--data-dir {args.data_dir}: {exc}")
    except EvaluationError as exc:
        return _fail(str(exc))
    except ImageError as exc:  # only with data.check_images=false: the split keeps undecodable images
        return _fail(f"{exc}; the checkpoint was trained with data.check_images=false, so its splits keep "
                     "undecodable images: replace or remove that file")

    skipped = metrics.get("skipped") or {}
    if skipped:  # on stderr, so --json output stays one object
        reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
        print(f"{PROG}: {sum(skipped.values())} post(s) of {args.data_dir} skipped ({reasons}); "
              "see scripts/data_summary.py for examples", file=sys.stderr)
    if metrics.get("truncated_texts"):
        print(f"{PROG}: {metrics['truncated_texts']} of {metrics.get('n')} texts are longer than the model "
              "reads (data.max_text_length tokens) and were truncated, as in training", file=sys.stderr)
    text = json.dumps(metrics, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else format_metrics(metrics))
    return 0


def run() -> NoReturn:
    """The console script `clara-evaluate`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
