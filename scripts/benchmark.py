"""Benchmark CLARA: training samples/s with the published settings vs ours (interleaved), data
loading, prediction latency of each inference path (interleaved), one explanation at the library's
defaults, the precision probe's decision and peak memory (clara/train/benchmark.py).

    python scripts/make_synthetic.py --format mvsa_single --out /tmp/bench/mvsa --n 240 --no-quirks --realistic
    python scripts/benchmark.py --encoders random-full --dataset mvsa_single --data-dir /tmp/bench/mvsa \\
        --steps 3 --batch-size 16 --device cpu --json bench.json
    python scripts/benchmark.py --quality --dataset mvsa_single --data-dir /tmp/bench/tiny --json quality.json

--quality trains tiny-encoder models with and without each kept optimisation and prints their val
and test metrics side by side (the check that a speed-up does not change what is learned).
Exit status: 0 done, 1 a measurement failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from clara.cli import OneLineParser, report_error, run_main  # noqa: E402
from clara.config import DATASETS  # noqa: E402
from clara.outputs import OutputPathError, check_writable_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser("benchmark.py", __doc__)
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset format and preset")
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset folder in its raw format")
    parser.add_argument("--encoders", default="random-full", choices=("random-full", "tiny", "published"),
                        help="random-full (full-size architectures, random weights; default) or tiny")
    parser.add_argument("--steps", type=int, default=3, help="measured training steps per settings (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="unmeasured steps first (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    parser.add_argument("--predict-runs", type=int, default=20, help="single-post prediction calls timed (default 20)")
    parser.add_argument("--no-explain", action="store_true", help="skip the explanation timing")
    parser.add_argument("--no-train", action="store_true", help="skip the training measurement")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 dynamic quantisation check")
    parser.add_argument("--no-predictor-memory", action="store_true",
                        help="skip the peak memory of one Predictor (measured in a process of its own)")
    parser.add_argument("--cache-dir", help="image cache folder (default: a folder in the temp dir)")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--quality", action="store_true",
                        help="instead: tiny-encoder trainings with and without each optimisation, metrics side by side")
    parser.add_argument("--quality-epochs", type=int, default=6)
    parser.add_argument("--quality-seeds", default="1,2", help="comma-separated seeds (default 1,2)")
    parser.add_argument("--quality-variants", help="comma-separated names from "
                        "clara.train.benchmark_quality.QUALITY_VARIANTS "
                                                   "(default: every fp32 variant; ours_bf16 in an invocation of its own)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/benchmark_quality"),
                        help="--quality: where the short runs write their checkpoints")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "batch_size", "predict_runs"):
        if getattr(args, name) < 1:
            return report_error("benchmark.py", f"--{name.replace('_', '-')} must be at least 1")
    if not args.data_dir.is_dir():
        return report_error("benchmark.py", f"--data-dir {args.data_dir} is not a folder")
    if args.json is not None:
        try:  # before minutes of measuring, not after
            check_writable_file(args.json, "--json")
        except OutputPathError as exc:
            return report_error("benchmark.py", exc)
    from clara.data import DatasetError
    from clara.train import benchmark, benchmark_quality

    if args.quality:
        seeds = [int(s) for s in args.quality_seeds.split(",") if s]
        variants = args.quality_variants.split(",") if args.quality_variants else None
        unknown = set(variants or []) - set(benchmark_quality.QUALITY_VARIANTS)
        if unknown:
            return report_error("benchmark.py", f"unknown --quality-variants {sorted(unknown)}; choose from "
                                                f"{', '.join(benchmark_quality.QUALITY_VARIANTS)}")
        rows = benchmark_quality.compare_quality(args.dataset, str(args.data_dir), str(args.output_dir),
                                                 epochs=args.quality_epochs, seeds=seeds,
                                                 batch_size=args.batch_size, variants=variants)
        print(benchmark_quality.format_quality(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        return 0

    options = benchmark.BenchmarkOptions(
        dataset=args.dataset, data_dir=str(args.data_dir), encoders=args.encoders, device=args.device,
        steps=args.steps, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
        predict_runs=args.predict_runs, explain=not args.no_explain, train=not args.no_train,
        cache_dir=args.cache_dir, threads=args.threads, quantize_check=not args.no_int8,
        predictor_memory=not args.no_predictor_memory)
    try:
        report = benchmark.run_benchmark(options, log=lambda message: print(message, file=sys.stderr, flush=True))
    except DatasetError as exc:  # the folder is not the dataset: a usage error
        return report_error("benchmark.py", f"--data-dir {args.data_dir}: {exc}")
    except (RuntimeError, ValueError) as exc:
        report_error("benchmark.py", exc)
        return 1
    print(benchmark.format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    run_main("benchmark.py", main)
