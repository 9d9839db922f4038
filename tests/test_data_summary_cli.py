"""scripts/data_summary.py: the JSON contract, the readable table and exit code 2."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from _data_fixtures import build_hfm, build_mvsa_single_raw

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "data_summary.py"
_spec = importlib.util.spec_from_file_location("data_summary", SCRIPT)
data_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_summary)


@pytest.fixture(scope="module")
def single_raw(tmp_path_factory):
    return build_mvsa_single_raw(tmp_path_factory.mktemp("mvsa_single_raw"))


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = data_summary.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_standard_protocol(capsys, single_raw):
    code, out, err = run_main(capsys, "--dataset", "mvsa_single", "--data-dir", str(single_raw),
                              "--protocol", "standard", "--json")
    assert code == 0
    assert json.loads(out) == {
        "dataset": "mvsa_single", "layout": "raw", "protocol": "standard", "total": 26,
        "class_counts": {"positive": 12, "neutral": 5, "negative": 9},
        "splits": {"train": 23, "val": 1, "test": 2},
        "skipped": {"duplicate_id": 1, "empty_text": 1, "labels_conflict": 1, "malformed_line": 5,
                    "missing_image": 2, "missing_text": 1, "undecodable_text": 1, "unreadable_image": 3},
        "removed_after_split": {"train": {"undecodable_text": 1, "unreadable_image": 3},
                                "val": {"empty_text": 1}, "test": {}},
    }
    assert out.count("\n") == 1  # exactly one JSON object on one line


def test_json_hfm_hashtag_and_splits_file(capsys, tmp_path):
    root = build_hfm(tmp_path / "hfm")
    code, out, _ = run_main(capsys, "--dataset", "hfm", "--data-dir", str(root), "--hfm-label", "hashtag", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["class_counts"] == {"not_sarcastic": 6, "sarcastic": 6}
    assert summary["protocol"] == "official" and summary["layout"] == "mixed"
    splits = tmp_path / "splits.tsv"
    splits.write_text("100\ttrain\n200\tval\n300\ttest\n")
    code, out, _ = run_main(capsys, "--dataset", "hfm", "--data-dir", str(root), "--splits", str(splits), "--json")
    summary = json.loads(out)
    assert summary["protocol"] == "official+splits-file"
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1}
    assert summary["skipped"]["not_in_splits_file"] == 9


def test_readable_table_shows_counts_and_skip_examples(capsys, single_raw):
    code, out, _ = run_main(capsys, "--dataset", "mvsa_single", "--data-dir", str(single_raw))
    assert code == 0
    assert "layout  raw" in out and "protocol  clara" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["positive"] == ["6", "2", "2", "10"]
    assert rows["total"] == ["13", "3", "6", "22"]
    assert ("removed after the split (skipped below; the split was computed with them):\n"
            "   train       4  (empty_text 1, undecodable_text 1, unreadable_image 2)\n"
            "     val       0\n"
            "    test       1  (unreadable_image 1)\n") in out
    assert "texts not in UTF-8, decoded: 1 as cp1252" in out
    assert "skipped (19):" in out
    assert "       6  labels_disagree\n            e.g. 30 (text positive, image neutral)\n" in out
    assert "            e.g. labelResultAll.txt:39 '50\\tpositive'" in out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "hfm", "--data-dir", "{mvsa}"], "error: no text/ folder in"),
    (["--dataset", "mvsa_single", "--data-dir", "{empty}"], "error: no labelResultAll.txt in"),
    (["--dataset", "mvsa", "--data-dir", "{mvsa}"], "error: unknown dataset 'mvsa'"),
    (["--dataset", "mvsa_single", "--data-dir", "{mvsa}", "--protocol", "xu"], "error: unknown protocol 'xu'"),
])
def test_not_a_dataset_exits_2_with_one_line(capsys, tmp_path, single_raw, args, message):
    args = [a.format(mvsa=single_raw, empty=tmp_path) for a in args]
    code, out, err = run_main(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_as_a_subprocess(single_raw, tmp_path):
    ok = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "mvsa_single", "--data-dir", str(single_raw),
                         "--json", "--no-check-images"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 25  # unreadable images not looked at
    bad = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "mvsa_multiple", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith(f"error: no labelResultAll.txt in {tmp_path}: expected an MVSA-Multiple folder")
    assert bad.stderr.count("\n") == 1
