"""MVSA-Single / MVSA-Multiple loaders on fixture folders in both layouts, both protocols."""
from __future__ import annotations

import pytest
from PIL import Image

from _data_fixtures import build_mvsa_multiple_raw, build_mvsa_simplified, build_mvsa_single_raw, jpeg, write_lines
from clara.data import DatasetError, load_dataset
from clara.data.mvsa import decode_text, resolve_label


@pytest.fixture(scope="module")
def single_raw(tmp_path_factory):
    return build_mvsa_single_raw(tmp_path_factory.mktemp("mvsa_single_raw"))


@pytest.fixture(scope="module")
def multiple_raw(tmp_path_factory):
    return build_mvsa_multiple_raw(tmp_path_factory.mktemp("mvsa_multiple_raw"))


@pytest.fixture(scope="module")
def simplified(tmp_path_factory):
    return build_mvsa_simplified(tmp_path_factory.mktemp("mvsa_simplified"))


COMMON_SINGLE_SKIPS = {"malformed_line": 5, "duplicate_id": 1, "missing_text": 1, "empty_text": 1,
                       "undecodable_text": 1, "unreadable_image": 3}


def test_single_raw_clara_protocol(single_raw):
    loaded = load_dataset("mvsa_single", single_raw, protocol="clara")
    summary = loaded.summary_dict()
    assert summary == {
        "dataset": "mvsa_single", "layout": "raw", "protocol": "clara", "total": 22,
        "class_counts": {"positive": 10, "neutral": 5, "negative": 7},
        # Split over the notebook's set (empty, undecodable and unreadable posts included; id 1
        # neutral, as its last agreeing line says), per class floor(0.7 n) / floor(0.15 n) / rest:
        # positive 2-10, 43, 44: 7/1/3; neutral 1, 11-15, 46: 4/1/2; negative 16-22, 42, 45: 6/1/2
        # = 17/3/7; then the five refused posts are removed: 4 from train, 1 from test.
        "splits": {"train": 13, "val": 3, "test": 6},
        "skipped": {**COMMON_SINGLE_SKIPS, "labels_disagree": 6, "missing_image": 1},
        "removed_after_split": {"train": {"empty_text": 1, "undecodable_text": 1, "unreadable_image": 2},
                                "val": {}, "test": {"unreadable_image": 1}},
    }
    assert loaded.skipped.examples["labels_disagree"] == [
        "30 (text positive, image neutral)", "31 (text neutral, image negative)",
        "32 (text negative, image neutral)", "33 (text positive, image negative)",
        "34 (text neutral, image positive)"]
    assert loaded.skipped.examples["missing_image"] == ["40"]
    assert loaded.skipped.examples["undecodable_text"] == ["43"]
    assert [e.split(":")[0] for e in loaded.skipped.examples["unreadable_image"]] == ["44", "45", "46"]
    assert "truncated" in loaded.skipped.examples["unreadable_image"][0]
    malformed = loaded.skipped.examples["malformed_line"]
    assert malformed[0].startswith("labelResultAll.txt:39 '50\\tpositive'")
    assert "2 text,image label pair(s), expected 1" in malformed[4]
    assert loaded.skipped.examples["duplicate_id"] == ["labelResultAll.txt:44 '1\\tneutral,neutral'"]


def test_single_raw_standard_protocol(single_raw):
    loaded = load_dataset("mvsa_single", single_raw, protocol="standard")
    summary = loaded.summary_dict()
    assert summary["protocol"] == "standard"
    assert summary["total"] == 26
    assert summary["class_counts"] == {"positive": 12, "neutral": 5, "negative": 9}
    # 8:1:1 over the posts with label and files in place (refused ones included), val and test
    # floored per class: positive 12 + 43, 44: 12/1/1; neutral 5 + 46: 6/0/0; negative 9 + 42, 45:
    # 9/1/1 = 27/2/2; then the five refused posts are removed: 4 from train, 1 from val.
    assert summary["splits"] == {"train": 23, "val": 1, "test": 2}
    assert summary["removed_after_split"] == {"train": {"undecodable_text": 1, "unreadable_image": 3},
                                              "val": {"empty_text": 1}, "test": {}}
    assert summary["skipped"] == {**COMMON_SINGLE_SKIPS, "labels_conflict": 1, "missing_image": 2}
    assert loaded.skipped.examples["labels_conflict"] == ["33 (text positive, image negative)"]
    by_id = {s.id: s for s in loaded.samples}
    assert {i: loaded.labels[by_id[i].label] for i in ("30", "31", "32", "34")} == {
        "30": "positive", "31": "negative", "32": "negative", "34": "positive"}
    assert by_id["30"].annotations == {"text": ["positive"], "image": ["neutral"]}


