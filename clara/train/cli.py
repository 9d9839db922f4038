"""Train CLARA on one dataset with its published settings, then evaluate the best epoch on test.

    python scripts/train.py --dataset mvsa_single --data-dir data/MVSA_Single
    python scripts/train.py --dataset hfm --data-dir data/HFM --encoders tiny --epochs 1 --output-dir runs/smoke
    accelerate launch --num_processes 2 scripts/train.py --dataset mvsa_multiple --data-dir data/MVSA
    python scripts/train.py --dataset mvsa_single --data-dir data/MVSA_Single --resume   # after a crash
    clara-train --dataset custom --data-dir my_posts/   # my_posts/data.csv: image, text, label (+ id, split)

Writes OUT/checkpoints/clara_<dataset>_best/ and _last/ and OUT/results/<dataset>/ (metrics.json
and plots), OUT being --output-dir or the current folder; a train-time --ablation adds
_<ablation> to those names. Any config field can be set with --set section.field=value
(see clara/config.py), e.g. --set train.label_smoothing=0.1 --set model.fusion_layers=1.
--resume continues an interrupted run from its last completed epoch (OUT/checkpoints/
clara_<dataset>_last/ holds the optimizer, scheduler and early-stopping state): give the same
arguments as the interrupted run and the same number of processes; the result equals an
uninterrupted run. A kill mid-epoch repeats that one epoch.
--report-to picks the experiment tracker (Accelerate's): loss and learning rate per optimizer step,
the validation metrics per epoch; the default is TensorBoard when installed (`pip install
"clara[track]"`), its files under OUT/tracking/ (`tensorboard --logdir OUT/tracking`).
Exit status: 0 done (or --resume on a finished run: nothing to do), 1 training failed (e.g. the
loss became NaN), 2 bad arguments or data folder, or nothing/something else to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from clara.cli import EXIT_USAGE, OneLineParser, program_name, report_error, run_main
from clara.config import ABLATIONS, DATASETS, REPORT_TO, Config, ConfigError, get_preset, parse_assignments

PROG = program_name("train.py")

EXIT_FAILED = 1


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    report_error(PROG, message)
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which benchmark (and preset)")
    parser.add_argument("--data-dir", type=Path, help="the dataset folder in its raw format")
    parser.add_argument("--protocol", choices=("clara", "standard"),
                        help="MVSA filtering and split: clara (agreement, 70/15/15; default) or standard (8:1:1)")
    parser.add_argument("--hfm-label", choices=("human", "hashtag"),
                        help="HFM val/test label: human (last field, standard; default) or hashtag (as the notebooks)")
    parser.add_argument("--splits", type=Path, help="JSON or TSV file of ids per split (e.g. CLMLF's split)")
    parser.add_argument("--labels", help="custom: the class names in index order, comma-separated "
                                         "(default: the table's labels, sorted)")
    parser.add_argument("--encoders", choices=("published", "tiny", "random-full"),
                        help="published (hub id or local folder; default), tiny (offline, for tests), "
                             "random-full (real architectures, random weights)")
    parser.add_argument("--fusion", choices=("token", "pooled"),
                        help="token co-attention (paper; default) or pooled (notebooks)")
    parser.add_argument("--ablation", choices=ABLATIONS, help="train this variant from scratch")
    parser.add_argument("--epochs", type=int, help="maximum epochs (preset: 50)")
    parser.add_argument("--batch-size", type=int, help="per-process batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--seed", type=int, help="random seed (preset: 42)")
    parser.add_argument("--output-dir", type=Path,
                        help="stands for the repo root: checkpoints/ and results/ go under it (default: .)")
    parser.add_argument("--report-to", choices=REPORT_TO,
                        help="experiment tracker: auto (default: tensorboard when installed, else none), none, "
                             "or one of Accelerate's")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="set any config field, e.g. train.weight_decay=0.05 (repeatable)")
    parser.add_argument("--print-params", action="store_true",
                        help="build the model, print trainable/total parameters and exit (no data needed)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run from its last checkpoint (same arguments as that run)")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """The dataset's preset with the flags, then the --set assignments, applied."""
    flags = {
        "data.data_dir": str(args.data_dir) if args.data_dir else None,
        "data.protocol": args.protocol,
        "data.hfm_label": args.hfm_label,
        "data.splits_file": str(args.splits) if args.splits else None,
        "data.class_names": ",".join(name.strip() for name in args.labels.split(",")) if args.labels else None,
        "model.encoders": args.encoders,
        "model.fusion": args.fusion,
        "model.ablation": args.ablation,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.patience": args.patience,
        "train.max_steps_per_epoch": args.max_steps_per_epoch,
        "train.seed": args.seed,
        "train.output_dir": str(args.output_dir) if args.output_dir else None,
        "train.report_to": args.report_to,
    }
    assignments: dict[str, object] = {key: value for key, value in flags.items() if value is not None}
    assignments.update(parse_assignments(args.assignments))
    for name in ("epochs", "batch_size", "patience", "max_steps_per_epoch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return get_preset(args.dataset).override(assignments)


def print_params(cfg: Config) -> None:
    from clara.model import create_model
    from clara.train.loop import format_param_counts

    model, _ = create_model(cfg)
    counts = model.param_counts()
    print(f"{cfg.data.dataset} (encoders {cfg.model.encoders}, fusion {cfg.model.fusion}, "
          f"variant {cfg.model.variant}): {format_param_counts(counts)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_params:
        print_params(cfg)
        return 0
    # Check the folder before importing torch, so a typo fails in a second.
    if args.data_dir is None:
        fail("--data-dir is required (the dataset folder in its raw format)")
    if not args.data_dir.is_dir():
        what = "is not a folder" if args.data_dir.exists() else "does not exist"
        fail(f"--data-dir {args.data_dir} {what}")

    from clara.data import DatasetError, ImageError
    from clara.model import EncoderError
    from clara.train.loop import OutputDirError, TrackerError, TrainingError, train
    from clara.train.resume import ResumeError, RunAlreadyFinished

    try:
        result = train(cfg, progress=not args.no_progress, resume=args.resume)
    except RunAlreadyFinished as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"{PROG}: {exc}")
        return 0
    except ResumeError as exc:
        fail(str(exc))
    except ImageError as exc:  # only with data.check_images=false: load-time checks skip such files
        fail(f"{exc}; with data.check_images=false undecodable images stay in the splits: remove or replace "
             "that file, or train with data.check_images=true", EXIT_FAILED)
    except DatasetError as exc:
        fail(f"--data-dir {args.data_dir}: {exc}")
    except (OutputDirError, EncoderError, TrackerError) as exc:
        fail(str(exc))
    except TrainingError as exc:
        fail(str(exc), EXIT_FAILED)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(f"best checkpoint: {result.best_dir}\nresults: {result.results_dir}")
    return 0


def run() -> NoReturn:
    """The console script `clara-train`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
