"""The synthetic generator writes the exact raw formats, labels that need both cues, and the
planted quirks it records; and the real loaders find exactly what its meta file predicts."""
from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clara.data import SKIP_REASONS
from clara.data.synthetic import (CUE_COLOURS, CUE_WORDS, FORMATS, META_FILENAME, hfm_label, mvsa_label, read_meta,
                                  write_synthetic)

REPO = Path(__file__).resolve().parents[1]
N_QUIRKY = 60
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def quirky(tmp_path_factory) -> dict[str, Path]:
    """One quirky folder per format, shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("synthetic")
    for fmt in FORMATS:
        write_synthetic(fmt, root / fmt, N_QUIRKY, seed=7)
    return {fmt: root / fmt for fmt in FORMATS}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic_clean")
    for fmt in FORMATS:
        write_synthetic(fmt, root / fmt, 400, seed=3, quirks=False)
    return {fmt: root / fmt for fmt in FORMATS}


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _decode(raw: bytes) -> str:
    raw = raw.removeprefix(BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _mvsa_label_lines(folder: Path) -> list[str]:
    return _decode((folder / "labelResultAll.txt").read_bytes()).split("\r\n")


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_arguments_give_byte_identical_folders(tmp_path, quirky, fmt):
    write_synthetic(fmt, tmp_path / "again", N_QUIRKY, seed=7)
    assert _tree(tmp_path / "again") == _tree(quirky[fmt])
    write_synthetic(fmt, tmp_path / "other_seed", N_QUIRKY, seed=8)
    other = _tree(tmp_path / "other_seed")
    assert other[META_FILENAME] != _tree(quirky[fmt])[META_FILENAME]


def test_out_dir_rules(tmp_path):
    (tmp_path / "user_folder").mkdir()
    (tmp_path / "user_folder" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic("hfm", tmp_path / "user_folder", 40)
    with pytest.raises(FileExistsError, match="was not written by the synthetic generator"):
        write_synthetic("hfm", tmp_path / "user_folder", 40, overwrite=True)
    assert (tmp_path / "user_folder" / "keep.txt").read_text() == "x"
    write_synthetic("hfm", tmp_path / "syn", 40)
    write_synthetic("mvsa_single", tmp_path / "syn", 40, overwrite=True)
    assert read_meta(tmp_path / "syn")["format"] == "mvsa_single"
    assert not (tmp_path / "syn" / "text").exists()
    with pytest.raises(ValueError, match="need at least 40 posts"):
        write_synthetic("mvsa_single", tmp_path / "small", 39)
    with pytest.raises(ValueError, match="unknown synthetic format 'mmsd'"):
        write_synthetic("mmsd", tmp_path / "bad", 40)


# ------------------------------------------------------------------------------- file formats


def test_mvsa_single_raw_format(quirky):
    folder = quirky["mvsa_single"]
    meta = read_meta(folder)
    raw = (folder / "labelResultAll.txt").read_bytes()
    assert raw.startswith(BOM) and raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    lines = _mvsa_label_lines(folder)[:-1]
    assert lines[0] == "ID\ttext,image"
    body = lines[1:]
    assert body.count("") == 1  # the planted blank line
    malformed = meta["expected"]["clara"]["malformed_lines"]
    assert len(malformed) == 2 and all(line in body for line in malformed)
    parsed = {}
    for line in body:
        if line and line not in malformed:
            post_id, pair = line.split("\t")
            parsed[post_id] = pair.split(",")
    assert len(parsed) == N_QUIRKY and list(parsed) == sorted(parsed, key=int)
    for post_id, post in meta["posts"].items():
        assert parsed[post_id] == [post["annotations"]["text"][0], post["annotations"]["image"][0]]
        assert set(parsed[post_id]) <= {"positive", "neutral", "negative"}
    assert sorted(p.name for p in folder.iterdir()) == ["data", "labelResultAll.txt", META_FILENAME]


def test_mvsa_multiple_raw_format(quirky):
    folder = quirky["mvsa_multiple"]
    meta = read_meta(folder)
    lines = _mvsa_label_lines(folder)[:-1]
    assert lines[0] == "ID\ttext,image\ttext,image\ttext,image"
    malformed = set(meta["expected"]["clara"]["malformed_lines"])
    rows = [line.split("\t") for line in lines[1:] if line and line not in malformed]
    assert len(rows) == N_QUIRKY and all(len(row) == 4 for row in rows)
    for row in rows:
        annotations = meta["posts"][row[0]]["annotations"]
        assert [pair.split(",") for pair in row[1:]] == [list(p) for p in zip(annotations["text"], annotations["image"])]
    # The malformed lines really are malformed: not three text,image pairs.
    for line in malformed:
        fields = line.split("\t")
        assert len(fields) != 4 or any(len(f.split(",")) != 2 for f in fields[1:])


def test_hfm_raw_format(quirky):
    folder = quirky["hfm"]
    meta = read_meta(folder)
    assert sorted(p.name for p in (folder / "text").iterdir()) == ["test2.txt", "train.txt", "valid2.txt"]
    assert all(p.suffix == ".jpg" for p in (folder / "image").iterdir())
    malformed = set(meta["expected"]["human"]["malformed_lines"])
    seen: dict[str, str] = {}
    for filename, split, n_fields in (("train.txt", "train", 3), ("valid2.txt", "val", 4), ("test2.txt", "test", 4)):
        raw = (folder / "text" / filename).read_bytes()
        assert raw.startswith(BOM) == (split == "val")
        assert raw.count(b"\r\n") == raw.count(b"\n") > 0  # CRLF everywhere
        for line in raw.removeprefix(BOM).decode("utf-8").split("\r\n")[:-1]:
            if not line or line in malformed:
                continue
            fields = ast.literal_eval(line)
            assert isinstance(fields, list) and len(fields) == n_fields
            post = meta["posts"][fields[0]]
            assert post["split"] == split and fields[-1] == meta["labels"].index(post["label"])
            assert fields[2] == post["annotations"]["hashtag_label"]
            seen[fields[0]] = fields[1]
    assert set(seen) == set(meta["posts"])
    for line in malformed:
        with pytest.raises(SyntaxError):
            ast.literal_eval(line)
    quoted = [pid for pid, p in meta["posts"].items() if p["quirk"] == "quote_in_text"]
    assert len(quoted) == 1 and "it's" in seen[quoted[0]]


# ------------------------------------------------------------------------------- labels need both cues


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_needs_both_modalities(clean, fmt):
    posts = list(read_meta(clean[fmt])["posts"].values())
    rule = hfm_label if fmt == "hfm" else mvsa_label
    assert all(p["label"] == rule(p["text_cue"], p["image_cue"]) for p in posts)
    for cue in ("text_cue", "image_cue"):
        # The best any predictor can do from one cue: the majority label for each cue value.
        by_value = Counter((p[cue], p["label"]) for p in posts)
        best = sum(max(c for (v, _), c in by_value.items() if v == value) for value in ("positive", "negative"))
        assert 0.35 <= best / len(posts) <= 0.65, (cue, best)
        if fmt != "hfm":
            agreement = sum(p[cue] == p["label"] for p in posts) / len(posts)
            assert 0.35 <= agreement <= 0.65
    counts = Counter(p["label"] for p in posts)
    expected = {"not_sarcastic": 200, "sarcastic": 200} if fmt == "hfm" else {"positive": 100, "neutral": 200, "negative": 100}
    assert counts == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_carry_the_recorded_cues(quirky, fmt):
    folder = quirky[fmt]
    meta = read_meta(folder)
    hfm_texts = {}
    if fmt == "hfm":
        for name in ("train.txt", "valid2.txt", "test2.txt"):
            for line in _decode((folder / "text" / name).read_bytes()).split("\r\n"):
                try:
                    fields = ast.literal_eval(line)
                except (SyntaxError, ValueError):
                    continue
                hfm_texts[fields[0]] = fields[1]
    checked = 0
    for post_id, post in meta["posts"].items():
        quirk = post["quirk"]
        text = hfm_texts[post_id] if fmt == "hfm" else None
        if fmt != "hfm" and quirk != "missing_text":
            text = _decode((folder / "data" / f"{post_id}.txt").read_bytes())
        if text is not None and quirk != "empty_text":
            tokens = text.split()
            assert tokens[post["word_index"]] == post["word"]
            assert [t for t in tokens if t in CUE_WORDS["positive"] + CUE_WORDS["negative"]] == [post["word"]]
            assert post["word"] in CUE_WORDS[post["text_cue"]]
        if post["image_file"] is None or quirk in ("truncated_jpeg", "zero_byte_image"):
            continue
        with Image.open(folder / post["image_file"]) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
        assert list(upright.size) == post["image_size"]
        x0, y0, x1, y1 = post["box"]
        inside = np.asarray(upright, dtype=float)[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).mean(axis=0)
        assert np.abs(inside - CUE_COLOURS[post["image_cue"]]).max() < 40, (post_id, quirk, inside)
        checked += 1
    assert checked >= N_QUIRKY - 5


def test_realistic_sizes_and_lengths(tmp_path):
    write_synthetic("hfm", tmp_path / "r", 12, seed=1, quirks=False, realistic=True)
    for post in read_meta(tmp_path / "r")["posts"].values():
        width, height = post["image_size"]
        assert 375 <= min(width, height) and max(width, height) <= 1024
        assert 15 <= len(post["text"].split()) <= 30
        short = min(width, height)
        x0, y0, x1, y1 = post["box"]  # inside the central square that a center crop keeps
        assert (width - short) // 2 <= x0 < x1 <= (width + short) // 2 + 1
        assert (height - short) // 2 <= y0 < y1 <= (height + short) // 2 + 1


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    write_synthetic("mvsa_single", tmp_path / "big", 600, seed=0)
    assert time.perf_counter() - start < 15  # ~1 s on an idle core; loose for a shared machine


# ------------------------------------------------------------------------------- planted quirks


MVSA_FILE_SKIPS = {"empty_text": 1, "malformed_line": 2, "missing_image": 1, "missing_text": 1,
                   "unreadable_image": 2}
EXPECTED_SKIPS = {
    ("mvsa_single", "clara"): {**MVSA_FILE_SKIPS, "labels_disagree": 3},
    ("mvsa_single", "standard"): {**MVSA_FILE_SKIPS, "labels_conflict": 1},
    ("mvsa_multiple", "clara"): {**MVSA_FILE_SKIPS, "labels_disagree": 4},
    ("mvsa_multiple", "standard"): {**MVSA_FILE_SKIPS, "labels_conflict": 1, "no_majority": 1},
    ("hfm", "human"): {"empty_text": 1, "malformed_line": 2, "missing_image": 1,
                       "train_keyword_filter": 3, "unreadable_image": 2},
}
EXPECTED_SKIPS[("hfm", "hashtag")] = EXPECTED_SKIPS[("hfm", "human")]


@pytest.mark.parametrize("fmt,key", sorted(EXPECTED_SKIPS))
def test_expected_counts_in_meta(quirky, fmt, key):
    expected = read_meta(quirky[fmt])["expected"][key]
    assert expected["skipped"] == dict(sorted(EXPECTED_SKIPS[(fmt, key)].items()))
    posts_skipped = sum(EXPECTED_SKIPS[(fmt, key)].values()) - EXPECTED_SKIPS[(fmt, key)]["malformed_line"]
    assert expected["total"] == N_QUIRKY - posts_skipped == sum(expected["class_counts"].values())
    if "splits" in expected:
        assert sum(expected["splits"].values()) == expected["total"]


def test_mvsa_standard_merges_disagreements(quirky):
    for fmt in ("mvsa_single", "mvsa_multiple"):
        meta = read_meta(quirky[fmt])
        by_quirk = {p["quirk"]: p for p in meta["posts"].values() if p["quirk"]}
        assert by_quirk["merge_to_positive"]["expected"] == {"clara": "skip:" + "labels_disagree", "standard": "positive"}
        assert by_quirk["merge_to_negative"]["expected"] == {"clara": "skip:" + "labels_disagree", "standard": "negative"}
        assert by_quirk["conflict"]["expected"]["standard"] == "skip:" + "labels_conflict"
        clara, standard = meta["expected"]["clara"], meta["expected"]["standard"]
        assert standard["class_counts"]["positive"] == clara["class_counts"]["positive"] + 1
        assert standard["class_counts"]["negative"] == clara["class_counts"]["negative"] + 1


def test_clara_split_sizes_follow_the_published_rule(quirky):
    from clara.data.synthetic import _clara_split_sizes

    assert _clara_split_sizes({"positive": 1398, "neutral": 470, "negative": 724}) == {"train": 1813, "val": 387, "test": 392}
    assert _clara_split_sizes({"positive": 2173, "neutral": 1268, "negative": 114}) == {"train": 2487, "val": 532, "test": 536}


@pytest.mark.parametrize("fmt", FORMATS)
def test_planted_file_quirks_are_real(quirky, fmt):
    folder = quirky[fmt]
    meta = read_meta(folder)
    image_dir = folder / ("image" if fmt == "hfm" else "data")
    quirk_ids = {}
    for post_id, post in meta["posts"].items():
        quirk_ids.setdefault(post["quirk"], []).append(post_id)
    image_path = {pid: image_dir / f"{pid}.jpg" for pid in meta["posts"]}

    missing = [pid for pid, path in image_path.items() if not path.exists()]
    assert sorted(missing) == sorted(quirk_ids["missing_image"] + quirk_ids.get("keyword_filter_no_image", []))
    assert [image_path[p].stat().st_size for p in quirk_ids["zero_byte_image"]] == [0]
    for pid in quirk_ids["truncated_jpeg"] + quirk_ids["zero_byte_image"]:
        with pytest.raises(OSError):
            with Image.open(image_path[pid]) as image:
                image.load()
    formats = {pid: Image.open(path).format for pid, path in image_path.items()
               if path.exists() and path.stat().st_size and meta["posts"][pid]["quirk"] != "truncated_jpeg"}
    assert sorted(pid for pid, f in formats.items() if f == "PNG") == quirk_ids["png_as_jpg"]
    assert sorted(pid for pid, f in formats.items() if f == "GIF") == quirk_ids["palette_gif_as_jpg"]
    modes = {pid: Image.open(image_path[pid]).mode for pid in formats}
    assert sorted(pid for pid, m in modes.items() if m == "CMYK") == quirk_ids["cmyk_jpeg"]
    assert sorted(pid for pid, m in modes.items() if m == "P") == quirk_ids["palette_gif_as_jpg"]
    rotated = [pid for pid in formats if Image.open(image_path[pid]).getexif().get(0x0112, 1) != 1]
    assert rotated == quirk_ids["exif_rotated"]

    if fmt == "hfm":
        emoji_lines = [line for name in ("train.txt", "valid2.txt", "test2.txt")
                       for line in (folder / "text" / name).read_text(encoding="utf-8-sig").splitlines()
                       if any(ord(ch) > 0xFFFF for ch in line)]
        assert len(emoji_lines) == 2
        assert (folder / "text" / "train.txt").read_bytes().count(b"\r\n\r\n") == 1  # one blank line
        keyword_posts = quirk_ids["keyword_filter"] + quirk_ids["keyword_filter_no_image"]
        assert all({"sarcasm", "joke", "<url>"} & set(meta["posts"][p]["text"].split()) for p in keyword_posts)
        kept_keyword = quirk_ids["keyword_kept_in_test"]
        assert meta["posts"][kept_keyword[0]]["split"] == "test" and "sarcasm" in meta["posts"][kept_keyword[0]]["text"].split()
        differs = [p for p in meta["posts"].values() if p["annotations"]["hashtag_label"] != p["annotations"]["human_label"]]
        assert Counter(p["split"] for p in differs) == {"val": 2, "test": 2}
        return

    texts = {pid: (folder / "data" / f"{pid}.txt") for pid in meta["posts"]}
    assert [pid for pid, path in texts.items() if not path.exists()] == quirk_ids["missing_text"]
    raw = {pid: path.read_bytes() for pid, path in texts.items() if path.exists()}

    def not_utf8(data: bytes) -> bool:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    assert sorted(pid for pid, b in raw.items() if not_utf8(b)) == sorted(quirk_ids["latin1_text"])
    assert [pid for pid, b in raw.items() if b.startswith(BOM)] == quirk_ids["bom_text"]
    assert [pid for pid, b in raw.items() if b.endswith(b"\r\n")] == quirk_ids["crlf_text"]
    assert [pid for pid, b in raw.items() if not b.strip()] == quirk_ids["empty_text"]
    assert sorted(pid for pid, b in raw.items() if not not_utf8(b) and any(ord(c) > 0xFFFF for c in b.decode("utf-8"))) \
        == sorted(quirk_ids["emoji_text"])


# ------------------------------------------------------------------------------- command line


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_and_refuses_bad_arguments(tmp_path):
    out = tmp_path / "cli"
    done = _run_cli("--format", "mvsa_multiple", "--out", str(out), "--n", "40", "--seed", "5", "--image-size", "64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "expected kept by a loader: clara" in done.stdout
    write_synthetic("mvsa_multiple", tmp_path / "lib", 40, seed=5, image_size=64)
    assert _tree(out) == _tree(tmp_path / "lib")

    again = _run_cli("--format", "mvsa_multiple", "--out", str(out), "--n", "40")
    assert again.returncode == 2 and "is not empty" in again.stderr and "--overwrite" in again.stderr
    assert _run_cli("--format", "mvsa_multiple", "--out", str(out), "--n", "40", "--overwrite").returncode == 0
    small = _run_cli("--format", "hfm", "--out", str(tmp_path / "s"), "--n", "12")
    assert small.returncode == 2 and "need at least 40 posts" in small.stderr
    assert _run_cli("--format", "hfm", "--out", str(tmp_path / "s"), "--n", "12", "--no-quirks").returncode == 0
    assert _run_cli("--format", "mmsd", "--out", str(tmp_path / "x"), "--n", "40").returncode == 2
    assert _run_cli("--format", "hfm", "--out", str(tmp_path / "x"), "--n", "0").returncode == 2


# ------------------------------------------------------------------------------- the real loaders


def _load_dataset():
    try:
        from clara.data import load_dataset
    except ImportError as exc:  # the loaders land in the same issue; until then this is reported
        pytest.skip(f"clara.data.load_dataset is not available yet: {exc}")
    return load_dataset


LOADER_CASES = [("mvsa_single", "clara"), ("mvsa_single", "standard"), ("mvsa_multiple", "clara"),
                ("mvsa_multiple", "standard"), ("hfm", "human"), ("hfm", "hashtag")]


@pytest.mark.parametrize("fmt,key", LOADER_CASES)
@pytest.mark.parametrize("which", ["quirky", "clean"])
def test_loader_matches_meta(request, fmt, key, which):
    load_dataset = _load_dataset()
    folder = request.getfixturevalue(which)[fmt]
    meta = read_meta(folder)
    if fmt == "hfm":
        loaded = load_dataset(fmt, folder, hfm_label=key)
    else:
        loaded = load_dataset(fmt, folder, protocol=key)
    expected = meta["expected"][key]
    summary = loaded.summary_dict()
    assert summary["skipped"] == expected["skipped"]
    assert summary["total"] == expected["total"]
    assert summary["class_counts"] == expected["class_counts"]
    if "splits" in expected:
        assert summary["splits"] == expected["splits"]
    if "splits_before_removal" in expected:
        removed = summary["removed_after_split"]
        assert {name: n + sum(removed[name].values()) for name, n in summary["splits"].items()} == \
            expected["splits_before_removal"]
    want = {pid: p["expected"][key] for pid, p in meta["posts"].items() if not p["expected"][key].startswith("skip:")}
    got = {s.id: loaded.labels[s.label] for s in loaded.samples}
    assert got == want
    for sample in loaded.samples:
        post = meta["posts"][sample.id]
        assert sample.text.split()[post["word_index"]] == post["word"], sample.id
        assert Path(sample.image_path).resolve() == (folder / post["image_file"]).resolve()
        if fmt == "hfm":
            assert sample.id in {s.id for s in loaded.splits[post["split"]]}


def test_skip_reason_names_are_the_loaders(quirky):
    written = {reason for fmt in FORMATS for expected in read_meta(quirky[fmt])["expected"].values()
               for reason in expected["skipped"]}
    assert written and written <= set(SKIP_REASONS)