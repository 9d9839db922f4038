"""Typed records shared by every dataset format."""
from __future__ import annotations

import codecs
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
MAX_EXAMPLES_PER_REASON = 5


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


@dataclass
class LoadedDataset:
    """What a loader returns: kept samples per split plus what was skipped and why."""
    name: str  # mvsa_single | mvsa_multiple | hfm
    layout: str  # e.g. "raw", "simplified", "flat-images"
    protocol: str  # clara | standard | official (HFM) ; "+splits-file" appended when one was used
    labels: list[str]
    splits: dict[str, list[Sample]]
    skipped: SkipReport

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
        }
