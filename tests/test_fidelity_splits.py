"""Splits equal the authors' notebooks' for every post both sides keep, checked by running the
notebooks' own loading and splitting code (tests/_authors_data.py) beside `load_dataset`, on
generated folders of each format (clean, with quirks, with repeated ids) and on the same label
files in shuffled line order."""
from __future__ import annotations

import codecs
import random
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from _authors_data import (LABEL_ATTRIBUTE, notebook_config, notebook_data_cell, requires_notebooks,
                           run_notebook_data_cell)
from _data_fixtures import build_hfm, build_mvsa_multiple_raw, build_mvsa_single_raw, jpeg
from clara.data import load_dataset
from clara.data.splits import stratified_split
from clara.data.synthetic import read_meta, write_synthetic
from clara.data.types import SPLITS

pytestmark = requires_notebooks
MVSA_FORMATS = ("mvsa_single", "mvsa_multiple")
N_POSTS = 150


# ----------------------------------------------------------------------------- folder builders

def _shuffle_lines(path: Path, seed: int, keep_first: bool) -> None:
    """Shuffle a text file's lines in place (a header kept first; a BOM stays at the file start)."""
    raw = path.read_bytes()
    bom = codecs.BOM_UTF8 if raw.startswith(codecs.BOM_UTF8) else b""
    newline = b"\r\n" if b"\r\n" in raw else b"\n"
    lines = raw[len(bom):].splitlines()
    head, rest = (lines[:1], lines[1:]) if keep_first else ([], lines)
    random.Random(seed).shuffle(rest)
    path.write_bytes(bom + newline.join(head + rest) + newline)


def shuffled_copy(root: Path, out: Path, seed: int = 3) -> Path:
    shutil.copytree(root, out)
    if (out / "labelResultAll.txt").is_file():
        _shuffle_lines(out / "labelResultAll.txt", seed, keep_first=True)
    else:
        for path in sorted((out / "text").glob("*.txt")):
            _shuffle_lines(path, seed, keep_first=False)
    return out


def _kept_lines(folder: Path) -> list[str]:
    """Label-file lines of posts the synthetic meta says the clara protocol keeps."""
    posts = read_meta(folder)["posts"]
    lines = (folder / "labelResultAll.txt").read_bytes().decode("utf-8-sig").splitlines()
    return [line for line in lines if line.split("\t")[0] in posts
            and not posts[line.split("\t")[0]]["expected"]["clara"].startswith("skip:")]


def with_repeated_ids(fmt: str, folder: Path) -> tuple[Path, set[str]]:
    """Add repeated ids to a synthetic MVSA folder: a relabelling agreeing line (the notebook's dict
    takes its label, in place), a disagreeing line before an agreeing one (we take the first line
    and skip the post, the notebook keeps it) and an exact repeat. Returns the relabelled ids."""
    annotators = 1 if fmt == "mvsa_single" else 3
    kept = _kept_lines(folder)
    relabel, disagree_first, repeat = kept[0], kept[1], kept[2]
    post_id, label = relabel.split("\t")[0], relabel.split("\t")[1].split(",")[0]
    other = "negative" if label != "negative" else "positive"
    path = folder / "labelResultAll.txt"
    lines = path.read_bytes().decode("utf-8-sig").splitlines()
    disagreeing = disagree_first.split("\t")[0] + "\t" + "\t".join(["positive,negative"] * annotators)
    lines.insert(lines.index(disagree_first), disagreeing)
    lines += [post_id + "\t" + "\t".join([f"{other},{other}"] * annotators), repeat]
    path.write_bytes(codecs.BOM_UTF8 + "\r\n".join(lines).encode() + b"\r\n")
    return folder, {post_id}


def hfm_with_extra_quirks(folder: Path) -> Path:
    """Add to a synthetic HFM folder a train id repeated in val and a non-UTF-8 test line, both with images."""
    text = folder / "text"
    train_id = (text / "train.txt").read_text(encoding="utf-8").splitlines()[0].split("'")[1]
    with (text / "valid2.txt").open("ab") as file:
        file.write(f"['{train_id}', 'said again in val', 0, 0]\r\n".encode())
    with (text / "test2.txt").open("ab") as file:
        file.write(b"['900000000000000001', 'caf\xe9 not utf-8', 1, 1]\r\n")
    (folder / "image" / "900000000000000001.jpg").write_bytes(jpeg())
    return folder


def notebook_hfm_text_dir(folder: Path) -> Path:
    """The notebook reads train.txt, val.txt (or valid.txt) and test.txt: the same files under those names."""
    names = {"train.txt": ("train.txt",), "val.txt": ("valid2.txt", "val.txt"), "test.txt": ("test2.txt", "test.txt")}
    out = folder.parent / f"{folder.name}_notebook_text"
    out.mkdir()
    for name, sources in names.items():
        source = next(folder / "text" / s for s in sources if (folder / "text" / s).is_file())
        shutil.copyfile(source, out / name)
    return out


