"""Train/val/test splits: the protocols' stratified random splits and user-supplied split files.

Rounding rule (per class, after a seeded shuffle): every split except the protocol's
*remainder split* gets floor(fraction x class size) posts; the remainder split gets the rest.

- clara (70/15/15): train and val are floored, test takes the rest -- what the notebooks'
  `int(0.7 * n)`, `int(0.15 * n)` slicing does. MVSA-Single shaped data (1,398/470/724)
  gives 1,813/387/392 and MVSA-Multiple shaped data (2,173/1,268/114) 2,487/532/536, the
  published sizes.
- standard (8:1:1): val and test are floored, train takes the rest. This reproduces the sizes
  of the split most papers use (CLMLF's): MVSA-Single 2,683/470/1,358 -> 3,611/450/450 and
  MVSA-Multiple 11,318/4,408/1,298 -> 13,624/1,700/1,700.

No single remainder choice gives both: flooring train for the standard protocol gives
3,608/450/453, and flooring val and test for the clara protocol gives 1,818/387/387. The
published clara sizes need a floored train; the published standard sizes need floored
val/test. The sizes match; which ids land where is random, so compare with published numbers
on the standard protocol through a splits file (CLMLF's ids), not through this random split.

Split files (`--splits FILE`), two formats:
- JSON: `{"train": [ids], "val": [ids], "test": [ids]}` ("dev", "valid" or "validation" are
  accepted for "val"); ids may be strings or integers.
- TSV: one `id<TAB>split` per line (any whitespace works), split being train/val/test (or an
  alias above); blank lines and a first line `id<TAB>split` are ignored.
An id listed under two different splits is an error; listed twice under the same split is
harmless. Loaded posts whose id the file does not list are skipped ("not_in_splits_file");
ids the file lists that were not loaded are reported ("splits_file_id_not_loaded").
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .types import SPLITS, DatasetError, Sample, SkipReport, read_without_bom

SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val", "validation": "val",
                 "test": "test"}


@dataclass(frozen=True)
class SplitRule:
    """Fractions per split (summing to 1) and the split that takes the rounding remainder."""
    fractions: dict[str, Fraction]
    remainder: str

    def sizes(self, n: int) -> dict[str, int]:
        """Split sizes for a class of n posts."""
        sizes = {name: int(self.fractions[name] * n) for name in SPLITS if name != self.remainder}
        sizes[self.remainder] = n - sum(sizes.values())
        return {name: sizes[name] for name in SPLITS}


PROTOCOL_RULES: dict[str, SplitRule] = {
    "clara": SplitRule({"train": Fraction(70, 100), "val": Fraction(15, 100), "test": Fraction(15, 100)},
                       remainder="test"),
    "standard": SplitRule({"train": Fraction(8, 10), "val": Fraction(1, 10), "test": Fraction(1, 10)},
                          remainder="train"),
}


def id_sort_key(post_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the rest alphabetically."""
    return (0, int(post_id), "") if post_id.isdigit() else (1, 0, post_id)


def stratified_split(samples: list[Sample], rule: SplitRule | str, seed: int = 42) -> dict[str, list[Sample]]:
    """Split per class with `rule` (or a protocol name); deterministic for a seed.

    Each class is put in id order (so the file's line order does not matter), shuffled with
    `random.Random(seed)` (one generator, classes in label order), then cut by `rule.sizes`.
    Within each split the samples keep their input order.
    """
    if isinstance(rule, str):
        if rule not in PROTOCOL_RULES:
            raise DatasetError(f"unknown protocol {rule!r}; choose one of: {', '.join(PROTOCOL_RULES)}")
        rule = PROTOCOL_RULES[rule]
    position = {id(sample): i for i, sample in enumerate(samples)}
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: id_sort_key(s.id))
        rng.shuffle(members)
        start = 0
        for name, size in rule.sizes(len(members)).items():
            splits[name].extend(members[start:start + size])
            start += size
    return {name: sorted(part, key=lambda s: position[id(s)]) for name, part in splits.items()}


def read_splits_file(path: str | Path) -> dict[str, str]:
    """Read a JSON or TSV split file (formats in the module docstring); return id -> split."""
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
