"""The demo runs the dashboard opens on, one per dataset (MVSA-Single, MVSA-Multiple, HFM), and the
examples gallery: tiny encoders trained reproducibly on synthetic posts in each dataset's raw format
(clara.data.synthetic), whose label needs both the picture's coloured square and the text's cue
word. Not sentiment models: they give a fresh, offline clone a model every page works on and a
results folder per dataset for the Metrics page. Here in the training package because building
one trains (scripts/make_demo_checkpoint.py is its command)."""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from clara.batch import PREDICTIONS_FILE, read_predictions, write_predictions_csv
from clara.catalog import DEMO_FOLDERS
from clara.checkpoint import WEIGHTS_FILE, LoadedCheckpoint, load_checkpoint, save_checkpoint
from clara.config import Config, get_preset
from clara.data.provenance import describe_data_folder
from clara.data.synthetic import read_meta, write_synthetic
from clara.evaluate import summary_metrics
from clara.inference import Predictor
from clara.train import loop
from clara.train.tiny import TINY_MODEL

GALLERY_DATASET = "mvsa_single"  # the examples gallery comes from this demo (the one the app opens on)
# Over every dataset's preset: the tiny model setting (its small fusion and heads keep each
# checkpoint at a few MB; the default 512-wide fusion is 56 MB); the paper's token co-attention
# (the presets follow the notebooks' pooled fusion), so that the Attention page has token-to-patch
# maps to draw.
SETTINGS = {
    **TINY_MODEL, "model.fusion": "token",
    "train.batch_size": "32", "train.eval_batch_size": "128", "train.lr": "3e-3", "train.warmup_ratio": "0.05",
    "train.grad_accum_steps": "1", "train.mixed_precision": "no", "data.check_images": "false",
}
# Per-dataset changes to the preset, the rest of which is kept: MVSA-Multiple's ~98 % negative
# draws are tuned to its rare real negatives, not to the synthetic data's balanced classes; HFM,
# starting from trained encoders (ENCODERS_FROM), is done in an epoch or two.
DATASET_SETTINGS: dict[str, dict[str, str]] = {
    "mvsa_single": {},
    "mvsa_multiple": {"train.sampler": "weighted", "train.class_weights": "inverse_frequency",
                      "train.negative_mixup_prob": "0"},
    "hfm": {"train.patience": "2"},
}
# HFM's synthetic label (sarcastic iff the cues disagree) gives neither modality alone any signal,
# so encoders trained from random weights get no gradient to start from (measured: chance after 10
# epochs). Its demo starts from the MVSA-Single demo's encoders and tokenizer, as real runs start
# from pretrained CLIP and DeBERTa; its fusion and heads learn HFM's rule from scratch.
ENCODERS_FROM = {"hfm": "mvsa_single"}
ENCODER_PREFIXES = ("vision.", "text.")  # the two towers' tensors in a model's state dict
SOURCE_SCRIPT = "scripts/make_demo_checkpoint.py"
EXAMPLES_PER_CLASS = {"positive": 1, "neutral": 2, "negative": 1}
MEME_SIDE = 384  # the meme example is upscaled so that its caption is large enough for OCR
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                   "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf")


@dataclass
class DemoBuild:
    dataset: str
    checkpoint: Path
    metrics: dict[str, Any]  # test metrics of the best epoch
    examples: list[dict[str, Any]]  # the entries of examples.json (none unless this demo writes the gallery)
    size_bytes: int  # of the checkpoint folder
    seconds: float


def build_demos(checkpoints_dir: str | Path, examples_dir: str | Path | None,
                datasets: tuple[str, ...] = tuple(DEMO_FOLDERS), **options: Any) -> Iterator[DemoBuild]:
    """Build the demo of each of `datasets` into `checkpoints_dir/<DEMO_FOLDERS[dataset]>/`, one
    after the other (yielded as each is done); the MVSA-Single one also writes the gallery to
    `examples_dir` (unless it is None)."""
    for dataset in datasets:
        donor = ENCODERS_FROM.get(dataset)
        yield build_demo(dataset, Path(checkpoints_dir) / DEMO_FOLDERS[dataset],
                         examples_dir if dataset == GALLERY_DATASET else None,
                         encoders_from=Path(checkpoints_dir) / DEMO_FOLDERS[donor] if donor else None, **options)


