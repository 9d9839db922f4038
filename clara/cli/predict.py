"""Predict the sentiment (or sarcasm) of image + text posts with a trained checkpoint.

    python scripts/predict.py --checkpoint checkpoints/clara_mvsa_single_best --image post.jpg --text "what a day" [--json]
    python scripts/predict.py --checkpoint DIR --image meme.jpg --ocr            # the text read from the image
    python scripts/predict.py --checkpoint DIR --csv posts.csv --out predictions.csv
    python scripts/predict.py --checkpoint DIR --input posts.parquet --out scores/      # also .csv, .jsonl, a folder
    torchrun --nproc_per_node 2 scripts/predict.py --checkpoint DIR --input posts.parquet --out scores/
    accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 2 scripts/predict.py ... --device cpu
    python scripts/predict.py --checkpoint DIR --input posts.parquet --out scores/ --engine ray [--ray-address auto]

One post: prints the label, the class probabilities and the uncertainty (--json: one JSON object
with the text-only and image-only probabilities too). --ocr reads the text in the image (clara.ocr:
rapidocr, or tesseract when installed; --ocr tesseract to choose) and the model reads it after
--text, as the app does by default; stderr says which engine read what.

--csv: the input CSV has the columns `image_path` (or `image`) and `text`, optionally `id` and a
true `label` (image paths relative to the CSV's folder, or absolute); the output is clara's
predictions CSV (clara.batch): id, text, image_path, label, predicted, prob_<label>...,
uncertainty, text_truncated, error. A row whose image cannot be used is reported on stderr and in
the error column, and the others are still predicted (exit 0 once the output is written).

--input (a scoring job, clara.scoring_jobs): a CSV, JSONL or Parquet table with the same columns
(in Parquet the image column may hold the image bytes), or a folder of images with optional
`<name>.txt` texts. The output folder gets Parquet shards part-00000.parquet, ... (row, id,
label, predicted, prob_<label>..., text_only_prob_<label>..., image_only_prob_<label>...,
uncertainty, text_truncated, error, error_kind) and _manifest.json. Run the same command again
after a crash: finished shards are kept, the others are scored. Under torchrun or accelerate
launch (on CPUs with configs/accelerate/cpu.yaml) each process takes every n-th shard.
--engine ray runs it on Ray Data (pip install "ray[data]"): a local cluster, or an existing one
with --ray-address (ray.init(address=...)).

Images and texts are checked by the app's rules (clara.inputs). Exit status 2 with one line on
stderr for a missing or bad checkpoint, an unusable image or text (one post), an unusable input,
an output folder holding another job, or an output that cannot be written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from clara.cli import OneLineParser, program_name, report_error, run_main

PROG = program_name("predict.py")
OCR_AUTO = "auto"  # --ocr without an engine: the first installed (clara.ocr.OCR_ENGINES)


def _fail(message: str) -> int:
    return report_error(PROG, message)


def _ocr_engines() -> tuple[str, ...]:
    from clara.ocr import OCR_ENGINES

    return OCR_ENGINES


def _predictor_spec(args: argparse.Namespace, device: str | None = None) -> Any:
    from clara.scoring_jobs import PredictorSpec

    return PredictorSpec(str(args.checkpoint), device=device or args.device, overrides=args.overrides,
                         int8=args.int8, precision=args.precision)  # int8: on CPU


def format_prediction(prediction: Any) -> str:
    probs = "  ".join(f"{label} {p:.3f}" for label, p in prediction.probs.items())
    note = "  (text truncated)" if prediction.text_truncated else ""
    return f"{prediction.label}\n{probs}\nuncertainty {prediction.uncertainty:.3f}{note}"


def predict_one(args: argparse.Namespace) -> int:
    from clara.checkpoint import CheckpointError
    from clara.inputs import InputError, check_text, read_image_file

    try:
        image = read_image_file(args.image).image
        text = check_text(args.text, allow_empty=True)
    except InputError as exc:
        return _fail(str(exc))
    if args.ocr is not None:
        from clara.ocr import OCRUnavailableError

        try:
            text = check_text(_ocr_text(image, text, args.ocr), allow_empty=True)
        except OCRUnavailableError as exc:
            return _fail(f"--ocr: {exc}")
        except InputError as exc:
            return _fail(str(exc))
    try:
        predictor = _predictor_spec(args).load()
    except CheckpointError as exc:
        return _fail(f"bad checkpoint: {exc}")
    [prediction] = predictor.predict([image], [text])
    print(json.dumps(prediction.to_dict(), indent=2) if args.json else format_prediction(prediction))
    return 0


def _ocr_text(image: Any, typed: str, engine: str) -> str:
    """The post text followed by the text OCR reads in `image` (said on stderr). Raises
    clara.ocr.OCRUnavailableError when that engine (or, for OCR_AUTO, every engine) is not installed."""
    from clara import ocr
    from clara.inputs import compose_text

    result = ocr.read_image_text(image, None if engine == OCR_AUTO else engine)
    read = " ".join(result.text.split())
    print(f"{PROG}: text read from the image by OCR ({result.engine}, confidence {result.confidence:.0f}%): "
          f"{read!r}" if read else f"{PROG}: OCR ({result.engine}) found no text in the image", file=sys.stderr)
    return compose_text(typed, read)


def _speed_settings(args: argparse.Namespace) -> tuple[int, int]:
    from clara.scoring_jobs import default_threads, default_workers

    workers = default_workers() if args.num_workers is None else args.num_workers
    return workers, default_threads(workers) if args.threads is None else args.threads


def predict_csv(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from clara.batch import BATCH_COLUMNS, write_predictions_stream
    from clara.checkpoint import CheckpointError
    from clara.inputs import BatchImages, InputError
    from clara.scoring_jobs import CsvSource, score_source

    if args.csv.is_dir():
        return _fail(f"--csv {args.csv} is a folder; give a CSV file")
    if not args.csv.is_file():
        return _fail(f"--csv {args.csv} does not exist")
    if args.out.exists() and args.out.resolve() == args.csv.resolve():
        return _fail(f"--out {args.out} is the input CSV; give another file name")
    try:
        source = CsvSource(args.csv)
    except InputError as exc:
        return _fail(f"{args.csv}: {exc}")
    except OSError as exc:
        return _fail(f"--csv {args.csv}: cannot read it ({exc.strerror or exc})")
    try:
        predictor = _predictor_spec(args).load()
    except CheckpointError as exc:
        return _fail(f"bad checkpoint: {exc}")
    workers, threads = _speed_settings(args)
    torch.set_num_threads(threads)
    # The script's user may read any file: paths are relative to the CSV's folder or absolute.
    images = BatchImages(folder=args.csv.parent, confine=False)
    failed = 0
    with tqdm(total=source.num_rows, unit="rows", desc="predicting", disable=True if args.no_progress else None) as bar:
        def reported(rows: Any) -> Any:
            nonlocal failed
            for row in rows:
                if row["error"]:
                    failed += 1
                    bar.write(f"{PROG}: row {row['row'] + 2}: {row['error']}", file=sys.stderr)  # its line
                bar.update(1)
                yield row

        rows = reported(score_source(source, predictor, images, batch_size=args.batch_size, num_workers=workers))
        try:
            _write_csv(args.out, lambda file: write_predictions_stream(file, rows, predictor.labels, BATCH_COLUMNS))
        except OSError as exc:
            return _fail(f"--out {args.out}: cannot write it ({exc.strerror or exc})")
    if source.skipped.count:
        print(f"{PROG}: {source.skipped.count} malformed line(s) left out (a wrong number of fields), e.g. "
              f"{'; '.join(source.skipped.examples)}", file=sys.stderr)
    print(f"predicted {source.num_rows - failed} of {source.num_rows} rows ({failed} failed); wrote {args.out}",
          file=sys.stderr)
    return 0


def _write_csv(out: Path, write: Any) -> None:
    """`write(file)` into `out`: a regular file is replaced atomically once complete; /dev/stdout, a
    pipe or a symlink is written through, never replaced by a new file."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        with out.open("w", encoding="utf-8", newline="") as file:
            write(file)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            write(file)
        os.replace(temporary, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def predict_job(args: argparse.Namespace) -> int:
    from clara.checkpoint import CheckpointError
    from clara.inputs import InputError
    from clara.scoring_jobs import JobError, JobOptions, open_source, process_group, run_job

    try:
        source = open_source(args.input)
    except InputError as exc:
        return _fail(f"--input {args.input}: {exc}")
    workers, threads = _speed_settings(args)
    options = JobOptions(shard_size=args.shard_size, batch_size=args.batch_size, keep_inputs=args.keep_inputs,
                         num_workers=workers, threads=threads, progress=False if args.no_progress else None)
    rank, world, barrier, device = (0, 1, None, args.device) if args.engine == "ray" else process_group(args.device)
    args.rank = rank  # notes after the job: from the first process only
    spec = _predictor_spec(args, device)
    try:
        if args.engine == "ray":
            from clara.scoring_jobs.ray_engine import RayOptions, run_ray_job

            summary = run_ray_job(source, spec, args.out, options,
                                  RayOptions(address=args.ray_address, concurrency=args.concurrency,
                                             num_cpus=args.num_cpus, num_gpus=args.num_gpus))
        else:
            summary = run_job(source, spec, args.out, options, rank=rank, world=world, barrier=barrier)
    except (JobError, CheckpointError) as exc:
        return _fail(f"bad checkpoint: {exc}" if isinstance(exc, CheckpointError) else str(exc))
    if rank == 0:
        _report(args, summary)
    return 0


def _report(args: argparse.Namespace, summary: Any) -> None:
    for line in summary.lines():
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--image", type=Path, help="image file of one post")
    parser.add_argument("--text", help="text of one post (may be empty)")
    parser.add_argument("--ocr", nargs="?", const=OCR_AUTO, choices=(OCR_AUTO, *_ocr_engines()), metavar="ENGINE",
                        help="one post: read the text in the image and add it after --text (ENGINE: "
                             f"{', '.join(_ocr_engines())}; default: the first installed)")
    parser.add_argument("--json", action="store_true", help="one post: print one JSON object; a job: its summary")
    parser.add_argument("--csv", type=Path, help="batch: input CSV with columns image_path (or image) and text")
    parser.add_argument("--input", type=Path,
                        help="scoring job: a .csv, .jsonl or .parquet table, or a folder of images")
    parser.add_argument("--out", type=Path, help="--csv: the output CSV; --input: the output folder")
    parser.add_argument("--batch-size", type=int, default=16, help="posts per forward pass (default 16)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="scoring job: rows per output shard (default 10000)")
    parser.add_argument("--keep-inputs", action="store_true",
                        help="scoring job: also write each post's text and image path")
    parser.add_argument("--num-workers", type=int,
                        help="DataLoader workers decoding images (default: cores - 1, at most 4)")
    parser.add_argument("--threads", type=int,
                        help="torch threads for the model (default: the cores left after the workers)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is shown on a terminal)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="scoring job: this machine's processes (default) or Ray Data")
    parser.add_argument("--ray-address", help="--engine ray: an existing cluster's address (default: a local one)")
    parser.add_argument("--concurrency", type=int, default=None, help="--engine ray: predictor actors (default 1)")
    parser.add_argument("--num-cpus", type=float, default=None, help="--engine ray: CPUs per actor (default 1)")
    parser.add_argument("--num-gpus", type=float, default=None, help="--engine ray: GPUs per actor (default 0)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                        help="model precision (default: $CLARA_PRECISION, else auto: what this machine runs fastest)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 dynamic quantisation of the Linear layers (CPU only): faster, "
                             "small accuracy cost (docs/BENCHMARKS.md)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of the checkpoint's config when loading it, e.g. "
                             "model.vision_encoder=/models/clip-vit-base-patch32 (published encoders in local "
                             "folders on an offline machine); repeatable")
    args = parser.parse_args(argv)

    if args.ocr is not None and (args.csv is not None or args.input is not None):
        return _fail("--ocr reads the text of one post (--image); rows of --csv/--input are read as they are")
    single = args.image is not None or args.text is not None or args.ocr is not None
    job = args.input is not None
    batch = args.csv is not None or (args.out is not None and not job)
    if single + batch + job != 1 or (job and args.csv is not None):
        return _fail("give either --image and --text (one post), --csv and --out (a CSV of posts), "
                     "or --input and --out (a scoring job)")
    if single and (args.image is None or (args.text is None and args.ocr is None)):
        return _fail("one post needs both --image and --text (--text \"\" for no text), or --image and --ocr "
                     "(the text read from the image)")
    if args.text is None:
        args.text = ""  # --ocr alone: the image's text only
    if batch and (args.csv is None or args.out is None):
        return _fail("batch prediction needs both --csv and --out")
    if job and args.out is None:
        return _fail("a scoring job needs --out, the folder its shards go to")
    for name in ("batch_size", "shard_size", "concurrency"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_workers is not None and args.num_workers < 0:
        return _fail(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.threads is not None and args.threads < 1:
        return _fail(f"--threads must be at least 1, got {args.threads}")
    if not job and (args.engine != "local" or args.shard_size is not None or args.keep_inputs):
        return _fail("--engine, --shard-size and --keep-inputs are for a scoring job (--input)")
    if not args.checkpoint.is_dir():
        return _fail(f"checkpoint folder {args.checkpoint} does not exist")
    from clara.config import parse_assignments
    from clara.outputs import OutputPathError, check_writable_file, check_writable_folder
    from clara.scoring_jobs import DEFAULT_SHARD_SIZE

    args.shard_size = args.shard_size or DEFAULT_SHARD_SIZE
    try:
        if batch:  # checked before the model loads and the rows are predicted
            check_writable_file(args.out, "--out")
        if job:
            if args.out.exists() and not args.out.is_dir():
                return _fail(f"--out {args.out} is a file; a scoring job writes a folder of shards")
            check_writable_folder(args.out, "--out")
    except OutputPathError as exc:
        return _fail(str(exc))

    try:
        args.overrides = parse_assignments(args.assignments)
    except ValueError as exc:
        return _fail(str(exc))
    if single:
        status = predict_one(args)
    else:
        status = predict_csv(args) if batch else predict_job(args)
    from clara.catalog import synthetic_data_note
    # Errors stay one line; under torchrun / accelerate launch only the first process adds the note.
    note = synthetic_data_note(args.checkpoint) if status == 0 and getattr(args, "rank", 0) == 0 else None
    if note:  # a demo / synthetic-data run is not a sentiment model
        print(note, file=sys.stderr)
    return status


def run() -> NoReturn:
    """The console script `clara-predict`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)