# ----------------------------------------------------------------------------------- MVSA

def _mvsa_cases(root: Path) -> dict[str, tuple[str, Path, set[str], Counter]]:
    """name -> (format, folder, ids whose label differs from the notebook's, reasons of the
    notebook's posts we remove after the split)."""
    cases = {}
    for fmt in MVSA_FORMATS:
        fixture = (build_mvsa_single_raw if fmt == "mvsa_single" else build_mvsa_multiple_raw)(root / f"{fmt}_fixture")
        fixture_removed = Counter({"empty_text": 1, "undecodable_text": 1, "unreadable_image": 3}
                                  if fmt == "mvsa_single" else {"unreadable_image": 1})
        cases[f"{fmt}-fixture"] = (fmt, fixture, {"1"} if fmt == "mvsa_single" else set(), fixture_removed)
        clean = root / f"{fmt}_clean"
        write_synthetic(fmt, clean, N_POSTS, seed=5, quirks=False)
        cases[f"{fmt}-clean"] = (fmt, clean, set(), Counter())
        quirky = root / f"{fmt}_quirky"
        write_synthetic(fmt, quirky, N_POSTS, seed=5, quirks=True)
        quirky_removed = Counter({"empty_text": 1, "unreadable_image": 2})
        cases[f"{fmt}-quirky"] = (fmt, quirky, set(), quirky_removed)
        repeated = root / f"{fmt}_repeated"
        write_synthetic(fmt, repeated, N_POSTS, seed=6, quirks=True)
        repeated, relabelled = with_repeated_ids(fmt, repeated)
        cases[f"{fmt}-repeated"] = (fmt, repeated, relabelled, quirky_removed + Counter({"labels_disagree": 1}))
    for name in list(cases):
        fmt, folder, relabelled, removed = cases[name]
        cases[f"{name}-shuffled"] = (fmt, shuffled_copy(folder, folder.parent / f"{folder.name}_shuffled"),
                                     relabelled, removed)
    return cases


@pytest.fixture(scope="module")
def mvsa_cases(tmp_path_factory):
    return _mvsa_cases(tmp_path_factory.mktemp("fidelity_mvsa"))


def notebook_mvsa_splits(fmt: str, folder: Path) -> dict[str, list[tuple[str, str]]]:
    paths = {"text_dir": str(folder / "data"), "label_file": str(folder / "labelResultAll.txt")}
    return run_notebook_data_cell(fmt, paths)


CASE_NAMES = [f"{fmt}-{kind}{order}" for fmt in MVSA_FORMATS for kind in ("fixture", "clean", "quirky", "repeated")
              for order in ("", "-shuffled")]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_mvsa_clara_split_is_the_notebooks(mvsa_cases, case):
    fmt, folder, relabelled, removed = mvsa_cases[case]
    ours = load_dataset(fmt, folder, protocol="clara")
    notebook = notebook_mvsa_splits(fmt, folder)
    for name in SPLITS:
        our_ids = {s.id for s in ours.splits[name]}
        notebook_ids = {post_id for post_id, _ in notebook[name]}
        # Every post we keep is the notebook's, in the same split ...
        assert our_ids <= notebook_ids, (name, our_ids - notebook_ids)
        # ... and the notebook's others are the ones we removed from that split after splitting.
        assert len(notebook_ids) - len(our_ids) == sum(ours.removed_after_split[name].values()), name
    assert sum((Counter(ours.removed_after_split[name]) for name in SPLITS), Counter()) == removed
    notebook_labels = {post_id: label for part in notebook.values() for post_id, label in part}
    assert {s.id for s in ours.samples if ours.labels[s.label] != notebook_labels[s.id]} == relabelled


@pytest.mark.parametrize("fmt", MVSA_FORMATS)
def test_shuffled_label_files_give_other_splits(mvsa_cases, fmt):
    # The shuffled files are a real test of file order: the notebook itself splits them differently.
    _, folder, _, _ = mvsa_cases[f"{fmt}-quirky"]
    _, shuffled, _, _ = mvsa_cases[f"{fmt}-quirky-shuffled"]
    membership = [{post_id: name for name, part in notebook_mvsa_splits(fmt, f).items() for post_id, _ in part}
                  for f in (folder, shuffled)]
    assert membership[0].keys() == membership[1].keys()
    assert sum(membership[0][i] != membership[1][i] for i in membership[0]) > len(membership[0]) // 4


