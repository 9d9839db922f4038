"""Rebuild the demo checkpoints the dashboard opens on (one per dataset), their results and the
examples gallery.

    python scripts/make_demo_checkpoint.py                    # all three, and examples/
    python scripts/make_demo_checkpoint.py --dataset hfm      # one of them

CLARA models with tiny encoders trained on synthetic posts in each dataset's raw format, whose
label needs both the picture and the text (clara/train/demo.py); not sentiment models. Writes
checkpoints/demo/ (MVSA-Single, the one the app opens on), checkpoints/demo_mvsa_multiple/ and
checkpoints/demo_hfm/ (config.json with source.kind "demo" and a synthetic "data" record,
weights, tokenizer, metrics, history, and results/ with the test evaluation and its images), and
examples/ (the Predict page's gallery, from the MVSA-Single demo). The same command rebuilds the
same tensors on the same machine and software (--threads fixes torch's threads); about a minute
per demo on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from clara.cli import OneLineParser, report_error, run_main

ROOT = Path(__file__).resolve().parents[1]
PROG = "make_demo_checkpoint.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--checkpoints-dir", type=Path, default=ROOT / "checkpoints",
                        help="folder the demo checkpoints are written under")
    parser.add_argument("--dataset", action="append",
                        help="build only this dataset's demo: mvsa_single, mvsa_multiple or hfm (repeatable; "
                             "default: all three)")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples",
                        help="examples gallery folder (written with the MVSA-Single demo)")
    parser.add_argument("--posts", type=int, default=1000, help="synthetic posts to generate per dataset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the weights depend on it slightly)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers decoding images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from clara.catalog import DEMO_FOLDERS
    from clara.train.demo import build_demos

    datasets = tuple(dict.fromkeys(args.dataset or DEMO_FOLDERS))
    unknown = [d for d in datasets if d not in DEMO_FOLDERS]
    if unknown:
        return report_error(PROG, f"no demo for {', '.join(unknown)}; choose from {', '.join(DEMO_FOLDERS)}")
    for built in build_demos(args.checkpoints_dir, args.examples, datasets, posts=args.posts, epochs=args.epochs,
                             seed=args.seed, threads=args.threads, workers=args.workers):
        gallery = f"; {len(built.examples)} examples in {args.examples}" if built.examples else ""
        print(f"{built.dataset} demo: {built.checkpoint} ({built.size_bytes / 2**20:.1f} MB); test accuracy "
              f"{built.metrics['accuracy']:.3f}, f1_macro {built.metrics['f1_macro']:.3f}{gallery}; "
              f"{built.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
