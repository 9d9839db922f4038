"""Scoring jobs at scale, for real (clara.scoring_jobs, scripts/predict.py --input): a generated
table scored in bounded memory, a job killed with SIGKILL completing only its missing shards with
the same output, two processes (torchrun, accelerate launch) and Ray Data giving the same
predictions, and a Ray job with missing shards completing only those.

The table has SCALE_ROWS rows (800 by default so the module stays around two minutes on 2 busy
cores; CLARA_TEST_SCALE_ROWS=20000 runs the issue's size: docs/BENCHMARKS.md has that run's figures).
Its images are few distinct photo-sized JPEGs, each decoded again for every row, so a job that kept
its decoded images would grow by ~0.7 MB a row.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clara.scoring_jobs import MANIFEST_FILE, JobOptions, PredictorSpec, open_source, process_group, run_job
from clara.scoring_jobs.job import ACCELERATE_CPU_CONFIG, launched_processes, local_processes
from _app_utils import DEMO_CHECKPOINT, require_demo
from _eval_utils import jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "predict.py"
SCALE_ROWS = int(os.environ.get("CLARA_TEST_SCALE_ROWS", "800"))
BATCH = 16
SHARD = max(BATCH, SCALE_ROWS // 8 // BATCH * BATCH)  # 8 shards, each a whole number of batches
MISSING_EVERY, BROKEN_EVERY = 101, 157  # rows naming a missing image / a file that is not an image
# Peak memory: the process may grow this much past its size once the model is loaded (prefetched
# batches, one shard's results, Parquet buffers).
# Measured 160-168 MB at 800, 2,000 and 20,000 rows before the merged / bf16 Predictor path landed, 349 MB
# after it (one full run at 800 rows): the ceiling bounds growth with the rows, not the model copies.
MAX_GROWTH_MB = 450
MAX_PROCESS_MB, MAX_WORKER_MB = 2500, 1500  # absolute ceilings (measured ~920 and ~560 MB here)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """posts/posts.parquet: SCALE_ROWS rows over 4 JPEGs in posts/img (paths relative to the table)."""
    require_demo()
    folder = tmp_path_factory.mktemp("posts")
    (folder / "img").mkdir()
    rng = np.random.default_rng(0)
    for k, size in enumerate([(512, 448), (640, 480), (448, 560), (600, 600)]):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        (folder / "img" / f"{k}.jpg").write_bytes(jpeg_bytes(Image.fromarray(pixels)))
    (folder / "img" / "broken.jpg").write_bytes(b"not an image at all")
    words = ["sunny", "awful", "lovely", "rainy", "street", "coffee", "friends", "traffic", "#mood", "@you"]
    images = ["img/missing.jpg" if i % MISSING_EVERY == 7 else "img/broken.jpg" if i % BROKEN_EVERY == 11
              else f"img/{i % 4}.jpg" for i in range(SCALE_ROWS)]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) for i in range(SCALE_ROWS)]
    pq.write_table(pa.table({"id": [f"post-{i}" for i in range(SCALE_ROWS)], "image_path": images, "text": texts}),
                   folder / "posts.parquet", row_group_size=500)
    return folder / "posts.parquet"


def job_command(table: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    return [*(launcher or [sys.executable]), str(SCRIPT), "--checkpoint", str(DEMO_CHECKPOINT), "--input", str(table),
            "--out", str(out), "--shard-size", str(SHARD), "--batch-size", str(BATCH), "--precision", "fp32",
            "--device", "cpu", "--no-progress", "--json", *extra]


def run_command(command: list[str], timeout: int = 600) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env(), cwd=REPO, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def scores(out: Path) -> pd.DataFrame:
    """All shards of a job folder as one table, in input order (read as the folder, as a user would)."""
    return pd.read_parquet(out).sort_values("row").reset_index(drop=True)


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))


def head_of(table: Path, rows: int) -> Path:
    """The table's first `rows` rows, beside it (the same relative image paths): for the tests whose point
    is which process writes which shard, not the memory of a long job."""
    head = table.with_name(f"head-{rows}.parquet")
    if not head.exists():
        pq.write_table(pq.read_table(table).slice(0, rows), head, row_group_size=2 * BATCH)
    return head


@pytest.fixture(scope="module")
def reference(table, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted single-process run (a subprocess, so that its memory is its own)."""
    out = tmp_path_factory.mktemp("scores") / "reference"
    return out, run_command(job_command(table, out))


