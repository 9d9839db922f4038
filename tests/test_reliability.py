"""Issue 7 cases that no other test module covers (docs/RELIABILITY.md lists every case and its test).

- no code path unpickles: a scan of the code base, and a checkpoint holding a pickle payload that
  must be refused without running it;
- awkward images (CMYK, palette, alpha, EXIF-rotated, decompression bombs) through the Predictor
  API, scripts/predict.py and the loaders;
- long texts reported as truncated by scripts/predict.py;
- unwritable output folders refused by predict.py / evaluate.py / explain.py before any work;
- posts skipped by the loader, and undecodable images, reported by evaluate.py;
- a NaN loss in epoch 2 stops training and keeps epoch 1's checkpoints loadable;
- uploads: read in memory only, uploaded and ZIP member names never reach the file system.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _app_utils import DEMO_CHECKPOINT, huge_png_bytes, require_demo
from clara import batch, inputs
from clara.data import ImageError, load_dataset
from clara.data.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
BOMB_MESSAGE = "too many pixels, possibly a decompression bomb"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script_reliability", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys, script: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{script}.py: error: "), err
    assert "Traceback" not in err
    return err


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): enough for PIL's size guard."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def predictor():
    require_demo()
    from clara.inference import Predictor
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def upright() -> Image.Image:
    """A 60x40 picture with structure in every direction, so a wrong rotation changes the prediction."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    pixels[:10, :, 0] = 255  # red band on top
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- safe loading

SOURCE_DIRS = ("clara", "scripts", "pages", "tests")
UNSAFE_PATTERNS = {
    r"\bpickle\.loads?\(": "pickle.load",
    r"\bUnpickler\(": "an Unpickler",
    r"\bjoblib\b": "joblib",
    r"\bcloudpickle\b|\bdill\b": "cloudpickle/dill",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True)",
    r"\bread_pickle\(": "pandas.read_pickle",
    r"\byaml\.load\(": "yaml.load (use yaml.safe_load)",
    r"\btorch\.jit\.load\(": "torch.jit.load",
    r"trust_remote_code\s*=\s*True": "trust_remote_code=True",
}


def _call_text(source: str, start: int) -> str:
    """The text of the call whose '(' is at or after `start`, up to its matching ')'."""
    depth, index = 0, source.index("(", start)
    for position in range(index, len(source)):
        depth += {"(": 1, ")": -1}.get(source[position], 0)
        if depth == 0:
            return source[start:position + 1]
    return source[start:]


def test_no_code_path_unpickles():
    """Every torch.load passes weights_only=True; nothing else that unpickles is used anywhere."""
    problems, torch_loads = [], 0
    this_file = Path(__file__).resolve()
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() == this_file:
                continue
            source = path.read_text(encoding="utf-8")
            code = re.sub(r'"""[\s\S]*?"""|#[^\n]*', "", source)  # docstrings and comments may name them
            where = path.relative_to(ROOT)
            for match in re.finditer(r"\btorch\.load\(", code):
                torch_loads += 1
                call = _call_text(code, match.start())
                if not re.search(r"weights_only\s*=\s*True", call):
                    problems.append(f"{where}: {call[:80]} without weights_only=True")
            for match in re.finditer(r"\bnp\.load\(|\bnumpy\.load\(", code):
                if re.search(r"allow_pickle\s*=\s*True", _call_text(code, match.start())):
                    problems.append(f"{where}: np.load with allow_pickle=True")
            for pattern, what in UNSAFE_PATTERNS.items():
                if re.search(pattern, code):
                    problems.append(f"{where}: {what}")
    assert problems == []
    assert torch_loads >= 2  # the scan does see code: clara/checkpoint/notebook_files.py reads .pt files this way


