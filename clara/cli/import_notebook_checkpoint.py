"""Convert a CLARA authors' notebook checkpoint into our checkpoint folder.

    python scripts/import_notebook_checkpoint.py --pt artifacts_clara/clara_mvsa_single.pt --dataset mvsa_single
        --out checkpoints/notebook_mvsa_single --tokenizer-from artifacts_clara/tokenizer_deberta
    python scripts/import_notebook_checkpoint.py --pt clara_mvsa_multi.pt --dataset mvsa_multiple
        --out checkpoints/notebook_mvsa_multiple --tokenizer-from models/deberta-v3-base
    python scripts/import_notebook_checkpoint.py --pt clara_hfm.pt --dataset hfm --drop-extra-classes
        --out checkpoints/notebook_hfm --tokenizer-from models/deberta-v3-base
    python scripts/import_notebook_checkpoint.py --pt trainable_only.pt --dataset hfm --out OUT
        --encoders-from models    # models/vision (CLIP) and models/text (DeBERTa + its tokenizer)

The file each notebook writes, as it writes it: MVSA-Single artifacts_clara/clara_mvsa_single.pt
({'model_state_dict', 'config', metrics}), MVSA-Multiple clara_mvsa_multi.pt (the bare state
dict), HFM clara_hfm.pt ({'model_state', 'cfg', 'epoch', 'best_val_f1', 'history'}); transformers
4.x and 5.x key names alike. Any other layout is refused with the keys looked for and three lines
of Python that re-save it. The file is read with torch.load(weights_only=True) only. LoRA alpha
and the fusion head count, which the weights do not show, come from the notebook's CONFIG; a bare
state dict has none, so the published values are assumed and config.json's source says so.

The model uses the notebooks' pooled fusion and heads; every key of the file must map onto it, or
nothing is written and the unmatched keys are listed.

Encoders: a file with all weights (what the notebooks saved) becomes a self-contained checkpoint;
only the tokenizer comes from elsewhere: --tokenizer-from FOLDER (a save_pretrained folder of the
notebook's DeBERTa-v3 tokenizer, e.g. MVSA-Single's artifacts_clara/tokenizer_deberta), else the
hub (fails offline). With --encoders-from the base encoders come from there instead (the file's
frozen weights must equal theirs) and the checkpoint stores only the trained weights. A file with
only the trainable weights takes its base encoders from --encoders-from (a folder with vision/
and text/ subfolders, or VISION,TEXT as two hub ids or folders), else from the hub ids in the
notebook's CONFIG or the preset (fails offline: pass a local folder). Tiny test encoders have no
published tokenizer: they need --tokenizer-from.

The HFM notebook trained 3 outputs for HFM's 2 labels (its parameter count shows it); such a
file is refused unless --drop-extra-classes, which drops output 2 from the heads and the
feedback input. The result is close to the notebook's outputs but not identical (the notebook's
softmaxes also covered the dropped class), and config.json's source says "exact": false.

The checkpoint records the source file and its sha256 in config.json ("source"), so the app
lists it as imported from a notebook.
Exit status: 0 done, 2 the file or the arguments cannot be used (one line; unmatched keys follow).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from clara.cli import OneLineParser, program_name, report_error, run_main
from clara.config import DATASETS, LABELS

PROG = program_name("import_notebook_checkpoint.py")


def fail(message: str, details: list[str] | None = None) -> NoReturn:
    sys.exit(report_error(PROG, message, details or ()))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(PROG, __doc__)
    parser.add_argument("--pt", type=Path, required=True,
                        help="the notebook's .pt file (clara_mvsa_single.pt, clara_mvsa_multi.pt, clara_hfm.pt)")
    parser.add_argument("--dataset", required=True, choices=[d for d in DATASETS if LABELS[d]],
                        help="the benchmark it was trained on")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write (must not exist)")
    parser.add_argument("--encoders-from", metavar="ID_OR_FOLDER",
                        help="base encoders: a folder with vision/ and text/ subfolders, or VISION,TEXT")
    parser.add_argument("--tokenizer-from", metavar="FOLDER", help="a saved tokenizer folder")
    parser.add_argument("--drop-extra-classes", action="store_true",
                        help="accept heads with more outputs than the dataset has labels by dropping the trailing "
                             "ones (the HFM notebook trained 3 outputs for 2 labels); not exact, recorded as such")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.pt.is_file():
        fail(f"--pt {args.pt}: no such file")
    from clara.checkpoint import NotebookImportError, import_notebook_checkpoint

    try:
        folder = import_notebook_checkpoint(args.pt, args.dataset, args.out, encoders_from=args.encoders_from,
                                            tokenizer_from=args.tokenizer_from,
                                            drop_extra_classes=args.drop_extra_classes)
    except NotebookImportError as exc:
        first, *rest = str(exc).splitlines()
        fail(first, rest)
    print(f"imported {args.pt} -> {folder}")
    return 0


def run() -> NoReturn:
    """`python scripts/import_notebook_checkpoint.py`: main() with the shared handling of unwritable output."""
    run_main(PROG, main)
