"""Train/val/test splits: the protocols' stratified random splits and user-supplied split files.

Per class, after a seeded shuffle, every split but the rule's remainder split takes
floor(fraction x class size) posts. clara (70/15/15, remainder test) is the notebooks'
`MVSALoader.split`: classes in label order, each shuffled in the order its posts were read.
standard (8:1:1, remainder train) is ours: each class in id order. Every split keeps the input
order. The published sizes each rule gives, and why the remainders differ: docs/FIDELITY.md
("Splits"). Split files: `read_splits_file`.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, TypeVar

from .types import SPLITS, Candidate, DatasetError, Sample, SkipReport, read_without_bom

SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val", "validation": "val",
                 "test": "test"}


@dataclass(frozen=True)
class SplitRule:
    """Fractions per split (summing to 1), the split that takes the rounding remainder, and
    whether the notebooks' file order applies (see `stratified_split`)."""
    fractions: dict[str, Fraction | float]
    remainder: str
    file_order: bool = False

    def sizes(self, n: int) -> dict[str, int]:
        """Split sizes for a class of n posts."""
        sizes = {name: int(self.fractions[name] * n) for name in SPLITS if name != self.remainder}
        sizes[self.remainder] = n - sum(sizes.values())
        return {name: sizes[name] for name in SPLITS}


PROTOCOL_RULES: dict[str, SplitRule] = {
    # Floats on purpose: the notebooks' int(n * 0.7), which is 62 for a class of 90 (not 63).
    "clara": SplitRule({"train": 0.7, "val": 0.15, "test": 0.15}, remainder="test", file_order=True),
    "standard": SplitRule({"train": Fraction(8, 10), "val": Fraction(1, 10), "test": Fraction(1, 10)},
                          remainder="train"),
}


class _Post(Protocol):
    id: str
    label: int


P = TypeVar("P", bound=_Post)


def protocol_rule(rule: SplitRule | str) -> SplitRule:
    """`rule` itself, or the rule of the protocol it names."""
    if isinstance(rule, SplitRule):
        return rule
    if rule not in PROTOCOL_RULES:
        raise DatasetError(f"unknown protocol {rule!r}; choose one of: {', '.join(PROTOCOL_RULES)}")
    return PROTOCOL_RULES[rule]


