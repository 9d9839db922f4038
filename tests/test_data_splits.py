"""Split rules (published sizes) and user-supplied split files."""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from _data_fixtures import build_hfm, build_mvsa_single_raw
from clara.data import DatasetError, load_dataset
from clara.data.splits import PROTOCOL_RULES, SplitRule, read_splits_file, stratified_split
from clara.data.types import Sample


def make_samples(class_sizes: list[int]) -> list[Sample]:
    samples, next_id = [], 1
    for label, size in enumerate(class_sizes):
        for _ in range(size):
            samples.append(Sample(id=str(next_id), text="t", image_path=Path("x.jpg"), label=label))
            next_id += 1
    return samples


def sizes(splits: dict[str, list[Sample]]) -> tuple[int, int, int]:
    return len(splits["train"]), len(splits["val"]), len(splits["test"])


@pytest.mark.parametrize("protocol, class_sizes, expected", [
    ("clara", [1398, 470, 724], (1813, 387, 392)),  # MVSA-Single, published
    ("clara", [2173, 1268, 114], (2487, 532, 536)),  # MVSA-Multiple, published
    ("standard", [2683, 470, 1358], (3611, 450, 450)),  # MVSA-Single, CLMLF's split sizes
    ("standard", [11318, 4408, 1298], (13624, 1700, 1700)),  # MVSA-Multiple, CLMLF's split sizes
])
def test_published_split_sizes(protocol, class_sizes, expected):
    samples = make_samples(class_sizes)
    splits = stratified_split(samples, protocol, seed=42)
    assert sizes(splits) == expected
    ids = [s.id for part in splits.values() for s in part]
    assert sorted(ids) == sorted(s.id for s in samples)  # a partition: nothing lost or doubled


def test_per_class_sizes_of_the_clara_split():
    splits = stratified_split(make_samples([1398, 470, 724]), "clara", seed=42)
    per_class = {name: [sum(1 for s in part if s.label == k) for k in range(3)] for name, part in splits.items()}
    assert per_class == {"train": [978, 329, 506], "val": [209, 70, 108], "test": [211, 71, 110]}


def test_one_remainder_rule_cannot_give_both_published_shapes():
    # Why each protocol has its own remainder split (see clara.data.splits).
    clara_fractions = PROTOCOL_RULES["clara"].fractions
    standard_fractions = PROTOCOL_RULES["standard"].fractions
    clara_with_train_remainder = SplitRule(clara_fractions, remainder="train")
    standard_with_test_remainder = SplitRule(standard_fractions, remainder="test")
    assert sizes(stratified_split(make_samples([1398, 470, 724]), clara_with_train_remainder)) == (1818, 387, 387)
    assert sizes(stratified_split(make_samples([2683, 470, 1358]), standard_with_test_remainder)) == (3608, 450, 453)
    assert SplitRule({"train": Fraction(7, 10), "val": Fraction(3, 20), "test": Fraction(3, 20)},
                     remainder="test").sizes(470) == {"train": 329, "val": 70, "test": 71}


def test_standard_split_is_seeded_and_independent_of_input_order():
    samples = make_samples([50, 30, 20])
    first = stratified_split(samples, "standard", seed=42)
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    again = stratified_split(shuffled, "standard", seed=42)
    assert {k: {s.id for s in v} for k, v in first.items()} == {k: {s.id for s in v} for k, v in again.items()}
    other_seed = stratified_split(samples, "standard", seed=7)
    assert {s.id for s in other_seed["test"]} != {s.id for s in first["test"]}
    # within a split the input order is kept
    positions = {id(s): i for i, s in enumerate(samples)}
    assert [positions[id(s)] for s in first["train"]] == sorted(positions[id(s)] for s in first["train"])


def test_clara_split_follows_the_input_order_as_the_notebooks():
    samples = make_samples([50, 30, 20])
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    first, again = stratified_split(samples, "clara", seed=42), stratified_split(shuffled, "clara", seed=42)
    assert {s.id for s in first["test"]} != {s.id for s in again["test"]}
    assert {s.id for s in stratified_split(samples, "clara", seed=7)["test"]} != {s.id for s in first["test"]}
    # The notebooks' MVSALoader.split, written out: random.seed, each class shuffled in the order
    # read, sliced int(0.7 n) / int(0.15 n) / rest (then every split shuffled, which moves none).
    for order in (samples, shuffled):
        rng = random.Random(42)
        expected = {"train": [], "val": [], "test": []}
        for label in range(3):
            members = [s for s in order if s.label == label]
            rng.shuffle(members)
            n_train, n_val = int(len(members) * 0.7), int(len(members) * 0.15)
            expected["train"] += members[:n_train]
            expected["val"] += members[n_train:n_train + n_val]
            expected["test"] += members[n_train + n_val:]
        got = stratified_split(order, "clara", seed=42)
        assert {k: {id(s) for s in v} for k, v in got.items()} == {k: {id(s) for s in v} for k, v in expected.items()}
        positions = {id(s): i for i, s in enumerate(order)}  # within a split the input order is kept
        assert all([positions[id(s)] for s in part] == sorted(positions[id(s)] for s in part) for part in got.values())