def test_single_raw_texts_and_images(single_raw):
    loaded = load_dataset("mvsa_single", single_raw)
    by_id = {s.id: s for s in loaded.samples}
    assert by_id["1"].text == "I love this \U0001F60D #sunny"
    assert by_id["2"].text == "caf\xe9 \u201cquoted\u201d fun"
    assert by_id["2"].annotations["text_encoding"] == "cp1252"
    assert "text_encoding" not in by_id["1"].annotations
    assert by_id["7"].text == "text file with a BOM"
    assert by_id["10"].text == "two lines of text"
    assert by_id["5"].image_path.name == "5.png"
    assert by_id["3"].image_path.name == "3.jpg"
    assert by_id["9"].label == 0  # "POSITIVE,Positive"
    assert by_id["1"].label == 0  # the first line for a duplicated id wins
    assert "99" not in by_id  # an image without a label line is not a post


def test_check_images_false_keeps_undecodable_images(single_raw):
    loaded = load_dataset("mvsa_single", single_raw, check_images=False)
    assert loaded.summary_dict()["total"] == 25
    assert "unreadable_image" not in loaded.skipped.counts


def test_multiple_raw_both_protocols(multiple_raw):
    clara = load_dataset("mvsa_multiple", multiple_raw, protocol="clara").summary_dict()
    assert clara["layout"] == "raw"
    assert clara["class_counts"] == {"positive": 6, "neutral": 3, "negative": 4}
    # 27 (unreadable) is split with the neutral class (4 posts: 2/0/2), then removed from train.
    assert clara["splits"] == {"train": 7, "val": 0, "test": 6}
    assert clara["removed_after_split"] == {"train": {"unreadable_image": 1}, "val": {}, "test": {}}
    assert clara["skipped"] == {"labels_disagree": 6, "missing_image": 1, "unreadable_image": 1,
                                "malformed_line": 2}
    standard = load_dataset("mvsa_multiple", multiple_raw, protocol="standard")
    assert standard.summary_dict()["class_counts"] == {"positive": 7, "neutral": 4, "negative": 5}
    assert standard.summary_dict()["splits"] == {"train": 16, "val": 0, "test": 0}
    assert standard.skipped.as_dict() == {"no_majority": 2, "labels_conflict": 1, "missing_image": 1,
                                          "unreadable_image": 1, "malformed_line": 2}
    assert standard.skipped.examples["no_majority"] == [
        "21 (text positive/neutral/negative, image positive/positive/positive)",
        "25 (text positive/positive/positive, image neutral/negative/positive)"]
    labels = {s.id: standard.labels[s.label] for s in standard.samples}
    assert {i: labels[i] for i in ("20", "22", "24")} == {"20": "positive", "22": "negative", "24": "neutral"}


def test_simplified_layout_keeps_every_label_under_both_protocols(simplified):
    # Split with the empty text (6) and the broken image (10), which are removed afterwards.
    for protocol, splits in (("clara", {"train": 4, "val": 0, "test": 3}),
                             ("standard", {"train": 7, "val": 0, "test": 0})):
        loaded = load_dataset("mvsa_single", simplified, protocol=protocol)
        summary = loaded.summary_dict()
        assert summary["layout"] == "simplified"
        assert summary["class_counts"] == {"positive": 2, "neutral": 2, "negative": 3}
        assert summary["splits"] == splits
        assert summary["skipped"] == {"malformed_line": 2, "duplicate_id": 1, "empty_text": 1,
                                      "missing_image": 1, "unreadable_image": 1}
    by_id = {s.id: s for s in loaded.samples}
    assert by_id["2"].text == "just a photo | with a pipe in it"
    assert by_id["5"].label == 2 and by_id["4"].label == 0
    assert by_id["11"].text == "caf\xe9 in cp1252"
    assert by_id["1"].text == "I love this \U0001F60D"
    # MVSA-Multiple in the simplified layout reads the same way.
    assert load_dataset("mvsa_multiple", simplified).summary_dict()["total"] == 7


def test_resolve_label_rules():
    assert resolve_label(["positive"], ["positive"], "clara") == ("positive", None)
    assert resolve_label(["positive"], ["neutral"], "clara") == (None, "labels_disagree")
    assert resolve_label(["neutral"], ["negative"], "standard") == ("negative", None)
    assert resolve_label(["positive"], ["negative"], "standard") == (None, "labels_conflict")
    three = ["neutral", "neutral", "positive"]
    assert resolve_label(three, ["neutral"] * 3, "clara") == (None, "labels_disagree")
    assert resolve_label(three, ["negative", "negative", "neutral"], "standard") == ("negative", None)
    assert resolve_label(["positive", "neutral", "negative"], ["positive"] * 3, "standard") == (None, "no_majority")


