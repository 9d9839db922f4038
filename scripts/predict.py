"""Predict the sentiment (or sarcasm) of image + text posts with a trained checkpoint.

    python scripts/predict.py --checkpoint checkpoints/clara_mvsa_single_best --image post.jpg --text "what a day" [--json]
    python scripts/predict.py --checkpoint DIR --csv posts.csv --out predictions.csv

One post: prints the label, the class probabilities and the uncertainty (--json: one JSON object
with the text-only and image-only probabilities too). Batch: the input CSV has the columns
`image` and `text` (image paths relative to the CSV's folder); the output CSV has one row per
input row: row, image, text, label, prob_<label>..., uncertainty, text_truncated, error. A row
whose image cannot be used is reported on stderr and in the error column, and the others are
still predicted (exit 0 once the output is written). Exit status 2 with one line on stderr for a
missing or bad checkpoint, an unreadable image (one post) or an unusable input CSV.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from clara.cli import OneLineParser, report_error

CSV_COLUMNS = ("image", "text")


def _fail(message: str) -> int:
    return report_error("predict.py", message)


def _load_predictor(args: argparse.Namespace) -> Any:
    from clara.inference import Predictor

    device = "cpu" if args.int8 and args.device is None else args.device  # int8 kernels are CPU-only
    return Predictor.from_checkpoint(args.checkpoint, device=device, overrides=args.overrides, quantize=args.int8)


def format_prediction(prediction: Any) -> str:
    probs = "  ".join(f"{label} {p:.3f}" for label, p in prediction.probs.items())
    note = "  (text truncated)" if prediction.text_truncated else ""
    return f"{prediction.label}\n{probs}\nuncertainty {prediction.uncertainty:.3f}{note}"


def predict_one(args: argparse.Namespace) -> int:
    from clara.checkpoint import CheckpointError
    from clara.data.images import ImageError, open_image

    try:
        image = open_image(args.image)
    except ImageError as exc:
        return _fail(str(exc))
    try:
        predictor = _load_predictor(args)
    except CheckpointError as exc:
        return _fail(f"bad checkpoint: {exc}")
    [prediction] = predictor.predict([image], [args.text])
    print(json.dumps(prediction.to_dict(), indent=2) if args.json else format_prediction(prediction))
    return 0


def read_rows(path: Path) -> list[dict[str, str]]:
    """The input CSV's rows; raises ValueError naming the file for a missing column or bad encoding."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                                 f"{' and '.join(CSV_COLUMNS)} (found: {', '.join(reader.fieldnames or []) or 'nothing'})")
            return [dict(row) for row in reader]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None


def predict_csv(args: argparse.Namespace) -> int:
    from clara.checkpoint import CheckpointError
    from clara.data.images import ImageError, open_image

    if not args.csv.is_file():
        return _fail(f"--csv {args.csv} does not exist")
    try:
        rows = read_rows(args.csv)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    try:
        predictor = _load_predictor(args)
    except CheckpointError as exc:
        return _fail(f"bad checkpoint: {exc}")
    labels = predictor.labels
    columns = ["row", "image", "text", "label", *(f"prob_{name}" for name in labels), "uncertainty",
               "text_truncated", "error"]
    base = args.csv.parent
    # Images are opened chunk by chunk, so a large CSV never holds all its images in memory.
    outputs: list[dict[str, Any]] = []
    failed = 0
    for start in range(0, len(rows), args.batch_size):
        chunk: list[tuple[dict[str, Any], Any, str]] = []
        for offset, row in enumerate(rows[start:start + args.batch_size]):
            line = start + offset + 2  # the header is line 1
            out: dict[str, Any] = {"row": line, "image": row.get("image") or "", "text": row.get("text") or ""}
            outputs.append(out)
            if not out["image"].strip():
                out["error"] = "no image path"
            else:
                try:
                    chunk.append((out, open_image(base / out["image"]), out["text"]))
                    continue
                except ImageError as exc:
                    out["error"] = str(exc)
            failed += 1
            print(f"predict.py: row {line}: {out['error']}", file=sys.stderr)
        if not chunk:
            continue
        predictions = predictor.predict([image for _, image, _ in chunk], [text for _, _, text in chunk],
                                        batch_size=args.batch_size)
        for (out, _, _), prediction in zip(chunk, predictions):
            out.update({"label": prediction.label, "uncertainty": f"{prediction.uncertainty:.6f}",
                        "text_truncated": prediction.text_truncated,
                        **{f"prob_{name}": f"{p:.6f}" for name, p in prediction.probs.items()}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(outputs)
    print(f"predicted {len(rows) - failed} of {len(rows)} rows ({failed} failed); wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser("predict.py", __doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--image", type=Path, help="image file of one post")
    parser.add_argument("--text", help="text of one post (may be empty)")
    parser.add_argument("--json", action="store_true", help="one post: print one JSON object")
    parser.add_argument("--csv", type=Path, help="batch: input CSV with columns image,text")
    parser.add_argument("--out", type=Path, help="batch: output CSV")
    parser.add_argument("--batch-size", type=int, default=16, help="posts per forward pass (default 16)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 dynamic quantisation of the Linear layers (CPU only): faster, "
                             "small accuracy cost (docs/BENCHMARKS.md)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of the checkpoint's config when loading it, e.g. "
                             "model.vision_encoder=/models/clip-vit-base-patch32 (published encoders in local "
                             "folders on an offline machine); repeatable")
    args = parser.parse_args(argv)

    single = args.image is not None or args.text is not None
    batch = args.csv is not None or args.out is not None
    if single == batch:
        return _fail("give either --image and --text (one post) or --csv and --out (batch)")
    if single and (args.image is None or args.text is None):
        return _fail("one post needs both --image and --text (--text \"\" for no text)")
    if batch and (args.csv is None or args.out is None):
        return _fail("batch prediction needs both --csv and --out")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.checkpoint.is_dir():
        return _fail(f"checkpoint folder {args.checkpoint} does not exist")
    from clara.checkpoint import parse_overrides
    from clara.paths import OutputPathError, check_writable_file

    try:
        if batch:  # checked before the model loads and the rows are predicted
            check_writable_file(args.out, "--out")
    except OutputPathError as exc:
        return _fail(str(exc))

    try:
        args.overrides = parse_overrides(args.assignments)
    except ValueError as exc:
        return _fail(str(exc))
    return predict_one(args) if single else predict_csv(args)


if __name__ == "__main__":
    sys.exit(main())
