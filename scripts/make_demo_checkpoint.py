"""Rebuild the demo checkpoint the dashboard opens on, its results and the examples gallery.

    python scripts/make_demo_checkpoint.py            # writes checkpoints/demo/ and examples/

The demo is a CLARA model with *tiny* encoders trained on synthetic MVSA-Single posts
(clara.data.synthetic): a coloured square in a noisy picture plus a text with one cue word, where
the label needs both (agreeing cues give their polarity, disagreeing cues give neutral). It is
not a sentiment model; it exists so that a fresh clone, offline, has a model every page works on.

Outputs (a few MB, deterministic weights for a given thread count; config.json records the date):
- checkpoints/demo/: config.json (source.kind = "demo"), model.safetensors, tokenizer/,
  metrics.json, history.json;
- checkpoints/demo/results/: the test evaluation (metrics.json, plots, predictions.csv) with the
  test images under images/, so the Metrics and Errors pages have content;
- examples/: a few test posts (one per class and a meme-style image whose text is in the picture)
  listed in examples.json for the Predict page's gallery.
Runs in about a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from clara.checkpoint import load_checkpoint, save_checkpoint
from clara.cli import OneLineParser
from clara.config import get_preset
from clara.data.synthetic import read_meta, write_synthetic
from clara.evaluate import summary_metrics
from clara.inference import Predictor
from clara.train import train

ROOT = Path(__file__).resolve().parents[1]
DATASET = "mvsa_single"
# Small fusion and heads keep the checkpoint at a few MB (the default 512-wide fusion is 56 MB).
SETTINGS = {
    "model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4",
    "train.batch_size": "32", "train.eval_batch_size": "128", "train.lr": "3e-3", "train.warmup_ratio": "0.05",
    "train.mixed_precision": "no", "data.check_images": "false",
    "train.num_workers": "1",  # decode images on the second core while the first one trains
}
EXAMPLES_PER_CLASS = {"positive": 1, "neutral": 2, "negative": 1}
MEME_SIDE = 384  # the meme example is upscaled so that its caption is large enough for OCR
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                   "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser("make_demo_checkpoint.py", __doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "demo", help="checkpoint folder")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples", help="examples gallery folder")
    parser.add_argument("--posts", type=int, default=1000, help="synthetic posts to generate")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the weights depend on it slightly; 1 is reproducible everywhere)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clara_demo_") as tmp:
        data_dir, run_dir = Path(tmp) / "data", Path(tmp) / "run"
        write_synthetic(DATASET, data_dir, args.posts, seed=args.seed, quirks=False)
        cfg = get_preset(DATASET).override({
            **SETTINGS, "data.data_dir": str(data_dir), "train.output_dir": str(run_dir),
            "train.epochs": str(args.epochs), "train.patience": str(args.epochs), "train.seed": str(args.seed)})
        result = train(cfg, progress=False)

        # Re-save the best epoch as the demo: marked as such, without the temporary paths.
        loaded = load_checkpoint(result.best_dir)
        saved_cfg = cfg.override({"data.data_dir": "none", "train.output_dir": "."})
        source = {"kind": "demo", "script": "scripts/make_demo_checkpoint.py",
                  "data": f"synthetic {DATASET}: {args.posts} posts, seed {args.seed} (clara.data.synthetic)",
                  "note": "tiny encoders on synthetic data: not a sentiment model"}
        best_val = json.loads((result.best_dir / "metrics.json").read_text(encoding="utf-8"))
        save_checkpoint(args.out, loaded.model, loaded.tokenizer, saved_cfg,
                        metrics={**best_val, "test": summary_metrics(result.metrics)}, history=result.history,
                        extra={"source": source, "best_epoch": result.metrics.get("best_epoch")})
        write_demo_results(result.results_dir, args.out / "results")
        examples = write_examples(args.out, args.out / "results", data_dir, args.examples)
    print(f"demo checkpoint: {args.out} ({folder_size(args.out) / 2**20:.1f} MB); test accuracy "
          f"{result.metrics['accuracy']:.3f}, f1_weighted {result.metrics['f1_weighted']:.3f}; "
          f"{len(examples)} examples in {args.examples}; {time.perf_counter() - started:.0f} s")
    return 0


def write_demo_results(source: Path, target: Path) -> None:
    """Copy the test results, with the test images, so that the folder stands on its own."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "predictions.csv":
            shutil.copy2(path, target / path.name)
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    metrics["checkpoint"] = "checkpoints/demo"  # the folder above this one (was a temporary path)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    images = target / "images"
    images.mkdir()
    with (source / "predictions.csv").open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        original = Path(row["image_path"])
        copy = images / f"{row['id']}{original.suffix.lower()}"
        shutil.copy2(original, copy)
        row["image_path"] = copy.relative_to(target).as_posix()  # relative to the results folder
    with (target / "predictions.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_examples(checkpoint: Path, results: Path, data_dir: Path, examples_dir: Path) -> list[dict]:
    """Correctly classified test posts per class, plus a meme-style copy of one with its text drawn in."""
    meta = read_meta(data_dir)["posts"]
    with (results / "predictions.csv").open(encoding="utf-8", newline="") as file:
        correct = [row for row in csv.DictReader(file) if row["label"] == row["predicted"]]
    chosen = []
    for label, count in EXAMPLES_PER_CLASS.items():
        rows = [r for r in correct if r["label"] == label]
        if label == "neutral":  # one of each disagreement: positive word + negative picture, and the reverse
            rows = sorted(rows, key=lambda r: meta[r["id"]]["text_cue"])
            rows = [next(r for r in rows if meta[r["id"]]["text_cue"] == cue) for cue in ("positive", "negative")
                    if any(meta[r2["id"]]["text_cue"] == cue for r2 in rows)]
        chosen += rows[:count]
    if examples_dir.exists():
        shutil.rmtree(examples_dir)
    examples_dir.mkdir(parents=True)
    entries = []
    for row in chosen:
        post = meta[row["id"]]
        name = f"{row['label']}_{row['id']}"
        shutil.copy2(results / row["image_path"], examples_dir / f"{name}.jpg")
        entries.append({"name": name, "image": f"{name}.jpg", "text": row["text"], "label": row["label"],
                        "note": f"{cue_colour(post['image_cue'])} square, {post['text_cue']} word "
                                f"'{post['word']}' → {row['label']}"})

    # The meme: a positive post's picture, upscaled, with its text as a white outlined caption and
    # no post text, so that the text reaches the model only through OCR (or typing).
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    for row in (r for r in correct if r["label"] == "positive" and r not in chosen):
        post = meta[row["id"]]
        meme = draw_meme(Image.open(results / row["image_path"]).convert("RGB"), row["text"])
        [prediction] = predictor.predict([meme], [row["text"]])
        if prediction.label != row["label"]:
            continue  # the caption must not hide the cue from the model
        name = f"meme_{row['id']}"
        meme.save(examples_dir / f"{name}.jpg", quality=90)
        entries.append({"name": name, "image": f"{name}.jpg", "text": "", "label": row["label"],
                        "note": f"meme: the text is in the picture (OCR reads it); {cue_colour(post['image_cue'])} "
                                f"square, word '{post['word']}' → {row['label']}"})
        break
    (examples_dir / "examples.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    return entries


def cue_colour(cue: str) -> str:
    return {"positive": "yellow", "negative": "blue"}[cue]


def draw_meme(image: Image.Image, text: str) -> Image.Image:
    """`image` upscaled with `text` as an Impact-style caption: white letters, black outline, top and bottom."""
    picture = image.resize((MEME_SIDE, MEME_SIDE), Image.Resampling.BICUBIC)
    font = load_font(30)
    words = text.upper().split()
    halves = [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2:])]
    draw = ImageDraw.Draw(picture)
    for line, y in zip(halves, (6, MEME_SIDE - 44)):
        size = 30
        while draw.textlength(line, font=font) > MEME_SIDE - 16 and size > 12:
            size -= 2
            font = load_font(size)
        draw.text((MEME_SIDE // 2, y), line, font=font, fill="white", stroke_width=3, stroke_fill="black", anchor="ma")
        font = load_font(30)
    return picture


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


if __name__ == "__main__":
    sys.exit(main())