@pytest.mark.parametrize("fmt", MVSA_FORMATS)
@pytest.mark.parametrize("class_sizes", [(1398, 470, 724), (2173, 1268, 114), (90, 170, 7), (0, 1, 2), (33, 0, 180)])
def test_split_rule_is_the_notebooks_on_class_sizes(fmt, class_sizes):
    # The notebook's own MVSALoader.split, with its CONFIG's ratios and seed, on posts of these
    # class sizes (published MVSA-Single / -Multiple, and sizes where int(n * 0.7) is float-rounded).
    loader_class = notebook_data_cell(fmt)["MVSALoader"]
    config = notebook_config(fmt)
    names = ("positive", "neutral", "negative")
    posts = [SimpleNamespace(id=f"{label}-{i}", label=label) for label, size in enumerate(class_sizes)
             for i in range(size)]
    random.Random(1).shuffle(posts)  # any reading order
    notebook_posts = [SimpleNamespace(**{LABEL_ATTRIBUTE[fmt]: names[p.label]}, post=p) for p in posts]
    loader = loader_class("unused", "unused")
    loader.samples = notebook_posts
    parts = loader.split(config["train_ratio"], config["val_ratio"], config["seed"])
    notebook = {name: [p.post.id for p in part] for name, part in zip(SPLITS, parts)}
    ours = stratified_split(posts, "clara", seed=config["seed"])
    assert {name: {p.id for p in part} for name, part in ours.items()} == {k: set(v) for k, v in notebook.items()}
    published = {(1398, 470, 724): (1813, 387, 392), (2173, 1268, 114): (2487, 532, 536)}
    if class_sizes in published:
        assert tuple(len(notebook[name]) for name in SPLITS) == published[class_sizes]


# ------------------------------------------------------------------------------------ HFM

def _bom_first_line_ids(text_dir: Path) -> set[str]:
    """Ids on a first line behind a UTF-8 BOM: the notebook's literal_eval cannot parse that line."""
    ids = set()
    for path in text_dir.glob("*.txt"):
        raw = path.read_bytes()
        if raw.startswith(codecs.BOM_UTF8):
            ids.add(raw[len(codecs.BOM_UTF8):].splitlines()[0].decode().split("'")[1])
    return ids


def _hfm_cases(root: Path) -> dict[str, tuple[Path, Counter]]:
    """name -> (folder, reasons of the notebook's posts we remove after the split)."""
    fixture = build_hfm(root / "fixture", variant="flat")
    # 103 (keyword), 107 (empty text), 109 (broken image); val's repeat of 100 (its image is in image/).
    cases = {"fixture": (fixture, Counter({"train_keyword_filter": 1, "empty_text": 1, "unreadable_image": 1,
                                           "duplicate_id": 1}))}
    clean = root / "clean"
    write_synthetic("hfm", clean, N_POSTS, seed=5, quirks=False)
    cases["clean"] = (clean, Counter())
    quirky = root / "quirky"
    write_synthetic("hfm", quirky, N_POSTS, seed=5, quirks=True)
    quirky_removed = Counter({"train_keyword_filter": 2, "empty_text": 1, "unreadable_image": 2})
    cases["quirky"] = (quirky, quirky_removed)
    extra = root / "extra"
    write_synthetic("hfm", extra, N_POSTS, seed=6, quirks=True)
    extra_removed = quirky_removed + Counter({"duplicate_id": 1, "undecodable_text": 1})
    cases["extra"] = (hfm_with_extra_quirks(extra), extra_removed)
    for name in list(cases):
        folder, removed = cases[name]
        cases[f"{name}-shuffled"] = (shuffled_copy(folder, root / f"{name}_shuffled"), removed)
    return cases


@pytest.fixture(scope="module")
def hfm_cases(tmp_path_factory):
    return _hfm_cases(tmp_path_factory.mktemp("fidelity_hfm"))


@pytest.mark.parametrize("case", [f"{kind}{order}" for kind in ("fixture", "clean", "quirky", "extra")
                                  for order in ("", "-shuffled")])
def test_hfm_posts_are_the_notebooks(hfm_cases, case):
    folder, removed = hfm_cases[case]
    ours = load_dataset("hfm", folder, hfm_label="hashtag")  # the notebook's label: the third field
    paths = {"text_dir": str(notebook_hfm_text_dir(folder)), "image_root": str(folder)}
    notebook = run_notebook_data_cell("hfm", paths)
    only_ours = _bom_first_line_ids(folder / "text")
    for name in SPLITS:
        ours_in_split = {s.id: s.label for s in ours.splits[name]}
        notebook_in_split = dict(reversed(notebook[name]))  # an id's first line wins
        # Every post we keep is the notebook's, in the same split with the same label (but the
        # first line of a file behind a BOM, which only we read) ...
        assert {i: label for i, label in ours_in_split.items() if i not in only_ours} == {
            i: notebook_in_split[i] for i in ours_in_split if i not in only_ours}, name
        # ... and the notebook's others are the ones we removed from that split.
        read_only_by_us = len(set(ours_in_split) & only_ours)
        assert len(notebook[name]) - (len(ours_in_split) - read_only_by_us) == \
            sum(ours.removed_after_split[name].values()), name
    assert sum((Counter(ours.removed_after_split[name]) for name in SPLITS), Counter()) == removed