class _Payload:
    """Unpickling this runs `open(sentinel, 'w')`: proof that something was unpickled."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_a_checkpoint_holding_a_pickle_is_refused_without_running_it(tmp_path, capsys):
    require_demo()
    import pickle  # only to WRITE the hostile file

    from clara.checkpoint import CheckpointError
    from clara.inference import Predictor

    folder = tmp_path / "hostile"
    folder.mkdir()
    for name in ("config.json", "tokenizer"):
        source = DEMO_CHECKPOINT / name
        if source.is_dir():
            (folder / name).mkdir()
            for file in source.iterdir():
                (folder / name / file.name).write_bytes(file.read_bytes())
        else:
            (folder / name).write_bytes(source.read_bytes())
    sentinel = tmp_path / "unpickled.txt"
    payload = pickle.dumps(_Payload(sentinel))
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "training_state.pt"):
        (folder / name).write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        Predictor.from_checkpoint(folder, device="cpu")
    post = tmp_path / "post.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(post)
    assert load_script("predict").main(["--checkpoint", str(folder), "--image", str(post), "--text", "x"]) == 2
    assert "bad checkpoint: " in one_line_error(capsys, "predict")
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- images

def _same_prediction(predictor, stored, seen: Image.Image) -> None:
    """`stored` (file bytes) opens as exactly the pixels of `seen` and is predicted exactly alike
    (one post per call: rows of one batch may differ in the last float bits)."""
    from clara.data.images import open_image

    assert open_image(stored).tobytes() == seen.convert("RGB").tobytes()
    assert inputs.check_image_upload(stored).image.tobytes() == seen.convert("RGB").tobytes()  # the app
    assert predictor.predict([stored], ["a picture"]) == predictor.predict([seen], ["a picture"])


def test_cmyk_palette_alpha_and_exif_images_through_the_predictor_and_the_app(predictor, upright):
    """Each awkward form is predicted as the RGB picture a person sees (not rejected, not garbled)."""
    # EXIF orientation 6 ("rotate 90 clockwise to display"): the stored pixels are the picture turned
    # the other way; open_image must turn them back (lossless PNG, so the pixels match exactly).
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    _same_prediction(predictor, rotated, upright)
    other_way = predictor.predict([upright.transpose(Image.Transpose.ROTATE_90)], ["a picture"])[0]
    assert other_way != predictor.predict([upright], ["a picture"])[0]  # so orientation matters here

    palette = upright.quantize(colors=16)
    _same_prediction(predictor, encoded(palette, "PNG"), palette.convert("RGB"))

    rgba = upright.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(upright.size))
    on_white = Image.new("RGBA", upright.size, (255, 255, 255, 255))
    on_white.alpha_composite(rgba)
    _same_prediction(predictor, encoded(rgba, "PNG"), on_white.convert("RGB"))

    cmyk = encoded(upright.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    _same_prediction(predictor, cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB"))


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (9_000, 9_000)],
                         ids=["over twice the limit (PIL error)", "between limit and twice (PIL warning)"])
def test_decompression_bombs_through_the_predictor_and_predict_script(predictor, tmp_path, capsys, width, height):
    assert Image.MAX_IMAGE_PIXELS == 64_000_000  # set explicitly in clara/data/images.py
    bomb = png_header_only(width, height)
    with pytest.raises(ImageError, match=BOMB_MESSAGE):
        predictor.predict([bomb], ["text"])
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    assert load_script("predict").main(["--checkpoint", str(DEMO_CHECKPOINT), "--image", str(path),
                                        "--text", "x"]) == 2
    err = one_line_error(capsys, "predict")
    assert f"cannot use image {path}: {BOMB_MESSAGE}" in err


def test_a_real_decompression_bomb_in_a_dataset_is_a_counted_skip(tmp_path):
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=3, quirks=False)
    before = load_dataset("mvsa_single", data_dir)
    victim = sorted((data_dir / "data").glob("*.jpg"))[0]
    victim.write_bytes(huge_png_bytes(20_000))  # 0.4 MB on disk, 400 megapixels decoded
    after = load_dataset("mvsa_single", data_dir)
    assert after.skipped.counts["unreadable_image"] == before.skipped.counts.get("unreadable_image", 0) + 1
    assert any(example.startswith(f"{victim.stem}: {BOMB_MESSAGE}")
               for example in after.skipped.examples["unreadable_image"])
    assert sum(len(s) for s in after.splits.values()) == sum(len(s) for s in before.splits.values()) - 1


# ----------------------------------------------------------------------------- texts

def test_predict_script_reports_truncated_texts(predictor, tmp_path, capsys):
    Image.new("RGB", (40, 40), (30, 60, 90)).save(tmp_path / "a.png")
    long_text = "love the park " * 200  # ~600 tokens, the demo reads 128
    script = load_script("predict")
    assert script.main(["--checkpoint", str(DEMO_CHECKPOINT), "--image", str(tmp_path / "a.png"),
                        "--text", long_text, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(text truncated)")
    assert script.main(["--checkpoint", str(DEMO_CHECKPOINT), "--image", str(tmp_path / "a.png"),
                        "--text", long_text, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["text_truncated"] is True
    with (tmp_path / "in.csv").open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["image", "text"], ["a.png", long_text], ["a.png", ""], ["a.png", "short"]])
    assert script.main(["--checkpoint", str(DEMO_CHECKPOINT), "--csv", str(tmp_path / "in.csv"),
                        "--out", str(tmp_path / "out.csv"), "--device", "cpu"]) == 0
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [r["text_truncated"] for r in rows] == ["True", "False", "False"]
    assert all(r["predicted"] in predictor.labels and r["error"] == "" for r in rows)


# ----------------------------------------------------------------------------- unwritable outputs

@pytest.fixture
def blocker(tmp_path) -> Path:
    """A file where a folder is expected: unwritable for every user, root included."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_predict_script_refuses_an_unwritable_out_before_predicting(tmp_path, blocker, capsys):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    (tmp_path / "in.csv").write_text("image,text\na.png,hello\n", encoding="utf-8")
    script = load_script("predict")
    argv = ["--checkpoint", str(DEMO_CHECKPOINT), "--csv", str(tmp_path / "in.csv"), "--out"]
    assert script.main(argv + [str(blocker / "out.csv")]) == 2
    err = one_line_error(capsys, "predict")
    assert f"--out {blocker}/out.csv: cannot write to its folder {blocker} (" in err
    assert script.main(argv + [str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; give a file name" in one_line_error(capsys, "predict")


def test_evaluate_script_refuses_unwritable_outputs_before_evaluating(tmp_path, blocker, capsys):
    require_demo()
    script = load_script("evaluate")
    base = ["--checkpoint", str(DEMO_CHECKPOINT), "--dataset", "mvsa_single", "--data-dir", str(tmp_path)]
    assert script.main(base + ["--results-dir", str(blocker / "results")]) == 2
    assert f"--results-dir {blocker}/results: cannot write there (" in one_line_error(capsys, "evaluate")
    assert script.main(base + ["--out", str(blocker / "m.json")]) == 2
    assert f"--out {blocker}/m.json: cannot write to its folder {blocker}" in one_line_error(capsys, "evaluate")


def test_explain_script_refuses_an_unwritable_out_before_explaining(tmp_path, blocker, capsys):
    require_demo()
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    argv = ["--checkpoint", str(DEMO_CHECKPOINT), "--image", str(tmp_path / "a.png"), "--text", "hello",
            "--out", str(blocker / "explained")]
    assert load_script("explain").main(argv) == 2
    assert f"--out {blocker}/explained: cannot write there (" in one_line_error(capsys, "explain")


# ----------------------------------------------------------------------------- evaluate.py and bad images

def test_evaluate_script_refuses_an_incomplete_checkpoint_with_one_line(tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    argv = ["--checkpoint", str(incomplete), "--dataset", "mvsa_single", "--data-dir", str(tmp_path)]
    assert load_script("evaluate").main(argv) == 2
    assert f"evaluate.py: error: bad checkpoint: no config.json in {incomplete}" in one_line_error(capsys, "evaluate")


def test_evaluate_script_reports_skipped_posts_truncated_texts_and_undecodable_images(tmp_path, capsys):
    require_demo()
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=5, quirks=True)
    loaded = load_dataset("mvsa_single", data_dir, check_images=False)
    expected = loaded.skipped.as_dict()
    assert expected  # the quirks: posts the loader leaves out
    long_post = loaded.splits["val"][1]
    (data_dir / "data" / f"{long_post.id}.txt").write_text("love the park " * 100, encoding="utf-8")
    script = load_script("evaluate")
    argv = ["--checkpoint", str(DEMO_CHECKPOINT), "--dataset", "mvsa_single", "--data-dir", str(data_dir),
            "--split", "val", "--no-ablations", "--device", "cpu", "--json"]
    assert script.main(argv) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["skipped"] == expected
    reasons = ", ".join(f"{reason} {count}" for reason, count in expected.items())
    assert f"evaluate.py: {sum(expected.values())} post(s) of {data_dir} skipped ({reasons})" in captured.err
    assert metrics["truncated_texts"] == 1
    assert (f"evaluate.py: 1 of {len(loaded.splits['val'])} texts are longer than the model reads "
            "(data.max_text_length tokens) and were truncated") in captured.err

    # The demo was trained with data.check_images=false (its split keeps undecodable images, as in
    # training): one in the evaluated split is a one-line error naming the file, not a traceback.
    victim = loaded.splits["val"][0].image_path
    victim.write_bytes(victim.read_bytes()[:40])
    assert script.main(argv) == 2
    err = one_line_error(capsys, "evaluate")
    assert f"cannot use image {victim}: " in err and "data.check_images=false" in err


# ----------------------------------------------------------------------------- training inputs

def test_train_script_reports_truncated_texts_and_names_an_undecodable_image(tmp_path, capsys):
    """check_images=false skips the load-time decode (for speed), so a broken image is found by the
    data loader: one line naming the file and the fix, exit 1, not a traceback."""
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=5, quirks=False)
    loaded = load_dataset("mvsa_single", data_dir, check_images=False)
    long_post = loaded.splits["train"][0]
    (data_dir / "data" / f"{long_post.id}.txt").write_text("love the park " * 100, encoding="utf-8")
    argv = ["--dataset", "mvsa_single", "--data-dir", str(data_dir), "--encoders", "tiny",
            "--output-dir", str(tmp_path / "out"), "--no-progress"]
    for assignment in ("train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=40",
                       "train.calibrate=false", "data.check_images=false", "model.hidden_dim=64",
                       "train.sampler=random"):  # random: every post is drawn, the broken one too
        argv += ["--set", assignment]
    script = load_script("train")
    victim = loaded.splits["train"][1].image_path
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(SystemExit) as stopped:
        script.main(argv)
    assert stopped.value.code == 1
    captured = capsys.readouterr()
    assert (f"1 of {len(loaded.splits['train'])} train texts are longer than data.max_text_length=128 tokens "
            "and are truncated") in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: cannot use image "), err
    assert str(victim) in err and "train with data.check_images=true" in err


# ----------------------------------------------------------------------------- NaN in a later epoch

def test_a_nan_loss_in_epoch_2_stops_training_and_keeps_epoch_1_checkpoints(tmp_path):
    """A NaN injected with PyTorch's global forward hooks (a fault, not a stand-in for clara code):
    every text-embedding output becomes NaN once the model has been validated once (epoch 2)."""
    from torch import nn

    from clara.checkpoint import load_checkpoint
    from clara.config import get_preset
    from clara.model.clara_model import CLARAModel
    from clara.train import TrainingError, train

    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=40, seed=2, quirks=False)
    cfg = get_preset("mvsa_single").override({
        "model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4",
        "data.data_dir": str(data_dir), "data.check_images": "false", "train.output_dir": str(tmp_path / "out"),
        "train.epochs": "3", "train.patience": "3", "train.batch_size": "8", "train.max_steps_per_epoch": "2",
        "train.mixed_precision": "no", "train.calibrate": "false"})
    state = {"validated": False, "poisoned": 0}

    def mark_validation(module, args):
        if isinstance(module, CLARAModel) and not module.training:
            state["validated"] = True

    def poison(module, args, output):
        if isinstance(module, nn.Embedding) and module.training and state["validated"]:
            state["poisoned"] += 1
            return output * float("nan")
        return None

    handles = [nn.modules.module.register_module_forward_pre_hook(mark_validation),
               nn.modules.module.register_module_forward_hook(poison)]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(TrainingError) as stopped:
            train(cfg, progress=False)
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(previous_threads)
    best = tmp_path / "out" / "checkpoints" / "clara_mvsa_single_best"
    last = tmp_path / "out" / "checkpoints" / "clara_mvsa_single_last"
    message = str(stopped.value)
    assert state["poisoned"] > 0
    assert re.search(r"training stopped: the (loss|gradient norm) became nan at epoch 2, step 1", message), message
    assert f"the checkpoints of the last good epoch are kept: {best} (best, epoch 1) and {last}" in message
    for folder in (best, last):
        assert json.loads((folder / "metrics.json").read_text())["epoch"] == 1
        loaded = load_checkpoint(folder)
        assert all(torch.isfinite(t).all() for t in loaded.model.state_dict().values() if t.is_floating_point())
    assert not (tmp_path / "out" / "results" / "mvsa_single" / "metrics.json").exists()


