"""load_dataset reads every dataset through its registry entry: a new dataset is a reader plus
one entry (here a toy one, its reader defined in this module)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _data_fixtures import jpeg
from clara.data import DatasetError, load_dataset
from clara.data.types import OFFICIAL_SPLIT, SPLITS, ReadRequest, Sample
from clara.datasets import REGISTRY, DatasetSpec


def read_toy(request: ReadRequest) -> tuple[str, list[Sample]]:
    """`<id> <label name> <text>` lines in posts.txt, images <id>.jpg beside it."""
    spec = REGISTRY[request.dataset]
    labels = spec.labels
    samples = []
    for line in (request.data_dir / "posts.txt").read_text(encoding="utf-8").splitlines():
        post_id, label, text = line.split(" ", 2)
        if label not in labels:
            request.skip("malformed_line", line)
            continue
        split = {OFFICIAL_SPLIT: SPLITS[int(post_id) % 3]} if spec.fixed_splits else {}
        samples.append(Sample(post_id, text, request.data_dir / f"{post_id}.jpg", labels.index(label), split))
    return "toy", samples


def toy_spec(fixed_splits: bool) -> DatasetSpec:
    return DatasetSpec(name="toy", title="Toy", labels=("calm", "angry"), reader_path=f"{__name__}:read_toy",
                       preset={}, published={}, calibration_target="angry", fixed_splits=fixed_splits)


@pytest.fixture
def toy_folder(tmp_path) -> Path:
    lines = [f"{i} {'calm' if i % 2 else 'angry'} post number {i}" for i in range(1, 31)] + ["31 sleepy no"]
    (tmp_path / "posts.txt").write_text("\n".join(lines), encoding="utf-8")
    for i in range(1, 32):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg())
    return tmp_path


@pytest.mark.parametrize("fixed_splits", [False, True])
def test_a_registered_reader_is_used(monkeypatch, toy_folder, fixed_splits):
    monkeypatch.setitem(REGISTRY, "toy", toy_spec(fixed_splits))
    loaded = load_dataset("toy", toy_folder)
    assert (loaded.name, loaded.layout, loaded.labels) == ("toy", "toy", ["calm", "angry"])
    assert loaded.class_counts() == {"calm": 15, "angry": 15}
    assert loaded.skipped.as_dict() == {"malformed_line": 1}
    if fixed_splits:
        assert loaded.protocol == "official"
        assert {name: {s.id for s in part} for name, part in loaded.splits.items()} == {
            name: {str(i) for i in range(1, 31) if SPLITS[i % 3] == name} for name in SPLITS}
    else:
        assert loaded.protocol == "clara" and sum(map(len, loaded.splits.values())) == 30
        assert len(loaded.splits["train"]) == 2 * int(15 * 0.7)


def test_an_unregistered_dataset_is_refused(toy_folder):
    with pytest.raises(DatasetError, match="unknown dataset 'toy'; choose one of: mvsa_single, mvsa_multiple, hfm"):
        load_dataset("toy", toy_folder)