def build_demo(dataset: str, out: str | Path, examples_dir: str | Path | None = None, posts: int = 1000,
               epochs: int = 10, seed: int = 0, threads: int = 1, workers: int = 1,
               encoders_from: str | Path | None = None) -> DemoBuild:
    """Train the demo of `dataset` on `posts` synthetic posts and write `out/` (checkpoint with
    source.kind "demo" and a synthetic "data" record, `out/results/` holding the test evaluation
    and its images) and, when given, the gallery `examples_dir/`. `encoders_from`: a checkpoint
    whose encoders and tokenizer the model starts from (ENCODERS_FROM). `workers`: DataLoader
    workers (1 decodes images on the second core while the first one trains).

    The weights are identical for the same arguments, `threads` (torch threads) and software on
    the same machine; config.json records the date."""
    out = Path(out)
    if encoders_from is not None and not (Path(encoders_from) / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"the {dataset} demo starts from the encoders of {encoders_from}, which is "
                                "missing: build that demo first")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clara_demo_") as tmp:
        data_dir, run_dir = Path(tmp) / "data", Path(tmp) / "run"
        write_synthetic(dataset, data_dir, posts, seed=seed, quirks=False)
        cfg = get_preset(dataset).override({
            **SETTINGS, "train.num_workers": str(workers), "train.epochs": str(epochs), "train.patience": str(epochs),
            **DATASET_SETTINGS[dataset],
            "data.data_dir": str(data_dir), "train.output_dir": str(run_dir), "train.seed": str(seed)})
        with _starting_encoders(load_checkpoint(encoders_from, device="cpu") if encoders_from else None):
            result = loop.train(cfg, progress=False)

        # Re-save the best epoch as the demo: marked as such, without the temporary paths.
        loaded = load_checkpoint(result.best_dir)
        saved_cfg = cfg.override({"data.data_dir": "none", "train.output_dir": "."})
        data = {**describe_data_folder(data_dir), "dir": None,
                "note": f"generated in a temporary folder by {SOURCE_SCRIPT}"}
        source = {"kind": "demo", "script": SOURCE_SCRIPT,
                  "data": f"synthetic {dataset}: {posts} posts, seed {seed} (clara.data.synthetic)",
                  "note": "tiny encoders on synthetic data: not a sentiment model"}
        if encoders_from is not None:
            source["encoders_from"] = f"checkpoints/{Path(encoders_from).name}"
        best_val = json.loads((result.best_dir / "metrics.json").read_text(encoding="utf-8"))
        save_checkpoint(out, loaded.model, loaded.tokenizer, saved_cfg,
                        metrics={**best_val, "test": summary_metrics(result.metrics)}, history=result.history,
                        extra={"source": source, "data": data, "best_epoch": result.metrics.get("best_epoch")})
        write_demo_results(result.results_dir, out / "results", f"checkpoints/{out.name}", data)
        examples = write_examples(out, out / "results", data_dir, Path(examples_dir)) if examples_dir else []
    return DemoBuild(dataset=dataset, checkpoint=out, metrics=result.metrics, examples=examples,
                     size_bytes=folder_size(out), seconds=time.perf_counter() - started)


@contextlib.contextmanager
def _starting_encoders(donor: LoadedCheckpoint | None) -> Iterator[None]:
    """While training, the model the loop creates has the donor's tokenizer and encoder weights."""
    if donor is None:
        yield
        return
    create_model = loop.create_model
    encoders = {key: value for key, value in donor.model.state_dict().items() if key.startswith(ENCODER_PREFIXES)}

    def create_with_encoders(cfg: Config, **_: Any) -> tuple[torch.nn.Module, Any]:
        model, tokenizer = create_model(cfg, tokenizer=donor.tokenizer)
        expected = {key for key in model.state_dict() if key.startswith(ENCODER_PREFIXES)}
        if expected != set(encoders):
            raise ValueError(f"the starting encoders do not match this model's ({len(expected ^ set(encoders))} "
                             "tensors differ)")
        model.load_state_dict(encoders, strict=False)
        return model, tokenizer

    loop.create_model = create_with_encoders  # train() builds its model through this name
    try:
        yield
    finally:
        loop.create_model = create_model


def write_demo_results(source: Path, target: Path, checkpoint_name: str, data: dict[str, Any]) -> None:
    """Copy the test results, with the test images, so that the folder stands on its own."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != PREDICTIONS_FILE:
            shutil.copy2(path, target / path.name)
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    metrics["checkpoint"] = checkpoint_name  # the folder above this one (was a temporary path)
    metrics["data"] = data  # what the evaluated data was: synthetic
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    images = target / "images"
    images.mkdir()
    labels = metrics["labels"]
    rows = []
    for record in read_predictions(source / PREDICTIONS_FILE, labels):
        original = Path(record.image_path)
        copy = images / f"{record.id}{original.suffix.lower()}"
        shutil.copy2(original, copy)
        record.image_path = copy.relative_to(target).as_posix()  # relative to the results folder
        rows.append(asdict(record))
    write_predictions_csv(target / PREDICTIONS_FILE, rows, labels)


def write_examples(checkpoint: Path, results: Path, data_dir: Path, examples_dir: Path) -> list[dict[str, Any]]:
    """Correctly classified test posts per class, plus a meme-style copy of one with its text drawn in."""
    meta = read_meta(data_dir)["posts"]
    labels = json.loads((results / "metrics.json").read_text(encoding="utf-8"))["labels"]
    correct = [asdict(record) for record in read_predictions(results / PREDICTIONS_FILE, labels) if record.correct]
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
    predictor = Predictor.from_pretrained(checkpoint, device="cpu")
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
