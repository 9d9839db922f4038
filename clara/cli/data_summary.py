"""Summarise a dataset folder: what was found, kept, split and skipped (and why).

    python scripts/data_summary.py --dataset mvsa_single --data-dir data/MVSA_Single [--protocol standard] [--json]

With --json prints one JSON object {"dataset", "layout", "protocol", "total", "class_counts",
"splits", "skipped", "removed_after_split"}; otherwise a readable table with examples of skipped
posts. removed_after_split: per split, the skipped posts the split had placed there (reason -> count).
Exit code 2, with a one-line error on stderr, for a folder that is not a dataset of that kind.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import NoReturn

from clara.cli import OneLineParser, program_name, run_main
from clara.config import DATASETS
from clara.data import PROTOCOLS, DatasetError, LoadedDataset, load_dataset
from clara.data.types import SPLITS

PROG = program_name("data_summary.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(PROG, __doc__)
    # Names are checked by load_dataset (not argparse choices) so a bad one gives a one-line error.
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", required=True, help="the dataset folder")
    parser.add_argument("--protocol", default="clara",
                        help=f"MVSA: {' or '.join(PROTOCOLS)} (default clara); HFM uses its official splits")
    parser.add_argument("--hfm-label", default="human",
                        help="HFM: human (last field, standard; default) or hashtag (third field, as CLARA)")
    parser.add_argument("--splits", default=None, help="JSON or TSV file of ids per split (overrides the split)")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument("--labels", default="", help="custom: the class names in index order, comma-separated "
                                                     "(default: the table's labels, sorted)")
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not decode every image (faster; unreadable images are then not found)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def format_table(loaded: LoadedDataset) -> str:
    summary = loaded.summary_dict()
    per_split = {name: Counter(loaded.labels[s.label] for s in loaded.splits[name]) for name in SPLITS}
    width = max(len(label) for label in [*loaded.labels, "total"]) + 2
    lines = [f"dataset  {summary['dataset']}   layout  {summary['layout']}   protocol  {summary['protocol']}",
             "",
             f"{'':<{width}}" + "".join(f"{name:>8}" for name in (*SPLITS, "total"))]
    for label in loaded.labels:
        counts = [per_split[name][label] for name in SPLITS]
        lines.append(f"{label:<{width}}" + "".join(f"{n:>8,}" for n in (*counts, sum(counts))))
    lines.append(f"{'total':<{width}}" + "".join(f"{n:>8,}" for n in (*summary["splits"].values(),
                                                                       summary["total"])))
    removed = summary["removed_after_split"]
    if any(removed.values()):
        lines += ["", "removed after the split (skipped below; the split was computed with them):"]
        for name in SPLITS:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in removed[name].items())
            lines.append(f"{name:>8}  {sum(removed[name].values()):>6,}" + (f"  ({reasons})" if reasons else ""))
    encodings = Counter(s.annotations.get("text_encoding") for s in loaded.samples)
    encodings.pop(None, None)
    if encodings:
        notes = ", ".join(f"{n} as {enc}" for enc, n in sorted(encodings.items()))
        lines += ["", f"texts not in UTF-8, decoded: {notes}"]
    lines += ["", f"skipped ({loaded.skipped.total:,}):" if loaded.skipped.total else "skipped: nothing"]
    for reason, count in sorted(loaded.skipped.counts.items()):
        lines.append(f"{count:>8,}  {reason}")
        lines += [f"{'':>12}e.g. {example}" for example in loaded.skipped.examples.get(reason, [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loaded = load_dataset(args.dataset, args.data_dir, protocol=args.protocol, hfm_label=args.hfm_label,
                              splits_file=args.splits, seed=args.seed, check_images=not args.no_check_images,
                              progress=not args.json and sys.stderr.isatty(),
                              class_names=[name.strip() for name in args.labels.split(",") if name.strip()])
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(loaded.summary_dict()))
    else:
        print(format_table(loaded))
    return 0


def run() -> NoReturn:
    """The console script `clara-data-summary`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