def test_clara_sizes_are_the_notebooks_float_products():
    # int(90 * 0.7) is 62 in floating point (62.99...), where exact arithmetic gives 63.
    assert PROTOCOL_RULES["clara"].sizes(90) == {"train": 62, "val": 13, "test": 15}
    assert PROTOCOL_RULES["standard"].sizes(90) == {"train": 72, "val": 9, "test": 9}


@pytest.fixture(scope="module")
def single_raw(tmp_path_factory):
    return build_mvsa_single_raw(tmp_path_factory.mktemp("mvsa_single_raw"))


def check_splits_file_result(loaded):
    assert loaded.protocol == "clara+splits-file"
    assert loaded.summary_dict()["splits"] == {"train": 9, "val": 4, "test": 3}
    assert {s.id for s in loaded.splits["val"]} == {"11", "12", "16", "17"}
    assert loaded.skipped.counts["not_in_splits_file"] == 6  # kept posts 10, 13, 14, 15, 21, 22
    assert loaded.skipped.examples["not_in_splits_file"] == ["10", "13", "14", "15", "21"]
    assert loaded.skipped.counts["splits_file_id_not_loaded"] == 2
    assert loaded.skipped.examples["splits_file_id_not_loaded"] == ["40 (skipped: missing_image)",
                                                                    "999 (not in the dataset)"]


def test_json_splits_file(tmp_path, single_raw):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [1, 2, 3, "4", 5, 6, 7, 8, 9], "dev": [11, 12, 16, 17],
                                "test": [18, 19, 20, "40", "999"]}))
    check_splits_file_result(load_dataset("mvsa_single", single_raw, splits_file=path))


def test_tsv_splits_file(tmp_path, single_raw):
    rows = ["id\tsplit"] + [f"{i}\ttrain" for i in range(1, 10)] + [f"{i}\tval" for i in (11, 12, 16, 17)]
    rows += ["", "18\ttest", "19 test", "20\ttest", "40\ttest", "999\tTEST", "1\ttrain"]  # repeat in same split is fine
    path = tmp_path / "splits.tsv"
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    assert read_splits_file(path)["999"] == "test"
    check_splits_file_result(load_dataset("mvsa_single", single_raw, splits_file=path))


def test_splits_file_on_hfm_overrides_official_splits(tmp_path):
    root = build_hfm(tmp_path / "hfm")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": ["100", "101", "200"], "val": ["102"], "test": ["300"]}))
    loaded = load_dataset("hfm", root, splits_file=path)
    assert loaded.protocol == "official+splits-file"
    assert {k: sorted(s.id for s in v) for k, v in loaded.splits.items()} == {
        "train": ["100", "101", "200"], "val": ["102"], "test": ["300"]}
    assert loaded.skipped.counts["not_in_splits_file"] == 7


@pytest.mark.parametrize("content, message", [
    ('{"train": [1], "val": [2], "test": [1]}', "id 1 is listed under both 'train' and 'test'"),
    ('{"train": [1], "test": [2]}', "has no val list"),
    ('{"train": [1], "val": [2], "test": [3], "holdout": [4]}', "unknown split 'holdout'"),
    ('{"train": 1, "val": [2], "test": [3]}', "must be a list of ids"),
    ('{"train": [[1]], "val": [2], "test": [3]}', "is not a string or integer"),
    ('{"train": [1', "is not valid JSON"),
    ("1\ttrain\n2\n", "line 2: expected 'id<TAB>split'"),
    ("1\ttrain\n2\tdevset\n", "line 2: unknown split 'devset'"),
    ("\n\n", "lists no ids"),
])
def test_bad_splits_files(tmp_path, content, message):
    path = tmp_path / "splits.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        read_splits_file(path)
    assert str(path) in str(info.value)


def test_missing_splits_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read splits file"):
        read_splits_file(tmp_path / "none.json")