def test_decode_text_fallbacks():
    assert decode_text("\U0001F600 ok".encode()) == ("\U0001F600 ok", "utf-8")
    assert decode_text(b"\xef\xbb\xbfbom") == ("bom", "utf-8")
    assert decode_text("na\xefve".encode("cp1252")) == ("na\xefve", "cp1252")
    assert decode_text("wide".encode("utf-16"))  # with its BOM == ("wide", "utf-16")
    assert decode_text(b"\x81\x8d") is None  # bytes cp1252 leaves undefined
    assert decode_text(b"abc\x00def") is None  # a binary file


@pytest.mark.parametrize("folder_setup, message", [
    (lambda root: None, "no labelResultAll.txt in"),
    (lambda root: write_lines(root / "labelResultAll.txt", ["ID\ttext,image", "1\tpositive,positive"]),
     "is in the raw layout but"),
    (lambda root: write_lines(root / "labelResultAll.txt", ["1 | positive | hi"]),
     "is in the simplified layout but"),
])
def test_wrong_folder_gives_one_clear_error(tmp_path, folder_setup, message):
    folder_setup(tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("mvsa_single", tmp_path)
    assert "\n" not in str(info.value)


def test_missing_label_file_message_says_what_is_expected_and_points_to_subfolder(tmp_path, single_raw):
    (tmp_path / "MVSA_Single").mkdir()
    (tmp_path / "MVSA_Single" / "labelResultAll.txt").write_text("ID\ttext,image\n")
    with pytest.raises(DatasetError) as info:
        load_dataset("mvsa_single", tmp_path)
    message = str(info.value)
    assert message.startswith(f"no labelResultAll.txt in {tmp_path}: expected an MVSA-Single folder")
    assert "data/" in message and "images/" in message and "subfolder(s) MVSA_Single" in message
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        load_dataset("mvsa_single", tmp_path / "nope")


def test_single_and_multiple_folders_are_told_apart(single_raw, multiple_raw):
    with pytest.raises(DatasetError, match=r"3 text,image label pair\(s\) on most lines.*--dataset mvsa_multiple"):
        load_dataset("mvsa_single", multiple_raw)
    with pytest.raises(DatasetError, match=r"1 text,image label pair\(s\) on most lines.*--dataset mvsa_single"):
        load_dataset("mvsa_multiple", single_raw)


def test_all_posts_skipped_is_an_error_naming_the_reasons(tmp_path):
    write_lines(tmp_path / "labelResultAll.txt", ["ID\ttext,image", "1\tpositive,positive"])
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="no usable post .*'missing_image': 1"):
        load_dataset("mvsa_single", tmp_path)


def test_unknown_dataset_and_protocol(single_raw):
    with pytest.raises(DatasetError, match="unknown dataset 'mvsa'; choose one of: mvsa_single, mvsa_multiple, hfm"):
        load_dataset("mvsa", single_raw)
    with pytest.raises(DatasetError, match="unknown protocol 'official'"):
        load_dataset("mvsa_single", single_raw, protocol="official")


def test_lf_only_and_no_header_work(tmp_path):
    write_lines(tmp_path / "labelResultAll.txt", ["7\tnegative,negative", "8\tneutral , neutral"], newline=b"\n")
    (tmp_path / "data").mkdir()
    for post_id in ("7", "8"):
        (tmp_path / "data" / f"{post_id}.jpg").write_bytes(jpeg())
        (tmp_path / "data" / f"{post_id}.txt").write_text("hello")
    loaded = load_dataset("mvsa_single", tmp_path)
    assert loaded.summary_dict()["class_counts"] == {"positive": 0, "neutral": 1, "negative": 1}
    assert loaded.skipped.total == 0
    with Image.open(loaded.samples[0].image_path) as image:
        assert image.size == (8, 8)


def test_layout_is_sniffed_from_most_lines(tmp_path):
    # The first line has no pipes (malformed), the others do: still the simplified layout.
    write_lines(tmp_path / "labelResultAll.txt", ["1 positive hello", "2 | neutral | hi", "3 | negative | bye"])
    (tmp_path / "images").mkdir()
    for post_id in ("2", "3"):
        (tmp_path / "images" / f"{post_id}.jpg").write_bytes(jpeg())
    loaded = load_dataset("mvsa_single", tmp_path)
    assert loaded.layout == "simplified"
    assert loaded.summary_dict()["total"] == 2 and loaded.skipped.as_dict() == {"malformed_line": 1}
