"""Write a synthetic dataset in a raw format whose labels need both the image and the text.

    python scripts/make_synthetic.py --format mvsa_single --out data/synthetic_single --n 600 --seed 0

See clara/data/synthetic.py for the cues, the label rules and the planted quirks; the folder's
synthetic_meta.json records what a correct loader keeps and skips.
"""
from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from clara.cli import OneLineParser, program_name, run_main
from clara.data.synthetic import FORMATS, write_synthetic

PROG = program_name("make_synthetic.py")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--format", required=True, choices=FORMATS, help="raw format to write")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--n", required=True, type=int, help="number of posts")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--image-size", type=int, default=96, help="square image side in px (default 96)")
    parser.add_argument("--no-quirks", action="store_true",
                        help="write clean files only (no BOM/CRLF/broken files/disagreeing annotations)")
    parser.add_argument("--realistic", action="store_true",
                        help="photo-sized JPEGs (500x375 to 1024x768) and tweet-length texts, for benchmarks")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds an earlier synthetic dataset")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be a positive number of posts, got {args.n}")
    try:
        summary = write_synthetic(args.format, args.out, args.n, seed=args.seed, image_size=args.image_size,
                                  quirks=not args.no_quirks, realistic=args.realistic, overwrite=args.overwrite)
    except FileExistsError as exc:
        hint = "" if args.overwrite else " (pass --overwrite to replace an earlier synthetic dataset)"
        parser.error(f"{exc}{hint}")
    except ValueError as exc:
        parser.error(str(exc))
    classes = ", ".join(f"{label} {count}" for label, count in summary["true_class_counts"].items())
    kept = ", ".join(f"{name} {counts['total']}" for name, counts in summary["expected"].items())
    print(f"wrote {args.format} ({args.n} posts: {classes}) to {args.out}; expected kept by a loader: {kept}; "
          f"details in {args.out / 'synthetic_meta.json'}")
    return 0


def run() -> NoReturn:
    """`python scripts/make_synthetic.py`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