def test_a_generated_table_is_scored_in_bounded_memory(table, reference):
    out, summary = reference
    missing = sum(1 for i in range(SCALE_ROWS) if i % MISSING_EVERY == 7)
    broken = sum(1 for i in range(SCALE_ROWS) if i % MISSING_EVERY != 7 and i % BROKEN_EVERY == 11)
    assert summary["rows"] == summary["rows_scored"] == SCALE_ROWS
    assert summary["shards"] == summary["shards_done"] == summary["shards_written"] == -(-SCALE_ROWS // SHARD)
    assert summary["errors"] == {"image not found": missing, "not an image": broken}
    assert summary["predicted"] == SCALE_ROWS - missing - broken
    frame = scores(out)
    assert list(frame["row"]) == list(range(SCALE_ROWS)) and frame["id"].iloc[-1] == f"post-{SCALE_ROWS - 1}"
    assert frame["predicted"].isna().sum() == missing + broken == frame["error"].notna().sum()
    probs = frame[["prob_positive", "prob_neutral", "prob_negative"]].dropna()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert {"text_only_prob_negative", "image_only_prob_positive", "uncertainty", "error_kind"} <= set(frame.columns)
    [run] = manifest(out)["runs"]
    peak, after_load = run["peak_rss_mb"]["process"], run["rss_after_load_mb"]
    print(f"\n{SCALE_ROWS} rows: {summary['rows_scored'] / run['seconds']:.0f} rows/s overall, peak RSS "
          f"{peak:.0f} MB (after loading {after_load:.0f} MB), largest worker {run['peak_rss_mb']['largest_worker']:.0f} MB")
    assert peak - after_load < MAX_GROWTH_MB, run
    assert peak < MAX_PROCESS_MB and run["peak_rss_mb"]["largest_worker"] < MAX_WORKER_MB, run


def test_the_same_command_again_does_nothing_and_other_arguments_are_refused(table, reference, capsys):
    from importlib import util

    out, _ = reference
    spec = util.spec_from_file_location("predict_script", SCRIPT)
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert script.main(job_command(table, out)[2:]) == 0
    assert "nothing to score" in capsys.readouterr().err
    assert script.main([*job_command(table, out)[2:], "--batch-size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"predict.py: error: --out {out} holds a job with other arguments (batch_size: 16 there, 8 now); "
                   "give another folder, or delete it to start again")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == before


def test_a_killed_job_completes_only_its_missing_shards(table, reference, tmp_path):
    import psutil

    out = tmp_path / "killed"
    process = subprocess.Popen(job_command(table, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env(), cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    victims = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
    for victim in victims:  # the job and its DataLoader workers, at once
        victim.kill()
    log, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, log[-3000:]
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*.parquet")}
    shards = -(-SCALE_ROWS // SHARD)
    assert 1 <= len(kept) < shards, "the kill must land between the first and the last shard"

    summary = run_command(job_command(table, out))
    assert summary["shards_written"] == shards - len(kept) and summary["complete"] is True
    assert {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in
            ((name, out / name) for name in kept)} == kept  # the finished shards were not written again
    assert all(s["writes"] == 1 and s["status"] == "done" for s in manifest(out)["shards"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    pd.testing.assert_frame_equal(scores(out), scores(reference[0]))  # identical to the uninterrupted run


def test_two_processes_give_the_same_predictions_each_shard_written_once(table, reference, tmp_path):
    """torchrun (gloo on CPU); accelerate launch: the next tests."""
    out = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    done = subprocess.run(job_command(table, out, launcher=launcher), capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = manifest(out)
    assert sorted((r["rank"], r["world"]) for r in record["runs"]) == [(0, 2), (1, 2)]
    assert [s["writes"] for s in record["shards"]] == [1] * len(record["shards"])
    assert [s["written_by"] for s in record["shards"]] == [k % 2 for k in range(len(record["shards"]))]
    pd.testing.assert_frame_equal(scores(out), scores(reference[0]), rtol=0, atol=1e-6)


def test_a_folder_of_images_through_the_same_path(tmp_path):
    """In-process, no workers: ids are the images' paths, texts the `.txt` beside them."""
    require_demo()
    from clara.inference import Predictor

    rng = np.random.default_rng(1)
    names = ["b/2.jpg", "a.jpg", "c.jpg"]
    for name in names:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(jpeg_bytes(Image.fromarray(rng.integers(0, 256, (80, 90, 3), np.uint8))))
    (tmp_path / "in" / "a.txt").write_text("what a lovely day", encoding="utf-8")
    summary = run_job(open_source(tmp_path / "in"), PredictorSpec(str(DEMO_CHECKPOINT), device="cpu", precision="fp32"),
                      tmp_path / "out", JobOptions(num_workers=0, keep_inputs=True, progress=False))
    assert summary.complete and summary.predicted == 3
    frame = scores(tmp_path / "out")
    assert list(frame["id"]) == ["a", "b/2", "c"] and list(frame["text"]) == ["what a lovely day", "", ""]
    expected = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", precision="fp32").predict(
        [tmp_path / "in" / "a.jpg"], ["what a lovely day"])[0]
    assert frame["predicted"][0] == expected.label
    assert frame["prob_neutral"][0] == pytest.approx(expected.probs["neutral"], abs=1e-6)


def test_accelerate_launch_with_the_cpu_config_starts_two_processes_each_shard_written_once(table, reference,
                                                                                              tmp_path):
    """`accelerate launch --num_processes 2` alone starts one process on a machine without GPUs (its CPU
    launcher: one process per machine); with configs/accelerate/cpu.yaml it takes its torchrun launcher."""
    pytest.importorskip("accelerate")
    rows, shard = 8 * BATCH, 2 * BATCH  # 4 shards, 2 a process
    out = tmp_path / "accelerate"
    launcher = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",  # `accelerate launch`
                "--config_file", str(REPO / ACCELERATE_CPU_CONFIG), "--num_processes", "2"]
    summary = run_command(job_command(head_of(table, rows), out, "--shard-size", str(shard), launcher=launcher))
    record = manifest(out)
    assert summary["complete"] and summary["rows"] == rows
    assert sorted((r["rank"], r["world"]) for r in record["runs"]) == [(0, 2), (1, 2)]
    assert [s["writes"] for s in record["shards"]] == [1] * 4
    assert [s["written_by"] for s in record["shards"]] == [0, 1, 0, 1]
    pd.testing.assert_frame_equal(scores(out), scores(reference[0]).iloc[:rows], rtol=0, atol=1e-6)


def test_accelerate_starting_one_process_for_several_is_said_and_it_scores_every_shard(monkeypatch, caplog):
    """What `accelerate launch --num_processes 2` without the config gives the process it starts (checked
    with accelerate 1.15): MASTER_ADDR and ACCELERATE_* set, no WORLD_SIZE. And MPI's sizes count."""
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                 "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with caplog.at_level("WARNING", logger="clara.scoring_jobs.job"):
        assert process_group("cpu") == (0, 1, None, "cpu")  # this process scores every shard
    [notice] = caplog.messages
    assert notice.startswith("accelerate launch started one process") and ACCELERATE_CPU_CONFIG in notice
    monkeypatch.setenv("PMI_SIZE", "4")  # mpirun (accelerate's multi-CPU launcher), 2 of them on this machine
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert (launched_processes(), local_processes()) == (4, 2)


RAY_ROWS, RAY_SHARD = 6 * BATCH, 2 * BATCH  # 3 shards


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster on 2 CPUs for the module's Ray tests (the last ones: its workers idle after)."""
    ray = pytest.importorskip("ray", reason='Ray Data is an optional extra: pip install "ray[data]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def ray_job(table: Path, out: Path):
    from clara.scoring_jobs.ray_engine import RayOptions, run_ray_job

    return run_ray_job(open_source(head_of(table, RAY_ROWS)),
                       PredictorSpec(str(DEMO_CHECKPOINT), device="cpu", precision="fp32"), out,
                       JobOptions(batch_size=BATCH, shard_size=RAY_SHARD, progress=False),
                       RayOptions(concurrency=1, num_cpus=1))


@pytest.fixture(scope="module")
def ray_scores(table, ray_cluster, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ray") / "scores"
    return out, ray_job(table, out)


def test_ray_data_gives_the_same_predictions_as_one_process(reference, ray_scores):
    out, summary = ray_scores
    assert summary.complete and summary.rows == RAY_ROWS and summary.shards_written == 3
    assert manifest(out)["engine"] == "ray" and manifest(out)["status"] == "done"
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"part-0000{k}.parquet" for k in range(3)]
    expected = scores(reference[0]).iloc[:RAY_ROWS]
    pd.testing.assert_frame_equal(scores(out), expected, rtol=0, atol=1e-5)


def test_a_ray_job_with_missing_shards_completes_only_those(table, reference, ray_scores):
    """Two shard files deleted (a job killed before writing them; one leaving a half-written temporary):
    the same call writes those two, the other's file is untouched, the output equals the reference."""
    out, _ = ray_scores
    kept = out / "part-00001.parquet"
    before = (kept.stat().st_mtime_ns, kept.read_bytes())
    for name in ("part-00000.parquet", "part-00002.parquet"):
        (out / name).unlink()
    (out / ".part-00002.parquet.999.tmp").write_bytes(b"half a shard")
    summary = ray_job(table, out)
    assert summary.complete and summary.shards_written == 2 and summary.rows_scored == 2 * RAY_SHARD
    assert (kept.stat().st_mtime_ns, kept.read_bytes()) == before
    assert [s["writes"] for s in manifest(out)["shards"]] == [2, 1, 2] and manifest(out)["status"] == "done"
    assert not list(out.glob("*.tmp"))
    pd.testing.assert_frame_equal(scores(out), scores(reference[0]).iloc[:RAY_ROWS], rtol=0, atol=1e-5)
    again = ray_job(table, out)  # nothing left: no Ray work at all
    assert again.complete and again.shards_written == 0 and again.rows_scored == 0
