"""Datasets: raw folders -> typed samples + skip report -> splits -> torch Dataset and collator.

`load_dataset` is the one entry point; it reads a folder with the dataset's reader (named in
clara.datasets.REGISTRY) and never crashes on a messy post: every post it does not keep is
counted in `LoadedDataset.skipped` under one of SKIP_REASONS, with the first few ids or lines
as examples. The split is computed over the posts the authors' notebooks keep; the ones we then
refuse are removed from it (`removed_after_split`), so no refusal moves another post. A folder
that is not a dataset of the asked kind raises DatasetError. `CLARADataset` and `Collator` (and
torch with them) are imported on first use, so loading or summarising a dataset does not import torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clara.datasets import REGISTRY

from .images import MAX_IMAGE_PIXELS, ImageError, ImageTransform, open_image, verify_images
from .splits import (PROTOCOL_RULES, apply_splits_file, place_after_split, read_splits_file,
                     removed_by_splits_file, stratified_split)
from .types import (OFFICIAL_SPLIT, SPLITS, Candidate, DatasetError, LoadedDataset, ReadRequest, Sample,
                    SkipReport)

if TYPE_CHECKING:
    import datasets

    from clara.config import DataConfig

    from .dataset import CLARADataset, Collator

__all__ = [
    "load_dataset", "load_configured_dataset", "to_hf_dataset", "Sample", "SkipReport", "LoadedDataset", "DatasetError", "ImageError",
    "open_image", "ImageTransform", "CLARADataset", "Collator", "SKIP_REASONS", "PROTOCOLS",
    "MAX_IMAGE_PIXELS",
]

HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # Hugging Face's split names
PROTOCOLS = tuple(PROTOCOL_RULES)  # clara, standard; a dataset with fixed splits always uses those

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
                 progress: bool = False, class_names: Sequence[str] = ()) -> LoadedDataset:
    """Load `dataset` (a clara.datasets.REGISTRY name) from `data_dir`, filtered and split.

    MVSA: `protocol` clara (agreement filter, stratified 70/15/15) or standard (Xu et al. 2017
    merge, stratified 8:1:1), split with `seed`. A dataset with fixed splits (HFM) keeps them;
    `protocol` is ignored and reported as "official"; `hfm_label` human (last field) or hashtag (third).
    `splits_file` (JSON or TSV of ids per split, see clara.data.splits) replaces the split;
    the protocol is then reported as e.g. "clara+splits-file". `check_images` decodes every
    kept image once (a tqdm bar when `progress`) and skips unreadable ones (the notebooks feed a
    black image instead). Posts the readers list as candidates take their place in the split
    before any of them is skipped; `removed_after_split` counts, per split, the ones that were.
    A dataset without fixed labels (custom) takes `class_names` in that order (rows with another
    label are skipped), else the labels its data holds, sorted; one whose reader marks every
    post's split (a table's split column) keeps those splits, reported as "official".
    """
    spec = REGISTRY.get(dataset)
    if spec is None:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of: {', '.join(REGISTRY)}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DatasetError(f"data folder {data_dir} does not exist or is not a folder")
    if spec.fixed_splits:
        if protocol not in (*PROTOCOLS, "official"):
            raise DatasetError(f"unknown protocol {protocol!r}; {spec.title} uses its official splits")
        protocol_name = "official"
    else:
        if protocol not in PROTOCOLS:
            raise DatasetError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        protocol_name = protocol
    if spec.labels and class_names and tuple(class_names) != spec.labels:
        raise DatasetError(f"{spec.title} has the labels {list(spec.labels)}, not {list(class_names)}")
    request = ReadRequest(dataset=dataset, data_dir=data_dir, protocol=protocol, hfm_label=hfm_label,
                          class_names=tuple(class_names))
    layout, samples = spec.reader(request)
    labels = list(spec.labels or request.class_names)
    skipped, skipped_ids = request.skipped, request.skipped_ids
    candidates = request.candidates or [Candidate(s.id, s.label, s.annotations.get(OFFICIAL_SPLIT))
                                        for s in samples]
    fixed_splits = spec.fixed_splits or bool(candidates) and all(c.split for c in candidates)
    if fixed_splits:
        protocol_name = "official"

    dropped: dict[str, str] = {}  # id -> reason, for kept samples dropped after reading
    if check_images:
        samples = _drop_unreadable_images(samples, skipped, skipped_ids, dropped, progress)
    if not samples:
        raise DatasetError(f"no usable post in {data_dir} as {dataset}; skipped: "
                           f"{skipped.as_dict() or 'nothing'} (examples: {skipped.examples})")

    # The split is computed over the candidates, then what we refuse is removed from it.
    if splits_file is not None:
        assignment = read_splits_file(splits_file)
        splits = apply_splits_file(samples, assignment, skipped, skipped_ids)
        removed = removed_by_splits_file(candidates, samples, dropped, assignment)
        protocol_name += "+splits-file"
    else:
        if fixed_splits:
            candidate_splits = {name: [c for c in candidates if c.split == name] for name in SPLITS}
        else:
            candidate_splits = stratified_split(candidates, protocol, seed=seed)
        splits, removed = place_after_split(candidate_splits, samples, dropped)
    return LoadedDataset(name=dataset, layout=layout, protocol=protocol_name, labels=labels,
                         splits=splits, skipped=skipped, removed_after_split=removed)


def load_configured_dataset(data: DataConfig, data_dir: str | Path | None = None,
                            progress: bool = False) -> LoadedDataset:
    """`load_dataset` as a config's data section says (a checkpoint's: the split it was trained on,
    in its label order); `data_dir` in place of data.data_dir."""
    folder = data_dir if data_dir is not None else data.data_dir
    if folder is None:
        raise DatasetError("no data folder: set data.data_dir (--data-dir)")
    return load_dataset(data.dataset, folder, protocol=data.protocol, hfm_label=data.hfm_label,
                        splits_file=data.splits_file, seed=data.split_seed, check_images=data.check_images,
                        progress=progress, class_names=data.class_names)


def to_hf_dataset(data: LoadedDataset) -> datasets.DatasetDict:
    """The splits as a Hugging Face `datasets.DatasetDict` (train, validation, test): columns id,
    text, image (datasets.Image, decoded on access from its path) and label (a ClassLabel of
    data.labels). Needs the `datasets` package (pip install "clara[data]")."""
    try:
        import datasets
    except ImportError:
        raise DatasetError('to_hf_dataset needs the datasets package: pip install "clara[data]"') from None
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "image": datasets.Image(), "label": datasets.ClassLabel(names=list(data.labels))})
    return datasets.DatasetDict({
        HF_SPLIT_NAMES[name]: datasets.Dataset.from_dict(
            {"id": [s.id for s in part], "text": [s.text for s in part],
             "image": [str(s.image_path) for s in part], "label": [s.label for s in part]}, features=features)
        for name, part in ((name, data.splits.get(name, [])) for name in SPLITS)})


def _drop_unreadable_images(samples: list[Sample], skipped: SkipReport, skipped_ids: dict[str, str],
                            dropped: dict[str, str], progress: bool) -> list[Sample]:
    errors = verify_images([s.image_path for s in samples], progress=progress)
    kept = []
    for sample, error in zip(samples, errors):
        if error is None:
            kept.append(sample)
        else:
            skipped.add("unreadable_image", f"{sample.id}: {error.problem}")
            skipped_ids.setdefault(sample.id, "unreadable_image")
            dropped[sample.id] = "unreadable_image"
    return kept


def __getattr__(name: str) -> Any:
    # Lazy: importing torch takes seconds, and only training/inference need these two.
    if name in ("CLARADataset", "Collator"):
        from . import dataset
        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
