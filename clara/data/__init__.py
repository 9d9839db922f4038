"""Datasets: raw folders -> typed samples + skip report -> splits -> torch Dataset and collator.

`load_dataset` is the one entry point; it never crashes on a messy post: every post it does not
keep is counted in `LoadedDataset.skipped` under one of SKIP_REASONS, with the first few ids or
lines as examples. A folder that is not a dataset of the asked kind raises DatasetError.

`CLARADataset` and `Collator` (and torch with them) are imported on first use, so loading or
summarising a dataset does not import torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DATASETS, LABELS
from .hfm import load_hfm
from .images import MAX_IMAGE_PIXELS, ImageError, ImageTransform, open_image, verify_images
from .mvsa import load_mvsa
from .splits import PROTOCOL_RULES, apply_splits_file, read_splits_file, stratified_split
from .types import SPLITS, DatasetError, LoadedDataset, Sample, SkipReport

if TYPE_CHECKING:
    from .dataset import CLARADataset, Collator

__all__ = [
    "load_dataset", "Sample", "SkipReport", "LoadedDataset", "DatasetError", "ImageError",
    "open_image", "ImageTransform", "CLARADataset", "Collator", "SKIP_REASONS", "PROTOCOLS",
    "MAX_IMAGE_PIXELS",
]

PROTOCOLS = tuple(PROTOCOL_RULES)  # clara, standard (MVSA); HFM always uses its official splits

# Every reason a post (or line) can be skipped for, in the order the checks run.
SKIP_REASONS = {
    "malformed_line": "a label-file line that cannot be parsed (wrong field count, unknown label, bad id)",
    "undecodable_text": "text bytes that are not UTF-8, UTF-16 (with BOM) or cp1252, or hold NUL bytes",
    "duplicate_id": "an id already read earlier (the first one is kept)",
    "labels_disagree": "clara protocol: the text and image labels (of every annotator) are not all equal",
    "no_majority": "standard protocol, MVSA-Multiple: fewer than 2 of 3 annotators agree on a modality",
    "labels_conflict": "standard protocol: one modality positive, the other negative",
    "train_keyword_filter": "HFM train post with a keyword token Cai et al. filtered out",
    "missing_image": "no <id>.jpg/.jpeg/.png where the layout puts images",
    "missing_text": "MVSA raw layout: no data/<id>.txt",
    "empty_text": "the text is empty or only whitespace",
    "unreadable_image": "the image file cannot be fully decoded (empty, truncated, corrupt, too large)",
    "not_in_splits_file": "a loaded post whose id the --splits file does not list",
    "splits_file_id_not_loaded": "an id the --splits file lists that was not loaded (counts file entries, not posts)",
}


def load_dataset(dataset: str, data_dir: str | Path, protocol: str = "clara", hfm_label: str = "human",
                 splits_file: str | Path | None = None, seed: int = 42, check_images: bool = True,
                 progress: bool = False) -> LoadedDataset:
    """Load `dataset` (mvsa_single | mvsa_multiple | hfm) from `data_dir`, filtered and split.

    MVSA: `protocol` clara (agreement filter, stratified 70/15/15) or standard (Xu et al. 2017
    merge, stratified 8:1:1), split with `seed`. HFM: the official splits; `protocol` is
    ignored and reported as "official"; `hfm_label` human (last field) or hashtag (third).
    `splits_file` (JSON or TSV of ids per split, see clara.data.splits) replaces the split;
    the protocol is then reported as e.g. "clara+splits-file". `check_images` decodes every
    kept image once (a tqdm bar when `progress`) and skips unreadable ones.
    """
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DatasetError(f"data folder {data_dir} does not exist or is not a folder")
    skipped = SkipReport()
    skipped_ids: dict[str, str] = {}  # id -> skip reason, to explain split-file ids not loaded

    if dataset == "hfm":
        if protocol not in (*PROTOCOLS, "official"):
            raise DatasetError(f"unknown protocol {protocol!r}; HFM uses its official splits")
        layout, official = load_hfm(data_dir, hfm_label, skipped, skipped_ids)
        samples = [s for name in SPLITS for s in official[name]]
        protocol_name = "official"
    else:
        if protocol not in PROTOCOLS:
            raise DatasetError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        layout, samples = load_mvsa(dataset, data_dir, protocol, skipped, skipped_ids)
        protocol_name = protocol

    if check_images:
        samples = _drop_unreadable_images(samples, skipped, skipped_ids, progress)
    if not samples:
        raise DatasetError(f"no usable post in {data_dir} as {dataset}; skipped: "
                           f"{skipped.as_dict() or 'nothing'} (examples: {skipped.examples})")

    if splits_file is not None:
        assignment = read_splits_file(splits_file)
        splits = apply_splits_file(samples, assignment, skipped, skipped_ids)
        protocol_name += "+splits-file"
    elif dataset == "hfm":
        splits = {name: [s for s in samples if s.annotations["official_split"] == name] for name in SPLITS}
    else:
        splits = stratified_split(samples, protocol, seed=seed)
    return LoadedDataset(name=dataset, layout=layout, protocol=protocol_name, labels=list(LABELS[dataset]),
                         splits=splits, skipped=skipped)


def _drop_unreadable_images(samples: list[Sample], skipped: SkipReport, skipped_ids: dict[str, str],
                            progress: bool) -> list[Sample]:
    errors = verify_images([s.image_path for s in samples], progress=progress)
    kept = []
    for sample, error in zip(samples, errors):
        if error is None:
            kept.append(sample)
        else:
            skipped.add("unreadable_image", f"{sample.id}: {error.problem}")
            skipped_ids.setdefault(sample.id, "unreadable_image")
    return kept


def __getattr__(name: str) -> Any:
    # Lazy: importing torch takes seconds, and only training/inference need these two.
    if name in ("CLARADataset", "Collator"):
        from . import dataset
        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
