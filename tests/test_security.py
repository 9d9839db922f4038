"""Hostile files (issue 13): code shipped in model folders never runs, damaged weights are refused
naming the tensor, thin images cannot take gigabytes, training runs lock their output folder,
killed saves are cleaned up, weight files are world-readable, and the notebook importer never
repeats torch's advice to unpickle."""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock, Timeout
from PIL import Image
from safetensors.torch import load_file, save_file

from _eval_utils import build_model, published_config, tiny_config, write_encoder_folders
from _process_utils import WarmPython
from clara.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clara.locks import TRAINING_LOCK_FILE, lock_temporary_folder, release_temporary_folder
from clara.model import EncoderError, build_text_encoder
from clara.untrusted import UntrustedFolderError, check_model_folder

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "checkpoints" / "demo"
PREDICT = REPO / "scripts" / "predict.py"
TRAIN = REPO / "scripts" / "train.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
MARKER_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("the shipped code ran")
"""


@pytest.fixture(scope="module")
def scripts() -> Iterator[WarmPython]:
    """Runs each script as a process of its own, forked from one Python that imported torch,
    transformers and clara once (tests/_process_utils.py): a fresh interpreter's imports cost
    more than most of these runs."""
    warm = WarmPython(ENV, REPO)
    try:
        assert messages(warm.preload_stderr()) == [], warm.preload_stderr()[-3000:]  # importing printed nothing
        yield warm
    finally:
        warm.close()


def run_script(scripts: WarmPython, script: Path, *args: str, stdin: str = "y\n",
               timeout: int = 180) -> subprocess.CompletedProcess:
    """The script in a process of its own, answering `y` to any question on stdin (as an attacker hopes)."""
    return scripts.run(script, *args, stdin=stdin, timeout=timeout)


def demo_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "ck", ignore=shutil.ignore_patterns("results")))


@pytest.fixture
def post_image(tmp_path) -> Path:
    path = tmp_path / "post.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def messages(stderr: str) -> list[str]:
    """stderr without library noise that is not the script's: transformers' progress bars while
    published encoders load, torch's glog-style warnings (torchao, when installed, triggers some)."""
    return [line for line in stderr.strip().splitlines()
            if line.strip() and not line.startswith("Loading weights") and not re.match(r"[WI]\d{4} \d\d:\d\d", line)]


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = messages(done.stderr)
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("predict.py: error: "), done.stderr[-3000:]
    assert "[y/N]" not in done.stdout + done.stderr  # never a prompt
    return lines[0]


# ------------------------------------------------------------------ no remote code