# ----------------------------------------------------------------------------- uploads

def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_uploads_are_read_in_memory_and_names_never_become_paths(tmp_path, monkeypatch):
    """A batch upload whose ZIP members and CSV references try to escape (zip-slip, absolute paths,
    backslashes) is read in memory: nothing is written anywhere, not even in a temporary folder."""
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(scratch))
    png = encoded(Image.new("RGB", (30, 20), (200, 10, 10)), "PNG")
    hostile = ["../../evil.png", "/tmp/abs_evil.png", "..\\..\\win_evil.png", "sub/../../../up_evil.png"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in hostile:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # ZipInfo would clean the name; a hostile archive does not
            zf.writestr(info, png)
    lines = "image,text\n" + "".join(f"\"{name}\",hello\n" for name in hostile)
    before = _files_under(tmp_path)
    items = batch.read_batch(lines.encode(), archive.getvalue())
    assert [item.error for item in items] == [None] * len(hostile)
    assert all(item.image.size == (30, 20) for item in items)
    assert _files_under(tmp_path) == before
    assert not Path("/tmp/abs_evil.png").exists()

    # single uploads: the bytes only; the name is only ever shown, reduced to harmless characters
    checked = inputs.check_image_upload(png)
    assert checked.format == "PNG" and _files_under(tmp_path) == before
    for name in ("../../evil.png", "/etc/passwd", "..\\..\\evil.png", "C:\\x\\evil.png"):
        shown = inputs.safe_display_name(name)
        assert "/" not in shown and "\\" not in shown and shown not in ("", ".", "..")


def test_a_zip_reference_matching_several_members_is_refused_not_guessed():
    first = encoded(Image.new("RGB", (10, 10), (255, 0, 0)), "PNG")
    second = encoded(Image.new("RGB", (12, 12), (0, 0, 255)), "PNG")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/post.png", first)
        zf.writestr("b/post.png", second)
        zf.writestr("c/only.png", second)
    csv_data = b"image,text\npost.png,x\nb/post.png,y\nonly.png,z\n./b/./post.png,w\n"
    ambiguous, exact, unique, dotted = batch.read_batch(csv_data, archive.getvalue())
    assert ambiguous.error == "'post.png' matches 2 files in the ZIP (a/post.png, b/post.png); give its path inside the ZIP."
    assert exact.error is None and exact.image.size == (12, 12)
    assert unique.error is None and unique.image.size == (12, 12)
    assert dotted.error is None and dotted.image.size == (12, 12)


def test_app_code_never_writes_uploads_to_disk():
    """The app's upload paths (pages/, clara_app/, clara/inputs.py, clara/batch.py) hold uploads as
    bytes: no file writes, no ZIP extraction, no temporary files (so no name can ever become a path)."""
    forbidden = re.compile(r"\.extract(all)?\(|\btempfile\b|\.write_bytes\(|\.write_text\(|"
                           r"open\([^)]*['\"][wax]b?['\"]|\.save\(\s*['\"/]|shutil\.(copy|move)")
    found = []
    for path in [ROOT / "clara" / "inputs.py", ROOT / "clara" / "batch.py", *sorted((ROOT / "clara_app").glob("*.py")),
                 *sorted((ROOT / "pages").glob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if forbidden.search(line.split("#")[0]):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_app_pages_keep_hostile_upload_names_off_the_file_system(tmp_path, monkeypatch):
    """Through the real pages (Streamlit AppTest): an image uploaded as `../../evil.png` and a batch
    whose CSV and ZIP names and members try to escape are predicted; no file appears anywhere."""
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    require_demo()
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = _files_under(tmp_path)
    png = encoded(Image.new("RGB", (48, 32), (20, 160, 40)), "PNG")

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180).run()
    assert not at.exception
    at = at.switch_page("pages/predict.py").run()
    at.file_uploader(key="upload").set_value(("../../evil.png", png, "image/png"))
    at.run()
    at.text_area(key="post_text").set_value("a green picture")
    at.radio(key="text_source").set_value("post text only")
    at.button(key="predict").click().run()
    assert not at.exception and not at.error
    assert at.metric[0].value in ("positive", "neutral", "negative")
    captions = [image.proto.imgs[0].caption for image in at.get("image")]
    assert any(caption.startswith("evil.png · PNG · 48x32") for caption in captions), captions

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("../../evil.png", "/tmp/abs_evil.png"):
            info = zipfile.ZipInfo("placeholder")
            info.filename = name
            zf.writestr(info, png)
    at = at.switch_page("pages/batch.py").run()
    at.file_uploader(key="batch_csv").set_value(
        ("../../../evil.csv", b"image,text\n../../evil.png,hello\n/tmp/abs_evil.png,hi\n", "text/csv"))
    at.file_uploader(key="batch_zip").set_value(("/tmp/evil.zip", archive.getvalue(), "application/zip"))
    at.run()
    at.button(key="batch_predict").click().run()
    assert not at.exception
    assert "**2** of 2 rows predicted" in "\n".join(str(m.value) for m in at.markdown)

    # onnxruntime (the Predict page's OCR engine) may leave its own session folder in TMPDIR: not an upload
    assert {p for p in _files_under(tmp_path) if p.name != ".ses"} == before
    assert not [p for folder in (ROOT, ROOT.parent) for p in folder.glob("*evil*")]
    assert not any(Path("/tmp", name).exists() for name in ("abs_evil.png", "evil.zip", "evil.csv"))
