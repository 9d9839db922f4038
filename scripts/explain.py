"""Explain one prediction: heatmap overlays, highlighted words and all scores.

    python scripts/explain.py --checkpoint checkpoints/clara_mvsa_single_best --image post.jpg \
        --text "what a lovely day" --out explanations/post [--methods text_ig image_ig] [--target negative]

Writes to --out: overlay_<method>.png for each image method computed (attention, relevancy,
image_ig, occlusion; drawn on the original image, the center crop the model sees highlighted),
words.html (each word shaded by its score, one row per method) and scores.json (prediction,
per-word and per-patch scores, convergence deltas, modality share, deletion curves, timings).
Bad input (missing checkpoint, unreadable image, empty text, unknown method or label) exits
with status 2 and one line saying what to fix.
"""
from __future__ import annotations

import html
import json
import sys
from pathlib import Path

import numpy as np

from clara.cli import OneLineParser, report_error
from clara.explain import METHODS, Explainer, Explanation, overlay

# |sum of attributions - (p(input) - p(baseline))| above this (in probability) is worth more steps
LARGE_DELTA = 0.05


def word_highlight_html(explanation: Explanation) -> str:
    """One row per method; red shades support the target class, blue shades oppose it."""
    rows = []
    for method, scores in explanation.word_scores().items():
        peak = float(np.max(np.abs(scores))) if len(scores) else 0.0
        cells = []
        for word, score in zip(explanation.words, scores):
            strength = abs(float(score)) / peak if peak > 0 else 0.0
            colour = "220,40,40" if score >= 0 else "40,90,220"
            cells.append(f'<span title="{float(score):.4g}" style="background: rgba({colour},{strength:.2f}); '
                         f'padding: 2px 3px; margin: 1px; border-radius: 3px">{html.escape(word)}</span>')
        kind = "attention" if method == "attention" else "explanation"
        rows.append(f"<tr><th>{html.escape(method)}<br><small>{kind}</small></th><td>{' '.join(cells)}</td></tr>")
    probs = ", ".join(f"{label} {p:.3f}" for label, p in explanation.probs.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>clara explanation</title></head>"
            "<body style='font-family: sans-serif'>"
            f"<p>predicted <b>{html.escape(explanation.label)}</b> ({html.escape(probs)}); "
            f"explained class <b>{html.escape(explanation.target)}</b></p>"
            f"<table cellpadding='6'>{''.join(rows)}</table></body></html>\n")


def _fail(message: str) -> int:
    return report_error("explain.py", message)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser("explain.py", __doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (config.json, weights)")
    parser.add_argument("--image", required=True, type=Path, help="image file of the post")
    parser.add_argument("--text", required=True, help="text of the post")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help=f"any of {', '.join(METHODS)} (default: all); commas work too")
    parser.add_argument("--target", default=None, help="label to explain (default: the predicted one)")
    parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default 50)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity at full heat (default 0.5)")
    args = parser.parse_args(argv)

    methods = [m for item in args.methods for m in item.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        return _fail(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.steps < 2:
        return _fail(f"--steps must be at least 2, got {args.steps}")
    if not 0.0 <= args.alpha <= 1.0:
        return _fail(f"--alpha must be between 0 and 1, got {args.alpha}")
    if not args.text.strip():
        return _fail("--text is empty; give the post's text")
    if not args.checkpoint.is_dir():
        return _fail(f"checkpoint folder {args.checkpoint} does not exist")
    if args.out.exists() and not args.out.is_dir():
        return _fail(f"--out {args.out} exists and is not a folder")
    from clara.paths import OutputPathError, check_writable_folder

    try:  # before the (slow) explanation, not after it
        check_writable_folder(args.out, "--out")
    except OutputPathError as exc:
        return _fail(str(exc))

    from clara.data.images import ImageError, open_image
    from clara.inference import Predictor

    try:
        image = open_image(args.image)
    except ImageError as exc:
        return _fail(str(exc))
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint)
    except (ValueError, OSError) as exc:  # CheckpointError and friends name the problem
        return _fail(f"cannot load checkpoint {args.checkpoint}: {exc}")
    if args.target is not None and args.target not in predictor.labels:
        return _fail(f"unknown --target {args.target!r}; labels: {', '.join(predictor.labels)}")

    explainer = Explainer(predictor, n_steps=args.steps)
    explanation = explainer.explain(image, args.text, target=args.target, methods=methods,
                                    progress=lambda method, done, total: print(
                                        f"[{done}/{total}] {method}", file=sys.stderr, flush=True))

    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for method, grid in explanation.heatmaps().items():
        path = args.out / f"overlay_{method}.png"
        Image.fromarray(overlay(image, grid, alpha=args.alpha, image_size=explanation.image_size)).save(path)
        written.append(path.name)
    if explanation.word_scores():
        (args.out / "words.html").write_text(word_highlight_html(explanation), encoding="utf-8")
        written.append("words.html")
    (args.out / "scores.json").write_text(json.dumps(explanation.to_dict(), indent=1, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    written.append("scores.json")

    print(f"predicted {explanation.label} (p={explanation.probs[explanation.label]:.3f}); explained "
          f"{explanation.target}")
    for method, reason in explanation.skipped.items():
        print(f"skipped {method}: {reason}")
    for name in ("text_ig", "image_ig"):
        result = getattr(explanation, name)
        if result is not None:
            hint = " - large: rerun with more --steps" if abs(result.convergence_delta) > LARGE_DELTA else ""
            print(f"{name}: convergence delta {result.convergence_delta:+.2e} ({result.n_steps} steps){hint}")
    if explanation.modality_share is not None:
        share = explanation.modality_share
        print(f"modality share: text {share.text:.2f}, image {share.image:.2f} ({share.method})")
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