@pytest.mark.parametrize("attack", ["auto_map and code file", "auto_map naming code elsewhere", "custom class"])
def test_a_checkpoint_tokenizer_asking_for_custom_code_is_refused_without_running_it(tmp_path, post_image, attack,
                                                                                    scripts):
    folder = demo_copy(tmp_path)
    marker = tmp_path / "pwned"
    settings_file = folder / "tokenizer" / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    settings["tokenizer_class"] = "EvilTokenizer"
    if attack == "auto_map and code file":
        settings["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
        (folder / "tokenizer" / "evil.py").write_text(
            MARKER_CODE.format(marker=str(marker))
            + "from transformers import PreTrainedTokenizerFast\n"
            + "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    elif attack == "auto_map naming code elsewhere":
        settings["auto_map"] = {"AutoTokenizer": [None, "attacker/repo--evil.EvilTokenizer"]}
    settings_file.write_text(json.dumps(settings))

    line = one_error_line(run_script(scripts, PREDICT, "--checkpoint", folder, "--image", post_image, "--text", "hi"))
    assert not marker.exists()
    assert "bad checkpoint" in line
    expected = {"auto_map and code file": "evil.py is Python code inside a model folder",
                "auto_map naming code elsewhere": "has an 'auto_map' entry",
                "custom class": "tokenizer_class 'EvilTokenizer' is not a class of transformers"}[attack]
    assert expected in line, line


def test_a_local_text_encoder_asking_for_custom_code_is_refused_without_running_it(tmp_path, post_image, scripts):
    vision_dir, text_dir = write_encoder_folders(tmp_path / "hub")
    cfg = published_config(vision_dir, text_dir)
    model, tokenizer = build_model(cfg)
    checkpoint = save_checkpoint(tmp_path / "published_ck", model, tokenizer, cfg)
    evil = Path(shutil.copytree(text_dir, tmp_path / "evil_text"))
    marker = tmp_path / "pwned"
    settings = json.loads((evil / "config.json").read_text())
    settings.update(model_type="evil-deberta",
                    auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (evil / "config.json").write_text(json.dumps(settings))
    (evil / "evil.py").write_text(MARKER_CODE.format(marker=str(marker)) + (
        "from transformers import DebertaV2Config, DebertaV2Model\n"
        "class EvilConfig(DebertaV2Config):\n    model_type = 'evil-deberta'\n"
        "class EvilModel(DebertaV2Model):\n    config_class = EvilConfig\n"))

    line = one_error_line(run_script(scripts, PREDICT, "--checkpoint", checkpoint, "--image", post_image, "--text",
                                     "hi", "--set", f"model.text_encoder={evil}"))
    assert not marker.exists()
    assert f"refusing model.text_encoder='{evil}'" in line and "evil.py is Python code" in line, line
    # The same folder without the code file: its auto_map alone is refused.
    (evil / "evil.py").unlink()
    with pytest.raises(EncoderError, match="has an 'auto_map' entry"):
        build_text_encoder(published_config(vision_dir, evil).model, tokenizer)
    assert not marker.exists()


def test_every_from_pretrained_call_refuses_remote_code():
    """transformers asks on stdin (or runs the code) unless trust_remote_code=False is given."""
    import transformers

    transformers_names = set(dir(transformers))
    calls = []
    for path in sorted((REPO / "clara").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in transformers_names):  # not clara's own Predictor.from_pretrained
                passed = {kw.arg: kw.value for kw in node.keywords}
                refused = (isinstance(passed.get("trust_remote_code"), ast.Constant)
                           and passed["trust_remote_code"].value is False)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", refused))
    assert len(calls) >= 6, calls
    assert [where for where, refused in calls if not refused] == []


def test_check_model_folder_accepts_real_folders_and_names_each_refusal(tmp_path):
    check_model_folder(DEMO)
    vision_dir, text_dir = write_encoder_folders(tmp_path / "hub")
    check_model_folder(vision_dir)
    check_model_folder(text_dir)
    # Names transformers reads its own way: a dropped Fast suffix, the old FeatureExtractor names.
    (vision_dir / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "CLIPFeatureExtractor", "processor_class": "CLIPProcessor"}))
    (text_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2TokenizerFast"}))
    check_model_folder(vision_dir)
    check_model_folder(text_dir)

    cases = {
        "nested auto_map": ("processor_config.json", {"image_processor": {"auto_map": {"AutoImageProcessor": "x.Y"}}},
                            "has an 'auto_map' entry"),
        "custom architecture": ("config.json", {"architectures": ["DebertaV2Model", "EvilModel"]},
                                "architectures 'EvilModel' is not a class of transformers"),
        "deeply nested": ("config.json", None, "is not readable JSON (nested too deeply)"),
    }
    for name, (file_name, content, message) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        text = "[" * 100_000 + "]" * 100_000 if content is None else json.dumps(content)
        (folder / file_name).write_text(text)
        with pytest.raises(UntrustedFolderError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_model_folder(folder)
    compiled = tmp_path / "compiled" / "sub"
    compiled.mkdir(parents=True)
    (compiled / "evil.pyc").write_bytes(b"\x00")
    with pytest.raises(UntrustedFolderError, match=r"evil\.pyc is Python code"):
        check_model_folder(tmp_path / "compiled")


# ------------------------------------------------------------------ weights checked at load

def test_all_nan_weights_are_refused_naming_a_tensor(tmp_path, post_image, scripts):
    folder = demo_copy(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({key: torch.full_like(t, float("nan")) if t.is_floating_point() else t for key, t in tensors.items()},
              str(folder / "model.safetensors"))
    line = one_error_line(run_script(scripts, PREDICT, "--checkpoint", folder, "--image", post_image, "--text", "hi"))
    assert "NaN/inf values" in line and any(f"tensor {key} holds" in line for key in tensors), line


def test_one_infinite_value_and_converted_dtypes_are_refused(tmp_path):
    folder = demo_copy(tmp_path)
    original = load_file(str(folder / "model.safetensors"))
    floating = sorted(key for key, t in original.items() if t.is_floating_point())
    victim = floating[len(floating) // 2]
    damaged = dict(original)
    damaged[victim] = original[victim].clone().flatten().index_fill_(0, torch.tensor([3]), float("inf")).view_as(
        original[victim])
    save_file(damaged, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor {victim} holds 1 NaN/inf values"):
        load_checkpoint(folder)

    for dtype, name in ((torch.int8, "int8"), (torch.float16, "float16")):
        save_file({key: t.to(dtype) if t.is_floating_point() else t for key, t in original.items()},
                  str(folder / "model.safetensors"))
        with pytest.raises(CheckpointError, match=rf"is stored as {name} but the model holds float32"):
            load_checkpoint(folder)
    save_file(original, str(folder / "model.safetensors"))
    load_checkpoint(folder)  # the untouched weights still load


# ------------------------------------------------------------------ bounded memory per image

def thin_png(width: int, height: int) -> bytes:
    """A real (decodable) grey RGB PNG of width x height: a few KB however long it is."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


ADDRESS_SPACE_LIMIT = 6 * 1024 ** 3
PREDICT_ONCE = """
import json, sys, time
from clara.memory import peak_rss_mb
from clara.data.images import ImageError
from clara.inference import Predictor
predictor = Predictor.from_checkpoint(sys.argv[1], device="cpu")
started = time.perf_counter()
try:
    predictor.predict([sys.argv[2]], ["a post"])
    outcome = "predicted"
except ImageError as exc:
    outcome = "refused: " + str(exc)
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - started,
                  "peak_rss": peak_rss_mb() * 2**20}))
"""


def run_limited(scripts: WarmPython, script: Path | None, *args: str | Path,
                code: str | None = None) -> subprocess.CompletedProcess:
    """The script (or `python -c code`) under a 6 GB address-space limit (what the issue's attack ran under)."""
    return scripts.run(script, *args, code=code, address_space=ADDRESS_SPACE_LIMIT, timeout=300)


@pytest.mark.parametrize("width, height", [(1, 400_000), (100_000, 1), (12_000, 1)])
def test_thin_images_are_refused_fast_in_bounded_memory(tmp_path, width, height, scripts):
    image = tmp_path / "thin.png"
    image.write_bytes(thin_png(width, height))
    assert image.stat().st_size < 2_000
    done = run_limited(scripts, None, DEMO, image, code=PREDICT_ONCE)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outcome"].startswith("refused: ") or report["outcome"] == "predicted", report
    assert report["seconds"] < 5, report
    assert report["peak_rss"] < 1.5 * 1024 ** 3, f"peak RSS {report['peak_rss'] / 2**20:.0f} MiB"
    # predict.py under the same limit: one line, exit 2
    done = run_limited(scripts, PREDICT, "--checkpoint", DEMO, "--image", image, "--text", "a post")
    lines = messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and f"{width}x{height}" in lines[0], done.stderr[-3000:]


# ------------------------------------------------------------------ training lock, killed saves, file modes

def test_a_second_concurrent_training_into_the_same_output_dir_refuses(tmp_path, scripts):
    from clara.data.synthetic import write_synthetic

    data = Path(write_synthetic("mvsa_single", tmp_path / "data", n=48, seed=1)["out_dir"])
    out = tmp_path / "out"
    args = ["--dataset", "mvsa_single", "--data-dir", data, "--encoders", "tiny", "--batch-size", "4",
            "--set", "model.hidden_dim=32", "--set", "model.fusion_heads=4", "--output-dir", out, "--no-progress"]
    first = subprocess.Popen([sys.executable, str(TRAIN), *map(str, args), "--epochs", "200", "--patience", "200"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while True:  # until the first run holds the lock
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first training never took the lock"
            if (out / TRAINING_LOCK_FILE).exists():
                try:
                    FileLock(out / TRAINING_LOCK_FILE, timeout=0).acquire()
                except Timeout:
                    break
            time.sleep(0.5)
        second = run_script(scripts, TRAIN, *args, "--epochs", "1", stdin="")
        lines = messages(second.stderr)
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
        assert lines[0] == (f"train.py: error: another training run is writing to {out} (it holds "
                            f"{out / TRAINING_LOCK_FILE}); wait for it to finish or choose another --output-dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()
    lock = FileLock(out / TRAINING_LOCK_FILE, timeout=0)
    lock.acquire()  # the killed run's lock went with it
    lock.release()


def test_the_next_save_removes_what_a_killed_save_left_but_not_a_live_save(tmp_path):
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    target = save_checkpoint(tmp_path / "clara_last", model, tokenizer, cfg)
    killed = tmp_path / ".clara_best.tmp-0123456789ab"  # a save killed mid-write: its folder and unlocked lock file
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\x00" * 1_000_000)
    Path(f"{killed}.lock").write_text("")
    live = tmp_path / ".clara_other.tmp-ba9876543210"  # another process writing right now
    live_lock = lock_temporary_folder(live)
    live.mkdir()
    try:
        save_checkpoint(target, model, tokenizer, cfg)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["clara_last", live.name, f"{live.name}.lock"])
    finally:
        release_temporary_folder(live_lock)
    load_checkpoint(target)


def test_weight_files_get_the_mode_of_other_files(tmp_path):
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    previous = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "ck", model, tokenizer, cfg)
    finally:
        os.umask(previous)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (folder / "config.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ notebook import

@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on protocol 5
@pytest.mark.parametrize("protocol", [2, 5])
def test_the_importer_never_repeats_torchs_advice_to_unpickle(tmp_path, protocol):
    from clara.checkpoint.notebook_files import NotebookImportError, read_notebook_file

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model_state_dict": {"a": {1, 2}}, "run": os.system}, protocol=protocol))
    with pytest.raises(NotebookImportError) as refused:
        read_notebook_file(path)
    message = str(refused.value)
    assert "refused" in message
    assert "weights_only" not in message and "Re-running" not in message and "will likely succeed" not in message


# ------------------------------------------------------------------ output errors in scripts

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_under_a_scripts_output_is_one_line_not_a_traceback(tmp_path, scripts):
    from clara.data.synthetic import write_synthetic

    data = Path(write_synthetic("mvsa_single", tmp_path / "data", n=40, seed=0, quirks=False)["out_dir"])
    done = scripts.run(REPO / "scripts" / "data_summary.py", "--dataset", "mvsa_single", "--data-dir", data,
                       stdout_path="/dev/full", timeout=120)  # standard output on a full disk
    assert done.returncode == 2
    assert messages(done.stderr) == ["data_summary.py: error: cannot write the output: No space left on device"]
    done = run_script(scripts, REPO / "scripts" / "evaluate.py", "--checkpoint", DEMO, "--dataset", "mvsa_single",
                      "--data-dir", data, "--no-ablations", "--results-dir", tmp_path / "results", "--out", "/dev/full")
    assert done.returncode == 2
    assert messages(done.stderr) == ["evaluate.py: error: cannot write the output: No space left on device"]
    post = tmp_path / "post.png"
    Image.new("RGB", (32, 32)).save(post)
    done = scripts.run(PREDICT, "--checkpoint", DEMO, "--image", post, "--text", "hi", stdout_path="/dev/full",
                       timeout=180)  # predict.py's one-post answer on standard output
    assert done.returncode == 2
    assert messages(done.stderr) == ["predict.py: error: cannot write the output: No space left on device"]
