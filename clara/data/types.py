"""Typed records shared by every dataset format."""
from __future__ import annotations

import codecs
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
MAX_EXAMPLES_PER_REASON = 5
OFFICIAL_SPLIT = "official_split"  # annotation naming a sample's split in a dataset with fixed splits


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used at all; the message says what was expected."""


def read_without_bom(path: Path, what: str = "") -> bytes:
    """A text file's bytes without a UTF-8 byte-order mark; DatasetError naming it if unreadable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {what}{path}: {exc.strerror or exc}") from None
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


@dataclass
class Sample:
    """One post: its text, its image file and its (protocol-resolved) label index."""
    id: str
    text: str
    image_path: Path
    label: int
    # Raw annotations as found in the file, e.g. {"text": ["positive"], "image": ["neutral"]}
    # for MVSA or {"hashtag_label": 1, "human_label": 0} for HFM.
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkipReport:
    """Counts of skipped posts or lines per reason, with the first few offending ids/lines."""
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES_PER_REASON:
            shown.append(str(example))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        lines = [f"{n:>6}  {reason}  (e.g. {', '.join(self.examples.get(reason, []))})"
                 for reason, n in sorted(self.counts.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class Candidate:
    """A post the split is computed over: one the authors' notebook keeps (MVSA clara) or one with
    its label and files in place. `refusal`: the skip reason when we do not train on it anyway;
    load_dataset removes such posts after the split, so they never move another post."""
    id: str
    label: int  # the class it is split under
    split: str | None = None  # its official split (datasets with fixed splits)
    refusal: str | None = None


@dataclass
class ReadRequest:
    """What `load_dataset` hands a dataset's reader (the registry's `reader_path`), which returns
    (layout, kept samples) and may list `candidates` (else the kept samples are the candidates);
    a dataset with fixed splits marks each sample's OFFICIAL_SPLIT."""
    dataset: str
    data_dir: Path
    protocol: str  # clara | standard (MVSA); readers of fixed-split datasets ignore it
    hfm_label: str  # human | hashtag (HFM); other readers ignore it
    # A dataset without fixed labels (custom): the class names asked for, in index order; its reader
    # fills in those it found (sorted) when none were asked. Readers of the other datasets ignore it.
    class_names: tuple[str, ...] = ()
    skipped: SkipReport = field(default_factory=SkipReport)
    skipped_ids: dict[str, str] = field(default_factory=dict)  # id -> skip reason
    # In the order the posts were read; each kept sample is exactly one candidate without a refusal.
    candidates: list[Candidate] = field(default_factory=list)

    def skip(self, reason: str, example: str, post_id: str | None = None) -> None:
        """Count a skipped post or line; `post_id` (when known) is remembered with its reason."""
        self.skipped.add(reason, example)
        if post_id is not None:
            self.skipped_ids.setdefault(post_id, reason)


@dataclass
class LoadedDataset:
    """What a loader returns: kept samples per split plus what was skipped and why."""
    name: str  # a clara.datasets.REGISTRY name
    layout: str  # e.g. "raw", "simplified", "flat-images"
    protocol: str  # clara | standard | official (HFM) ; "+splits-file" appended when one was used
    labels: list[str]
    splits: dict[str, list[Sample]]
    skipped: SkipReport
    # Per split, posts the split placed there that were then skipped: reason -> count.
    removed_after_split: dict[str, Counter] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return [s for name in SPLITS for s in self.splits.get(name, [])]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels[s.label] for s in self.samples)
        return {label: counts.get(label, 0) for label in self.labels}

    def summary_dict(self) -> dict[str, Any]:
        """The `data_summary.py --json` contract."""
        return {
            "dataset": self.name,
            "layout": self.layout,
            "protocol": self.protocol,
            "total": len(self.samples),
            "class_counts": self.class_counts(),
            "splits": {name: len(self.splits.get(name, [])) for name in SPLITS},
            "skipped": self.skipped.as_dict(),
            "removed_after_split": {name: dict(sorted(self.removed_after_split.get(name, Counter()).items()))
                                    for name in SPLITS},
        }
