"""Explain one prediction: heatmap overlays, highlighted words and all scores.

    python scripts/explain.py --checkpoint checkpoints/clara_mvsa_single_best --image post.jpg \
        --text "what a lovely day" --out explanations/post [--methods text_ig image_ig] [--target negative]

Defaults (methods, integration steps) are the library's, clara.explain.EXPLAIN_DEFAULTS, which the
dashboard reads too; deletion curves only when asked for (--methods ... deletion).

Writes to --out: overlay_<method>.png for each image method computed (attention, relevancy,
image_ig, occlusion; drawn on the original image, the centre crop the model sees outlined, with a
labelled colour bar: sequential for attention/relevancy, diverging around 0 for signed scores),
words.html (each word shaded by its score, one row per method: green for the explained class, red
against it) and scores.json (prediction, per-word and per-patch scores, convergence deltas,
modality share, deletion curves, timings).
Bad input (missing checkpoint, unreadable image, empty text, unknown method or label) exits
with status 2 and one line saying what to fix.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

from clara.cli import OneLineParser, program_name, report_error, run_main
from clara.explain import EXPLAIN_DEFAULTS, METHODS, Explainer
from clara.explain.render import words_page_html

PROG = program_name("explain.py")


def _fail(message: str) -> int:
    return report_error(PROG, message)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (config.json, weights)")
    parser.add_argument("--image", required=True, type=Path, help="image file of the post")
    parser.add_argument("--text", required=True, help="text of the post")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--methods", nargs="+", default=list(EXPLAIN_DEFAULTS.methods),
                        help=f"any of {', '.join(METHODS)} (default: {' '.join(EXPLAIN_DEFAULTS.methods)}); "
                             "commas work too")
    parser.add_argument("--target", default=None, help="label to explain (default: the predicted one)")
    parser.add_argument("--steps", type=int, default=EXPLAIN_DEFAULTS.n_steps,
                        help=f"integrated-gradients evaluations to start with, refined until the completeness "
                             f"delta converges (default {EXPLAIN_DEFAULTS.n_steps})")
    parser.add_argument("--max-steps", type=int, default=None,
                        help=f"evaluations at most (default {EXPLAIN_DEFAULTS.max_steps}, or --steps if larger; "
                             "equal to --steps: no refinement)")
    parser.add_argument("--alpha", type=float, default=0.7, help="overlay opacity at full heat (default 0.7)")
    args = parser.parse_args(argv)

    methods = [m for item in args.methods for m in item.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        return _fail(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.steps < 2:
        return _fail(f"--steps must be at least 2, got {args.steps}")
    if args.max_steps is not None and args.max_steps < args.steps:
        return _fail(f"--max-steps ({args.max_steps}) must be at least --steps ({args.steps})")
    if not 0.0 <= args.alpha <= 1.0:
        return _fail(f"--alpha must be between 0 and 1, got {args.alpha}")
    if not args.text.strip():
        return _fail("--text is empty; give the post's text")
    if not args.checkpoint.is_dir():
        return _fail(f"checkpoint folder {args.checkpoint} does not exist")
    if args.out.exists() and not args.out.is_dir():
        return _fail(f"--out {args.out} exists and is not a folder")
    from clara.outputs import OutputPathError, check_writable_folder

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

    explainer = Explainer(predictor, n_steps=args.steps, max_steps=args.max_steps)
    explanation = explainer.explain(image, args.text, target=args.target, methods=methods,
                                    progress=lambda method, done, total: print(
                                        f"[{done}/{total}] {method}", file=sys.stderr, flush=True))

    from clara.explain.colours import MAP_SCALES
    from clara.explain.plots import heatmap_figure, save_figure

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for method, grid in explanation.heatmaps().items():
        scale = MAP_SCALES[method]
        figure = heatmap_figure(image, grid, signed=scale.signed, label=scale.label,
                                image_size=explanation.image_size, opacity=args.alpha,
                                title=scale.title if method == "attention"  # raw attention explains no class
                                else f"{scale.title} · explained class: {explanation.target}")
        written.append(save_figure(figure, args.out / f"overlay_{method}.png").name)
    if explanation.word_scores():
        page = words_page_html(explanation.words, explanation.word_scores(), explanation.label, explanation.probs,
                               explanation.target)
        (args.out / "words.html").write_text(page, encoding="utf-8")
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
            hint = "" if result.converged else " - not converged: rerun with a larger --max-steps"
            print(f"{name}: convergence delta {result.convergence_delta:+.2e} against an output change of "
                  f"{result.output_change:+.3f} ({result.n_steps} steps){hint}")
    if explanation.modality_share is not None:
        share = explanation.modality_share
        print(f"modality share: text {share.text:.2f}, image {share.image:.2f} ({share.method})")
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


def run() -> NoReturn:
    """The console script `clara-explain`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
