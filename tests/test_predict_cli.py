"""scripts/predict.py: one post (text and JSON), batch CSV with bad rows reported per row, and
one-line exit-2 errors."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clara.checkpoint import save_checkpoint
from clara.inference import Predictor
from _eval_utils import build_model, jpeg_bytes, one_thread, random_image, tiny_config  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "predict.py"


def load_script():
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "clara_best", model, tokenizer, cfg)


@pytest.fixture
def post(tmp_path) -> Path:
    path = tmp_path / "post.jpg"
    path.write_bytes(jpeg_bytes(random_image(3)))
    return path


def test_one_post_as_json_from_the_command_line(checkpoint, post):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint), "--image", str(post),
                          "--text", "i love this sunny day", "--json", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict([post], ["i love this sunny day"])[0]
    assert printed["label"] == expected.label
    assert printed["probs"] == pytest.approx(expected.probs, abs=1e-6)
    assert set(printed) == {"label", "label_index", "probs", "uncertainty", "pred_probs", "verify_probs",
                            "text_only_probs", "image_only_probs", "text_truncated"}


def test_one_post_as_text(checkpoint, post, capsys):
    assert load_script().main(["--checkpoint", str(checkpoint), "--image", str(post), "--text", "", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] in ("positive", "neutral", "negative")
    assert lines[1].startswith("positive ") and "neutral " in lines[1] and lines[2].startswith("uncertainty ")


def test_batch_csv_reports_bad_rows_and_predicts_the_rest(checkpoint, tmp_path, capsys):
    images = tmp_path / "posts" / "img"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(jpeg_bytes(random_image(1)))
    (images / "b.jpg").write_bytes(jpeg_bytes(random_image(2)))
    (images / "broken.jpg").write_bytes(b"this is not an image")
    table = tmp_path / "posts" / "in.csv"
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "text"])
        writer.writerows([["img/a.jpg", "great day, love it"], ["img/missing.jpg", "where is it"],
                          ["img/broken.jpg", "broken"], ["img/b.jpg", ""], ["", "no image"]])
    out = tmp_path / "out" / "predictions.csv"
    assert load_script().main(["--checkpoint", str(checkpoint), "--csv", str(table), "--out", str(out),
                               "--batch-size", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err[:3]] == ["row 3", "row 4", "row 6"]
    assert "missing.jpg: file not found" in err[0]
    assert err[-1].startswith("predicted 2 of 5 rows (3 failed)")

    with out.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["id", "text", "image_path", "label", "predicted", "prob_positive", "prob_neutral",
                             "prob_negative", "uncertainty", "text_truncated", "error"]
    assert [row["id"] for row in rows] == ["2", "3", "4", "5", "6"]
    assert [bool(row["error"]) for row in rows] == [False, True, True, False, True]
    assert rows[4]["error"] == "no image path"
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    expected = predictor.predict([images / "a.jpg", images / "b.jpg"], ["great day, love it", ""])
    assert [rows[0]["predicted"], rows[3]["predicted"]] == [p.label for p in expected]
    assert float(rows[3]["prob_neutral"]) == pytest.approx(expected[1].probs["neutral"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nope", "--image", "{post}", "--text", "x"], "checkpoint folder .*nope does not exist"),
    (["--checkpoint", "{ck}", "--image", "{tmp}/absent.jpg", "--text", "x"], "cannot use image .*absent.jpg: file not found"),
    (["--checkpoint", "{ck}", "--image", "{bad}", "--text", "x"], "cannot use image .*bad.jpg"),
    (["--checkpoint", "{empty}", "--image", "{post}", "--text", "x"], "bad checkpoint: no config.json in .*incomplete"),
    (["--checkpoint", "{ck}", "--image", "{post}"], "one post needs both --image and --text"),
    (["--checkpoint", "{ck}"], "give either --image and --text"),
    (["--checkpoint", "{ck}", "--image", "{post}", "--text", "x", "--set", "fusion"], "--set 'fusion': expected"),
    (["--checkpoint", "{ck}", "--csv", "{tmp}/in.csv", "--out", "{tmp}/o.csv"], "--csv .*in.csv does not exist"),
    (["--checkpoint", "{ck}", "--csv", "{nocol}", "--out", "{tmp}/o.csv"], r"missing column\(s\) text"),
    (["--checkpoint", "{ck}", "--csv", "{tmp}", "--out", "{tmp}/o.csv"], r"--csv .* is a folder"),
    (["--checkpoint", "{ck}", "--csv", "{nocol}", "--out", "{nocol}"], r"--out .*nocol.csv is the input CSV"),
    (["--checkpoint", "{ck}", "--image", "{post}", "--text", "abc\udcff"], "not valid Unicode at position 3"),
    (["--checkpoint", "{ck}", "--csv", "{nocol}", "--out", "{tmp}/o.csv", "--ocr"], "--ocr reads the text of one post"),
])
def test_bad_input_exits_2_with_one_line(checkpoint, post, tmp_path, capsys, args, message):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty_ck").mkdir()
    (tmp_path / "nocol.csv").write_text("image,caption\na.jpg,hi\n", encoding="utf-8")
    values = {"tmp": tmp_path, "post": post, "ck": checkpoint, "bad": tmp_path / "bad.jpg",
              "empty": tmp_path / "empty_ck", "nocol": tmp_path / "nocol.csv"}
    assert load_script().main([arg.format(**values) for arg in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("predict.py: error: ")
    import re
    assert re.search(message, err), err


def test_int8_prediction_of_the_trained_demo_keeps_its_answers(tmp_path, capsys):
    """--int8 (dynamic quantisation, CPU): on the trained demo checkpoint the bundled examples keep
    their labels and move by little; torch's deprecation notice does not reach the user."""
    demo, examples = REPO / "checkpoints" / "demo", REPO / "examples"
    listing = json.loads((examples / "examples.json").read_text(encoding="utf-8"))
    rows = [{"image": str(examples / entry["image"]), "text": entry["text"]} for entry in listing]
    posts = tmp_path / "posts.csv"
    pd.DataFrame(rows).to_csv(posts, index=False)
    script = load_script()
    outputs = {}
    for flag in ([], ["--int8"]):
        out = tmp_path / f"pred{len(flag)}.csv"
        assert script.main(["--checkpoint", str(demo), "--csv", str(posts), "--out", str(out), *flag]) == 0
        outputs[bool(flag)] = pd.read_csv(out)
    assert "deprecated" not in capsys.readouterr().err
    fp32, int8 = outputs[False], outputs[True]
    assert len(fp32) == len(listing) >= 5
    assert list(int8["predicted"]) == list(fp32["predicted"])
    prob_columns = [c for c in fp32.columns if c.startswith("prob")]
    assert prob_columns and (int8[prob_columns] - fp32[prob_columns]).abs().max().max() < 0.05


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_an_output_that_cannot_be_written_is_one_line(checkpoint, post, tmp_path, capsys):
    table = tmp_path / "in.csv"
    table.write_text(f"image,text\n{post},hello\n", encoding="utf-8")
    assert load_script().main(["--checkpoint", str(checkpoint), "--csv", str(table), "--out", "/dev/full",
                               "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["predict.py: error: --out /dev/full: cannot write it (No space left on device)"]
    assert Path("/dev/full").is_char_device()  # written to, never replaced by a file



@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{empty}", "--input", "{table}", "--out", "{tmp}/s"], "bad checkpoint: .*empty_ck: No such file"),
    (["--checkpoint", "{ck}", "--input", "{tmp}/absent.parquet", "--out", "{tmp}/s"], "--input .*absent.parquet does not exist"),
    (["--checkpoint", "{ck}", "--input", "{tmp}/notes.txt", "--out", "{tmp}/s"], "unknown table format '.txt'"),
    (["--checkpoint", "{ck}", "--input", "{nocol}", "--out", "{tmp}/s"], r"missing column\(s\) text"),
    (["--checkpoint", "{ck}", "--input", "{table}", "--out", "{table}"], "--out .*in.csv is a file"),
    (["--checkpoint", "{ck}", "--input", "{table}", "--out", "{tmp}/full"], "is not empty and holds no _manifest.json"),
    (["--checkpoint", "{ck}", "--input", "{table}", "--csv", "{table}", "--out", "{tmp}/s"], "give either"),
    (["--checkpoint", "{ck}", "--input", "{table}"], "a scoring job needs --out"),
    (["--checkpoint", "{ck}", "--csv", "{table}", "--out", "{tmp}/o.csv", "--engine", "ray"], "are for a scoring job"),
    (["--checkpoint", "{ck}", "--input", "{table}", "--out", "{tmp}/s", "--shard-size", "0"], "--shard-size must be"),
])
def test_a_scoring_job_that_cannot_start_exits_2_with_one_line(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "empty_ck").mkdir()
    (tmp_path / "in.csv").write_text("image,text\na.jpg,hi\n", encoding="utf-8")
    (tmp_path / "nocol.csv").write_text("image,caption\na.jpg,hi\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("not a job", encoding="utf-8")
    values = {"tmp": tmp_path, "ck": checkpoint, "empty": tmp_path / "empty_ck", "table": tmp_path / "in.csv",
              "nocol": tmp_path / "nocol.csv"}
    assert load_script().main([arg.format(**values) for arg in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("predict.py: error: ")
    import re
    assert re.search(message, err), err


def _bundled_meme() -> tuple[Path, list[str]]:
    """The gallery's meme and the words OCR must read in it (as tests/test_ocr.py takes them)."""
    from _app_utils import EXAMPLES_DIR

    entry = next(e for e in json.loads((EXAMPLES_DIR / "examples.json").read_text()) if e["name"].startswith("meme_"))
    return EXAMPLES_DIR / entry["image"], entry.get("image_text", "").lower().split() or [entry["note"].split("'")[1]]


def test_ocr_reads_the_bundled_meme_and_says_so(checkpoint, capsys, monkeypatch):
    from clara import ocr

    assert ocr.rapidocr_available(), "rapidocr + onnxruntime are in requirements.txt: pip install -r requirements.txt"
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)  # only what requirements.txt installs
    image, expected = _bundled_meme()
    read = []
    real_predict = Predictor.predict

    def recording(self, images, texts, **kwargs):
        read.extend(texts)
        return real_predict(self, images, texts, **kwargs)

    monkeypatch.setattr(Predictor, "predict", recording)
    main = load_script().main
    assert main(["--checkpoint", str(checkpoint), "--image", str(image), "--ocr", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] in ("positive", "neutral", "negative")
    [note] = [line for line in captured.err.splitlines() if "OCR" in line]
    assert note.startswith("predict.py: text read from the image by OCR (rapidocr")
    assert set(expected) <= set(read[-1].split()) and all(word in note for word in expected)
    # typed text comes first, the image's text after it (the app's default "both")
    assert main(["--checkpoint", str(checkpoint), "--image", str(image), "--text", "so true", "--ocr", "rapidocr",
                 "--device", "cpu"]) == 0
    assert read[-1].startswith("so true ") and set(expected) <= set(read[-1].split())


def test_ocr_without_an_engine_is_one_line_saying_what_to_install(checkpoint, post, capsys, monkeypatch):
    from clara import ocr

    monkeypatch.setattr(ocr, "rapidocr_available", lambda: False)
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)
    for engine in ([], ["tesseract"]):
        assert load_script().main(["--checkpoint", str(checkpoint), "--image", str(post), "--ocr", *engine]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("predict.py: error: --ocr: ")
        assert "not installed" in err and "pip install rapidocr onnxruntime" in err
    with pytest.raises(SystemExit, match="2"):  # argparse's own one line
        load_script().main(["--checkpoint", str(checkpoint), "--image", str(post), "--ocr", "easyocr"])
    assert "argument --ocr: invalid choice: 'easyocr'" in capsys.readouterr().err