def id_sort_key(post_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the rest alphabetically."""
    return (0, int(post_id), "") if post_id.isdigit() else (1, 0, post_id)


def stratified_split(posts: Sequence[P], rule: SplitRule | str, seed: int = 42) -> dict[str, list[P]]:
    """Split `posts` (samples or candidates: anything with `.id` and `.label`) per class.

    One `random.Random(seed)` shuffles the classes in label order, which draws what the
    notebooks' `random.seed(seed)` + `random.shuffle` draw. A `file_order` rule shuffles each
    class in input order, as `MVSALoader.split` does; otherwise each class is put in id order
    first, so the input order does not matter. Every split keeps the input order (the notebooks
    then shuffle each split, which orders posts within it and moves none: docs/FIDELITY.md).
    """
    rule = protocol_rule(rule)
    by_class: dict[int, list[P]] = defaultdict(list)
    for post in posts:
        by_class[post.label].append(post)
    rng = random.Random(seed)
    splits: dict[str, list[P]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):  # MVSA: positive, neutral, negative, the notebooks' group order
        members = list(by_class[label]) if rule.file_order else sorted(by_class[label], key=lambda p: id_sort_key(p.id))
        rng.shuffle(members)
        start = 0
        for name, size in rule.sizes(len(members)).items():
            splits[name].extend(members[start:start + size])
            start += size
    position = {id(post): i for i, post in enumerate(posts)}
    return {name: sorted(part, key=lambda p: position[id(p)]) for name, part in splits.items()}


def read_splits_file(path: str | Path) -> dict[str, str]:
    """Read a split file; return id -> split.

    JSON `{"train": [ids], "val": [ids], "test": [ids]}` ("dev", "valid" or "validation" for
    "val"; ids strings or integers), or TSV lines `id<TAB>split` (any whitespace; blank lines and
    a first line `id<TAB>split` ignored). An id under two splits is an error; twice under one is not.
    """
    path = Path(path)
    raw = read_without_bom(path, "splits file ")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"splits file {path} is not UTF-8 text ({exc})") from None
    if content.lstrip().startswith("{"):
        return _parse_json_splits(path, content)
    return _parse_tsv_splits(path, content)


def _assign(assignment: dict[str, str], path: Path, post_id: object, split_name: str, where: str) -> None:
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise DatasetError(f"splits file {path}, {where}: id {post_id!r} is not a string or integer")
    key = str(post_id).strip()
    if not key:
        raise DatasetError(f"splits file {path}, {where}: empty id")
    previous = assignment.setdefault(key, split_name)
    if previous != split_name:
        raise DatasetError(f"splits file {path}: id {key} is listed under both {previous!r} and "
                           f"{split_name!r}; each id must belong to one split")


def _split_name(path: Path, name: str, where: str) -> str:
    canonical = SPLIT_ALIASES.get(name.strip().lower())
    if canonical is None:
        raise DatasetError(f"splits file {path}, {where}: unknown split {name!r}; use train, val "
                           "(or dev/valid/validation) or test")
    return canonical


def _parse_json_splits(path: Path, content: str) -> dict[str, str]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"splits file {path} is not valid JSON: {exc}") from None
    expected = 'expected {"train": [ids], "val": [ids], "test": [ids]}'
    if not isinstance(data, dict):
        raise DatasetError(f"splits file {path}: {expected}")
    assignment: dict[str, str] = {}
    seen_splits = set()
    for key, ids in data.items():
        split_name = _split_name(path, str(key), f"key {key!r}")
        if not isinstance(ids, list):
            raise DatasetError(f"splits file {path}: the value of {key!r} must be a list of ids; {expected}")
        seen_splits.add(split_name)
        for post_id in ids:
            _assign(assignment, path, post_id, split_name, f"list {key!r}")
    missing = [name for name in SPLITS if name not in seen_splits]
    if missing:
        raise DatasetError(f"splits file {path} has no {', '.join(missing)} list; {expected}")
    return assignment


def _parse_tsv_splits(path: Path, content: str) -> dict[str, str]:
    assignment: dict[str, str] = {}
    for line_number, line in enumerate(content.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if not assignment and [f.lower() for f in fields] == ["id", "split"]:
            continue  # header
        if len(fields) != 2:
            raise DatasetError(f"splits file {path}, line {line_number}: expected 'id<TAB>split' "
                               f"(or a JSON object), got {line.strip()[:80]!r}")
        split_name = _split_name(path, fields[1], f"line {line_number}")
        _assign(assignment, path, fields[0], split_name, f"line {line_number}")
    if not assignment:
        raise DatasetError(f"splits file {path} lists no ids; expected JSON "
                           '{"train": [ids], "val": [ids], "test": [ids]} or lines "id<TAB>split"')
    return assignment


def apply_splits_file(samples: list[Sample], assignment: dict[str, str], skipped: SkipReport,
                      skipped_ids: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    """Put each loaded sample in the split the file names; report what does not match.

    A loaded post the file does not list is skipped ("not_in_splits_file"); an id the file lists
    that was not loaded is counted as "splits_file_id_not_loaded", its example saying why when
    the loader skipped it (`skipped_ids`: id -> skip reason).
    """
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    loaded_ids = set()
    for sample in samples:
        loaded_ids.add(sample.id)
        split_name = assignment.get(sample.id)
        if split_name is None:
            skipped.add("not_in_splits_file", sample.id)
        else:
            splits[split_name].append(sample)
    skipped_ids = skipped_ids or {}
    for post_id in sorted(set(assignment) - loaded_ids, key=id_sort_key):
        why = skipped_ids.get(post_id)
        skipped.add("splits_file_id_not_loaded", f"{post_id} (skipped: {why})" if why else
                    f"{post_id} (not in the dataset)")
    return splits


def place_after_split(candidate_splits: dict[str, list[Candidate]], samples: list[Sample],
                      dropped: dict[str, str]) -> tuple[dict[str, list[Sample]], dict[str, Counter]]:
    """Put each kept sample where the split put its candidate, in that order; count the rest.

    A candidate with a refusal, or whose sample was dropped after reading (`dropped`: id ->
    reason, e.g. unreadable_image), is removed from its split and counted there under that reason.
    """
    kept = {sample.id: sample for sample in samples}
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    removed: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for name in SPLITS:
        for candidate in candidate_splits[name]:
            reason = candidate.refusal or dropped.get(candidate.id)
            if reason is not None:
                removed[name][reason] += 1
                continue
            sample = kept.pop(candidate.id, None)
            if sample is None:
                raise RuntimeError(f"reader bug: candidate {candidate.id} is neither refused nor kept once")
            splits[name].append(sample)
    if kept:
        raise RuntimeError(f"reader bug: kept posts that are no candidates: {', '.join(sorted(kept)[:5])}")
    return splits, removed


def removed_by_splits_file(candidates: list[Candidate], samples: list[Sample], dropped: dict[str, str],
                           assignment: dict[str, str]) -> dict[str, Counter]:
    """Per split of the file, the posts it lists that were refused or dropped: reason -> count."""
    kept_ids = {sample.id for sample in samples}
    removed: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for candidate in candidates:
        reason = candidate.refusal or dropped.get(candidate.id)
        if reason is not None and candidate.id not in kept_ids and candidate.id in assignment:
            removed[assignment[candidate.id]][reason] += 1
    return removed
