"""A scoring job into a folder of Parquet shards, resumable and shared between processes.

The input's rows are cut into shards of `shard_size` rows; shard k is written, atomically, as
`part-0000k.parquet`; `_manifest.json` (its "_" keeps it out of `pd.read_parquet(folder)`) holds
the job's arguments (input and checkpoint fingerprints included), every shard's row range and
status, and each process's run. A rerun with the same arguments skips the shards whose file
exists; other arguments are refused. Under `torchrun` / `accelerate launch` (on CPUs with
configs/accelerate/cpu.yaml: its CPU launcher starts one process) process r takes the shards k
with k mod world == r.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from clara.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from clara.inputs import BatchImages
from clara.jsonio import to_jsonable, write_json
from clara.memory import largest_child_peak_rss_mb
from clara.memory import peak_rss_mb as peak_rss_mb_of_process
from clara.precision import default_device, precision_setting, resolve_precision

from .rows import decoded_batches, plan_batches, result_schema, result_table, score_batch
from .sources import Source

MANIFEST_FILE = "_manifest.json"  # "_": pyarrow, pandas and Spark skip it when reading the folder as one table
MANIFEST_FORMAT = "clara-scores"
MANIFEST_VERSION = 1
LOCK_FILE = ".manifest.lock"
SHARD_PATTERN = "part-{index:05d}.parquet"
DEFAULT_SHARD_SIZE = 10_000


class JobError(ValueError):
    """A job that cannot start (e.g. its output folder holds another job); one line for the person."""


@dataclass
class JobOptions:
    """How a job runs. `shard_size`, `batch_size`, `allow_empty_text` and `keep_inputs` change what is
    written (they are part of the job's arguments); the others only how fast."""
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 16
    allow_empty_text: bool = True
    keep_inputs: bool = False  # also write each post's text and image path
    num_workers: int | None = None  # DataLoader workers decoding images (None: default_workers())
    threads: int | None = None  # torch threads of the process running the model (None: unchanged)
    progress: bool | None = None  # the tqdm bar: None shows it on a terminal only

    def output_arguments(self) -> dict[str, Any]:
        return {"shard_size": self.shard_size, "batch_size": self.batch_size,
                "allow_empty_text": self.allow_empty_text, "keep_inputs": self.keep_inputs}


# How many processes a launcher started (in all / on this machine): torchrun (and accelerate launch's torchrun
# path) sets WORLD_SIZE / LOCAL_WORLD_SIZE; MPI (accelerate's multi-CPU launcher, --mpirun_hostfile) its own
# names, read as accelerate reads them.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                        "MV2_COMM_WORLD_LOCAL_SIZE")
ACCELERATE_CPU_CONFIG = "configs/accelerate/cpu.yaml"
log = logging.getLogger(__name__)


def _first_int(names: Sequence[str], default: int) -> int:
    return next((int(os.environ[name]) for name in names if os.environ.get(name, "").strip()), default)


def launched_processes() -> int:
    """The number of processes of this job's process group (1 when no launcher started several)."""
    return _first_int(WORLD_SIZE_VARIABLES, 1)


def local_processes() -> int:
    return _first_int(LOCAL_SIZE_VARIABLES, launched_processes())


def one_process_notice() -> str | None:
    """What to tell the person when `accelerate launch --num_processes N` (N > 1) started this process
    alone: without --multi_gpu, several GPUs or a config saying otherwise (`--cpu` included) it starts
    one process per machine, setting MASTER_ADDR for the others it expects; None otherwise."""
    if launched_processes() > 1 or "ACCELERATE_MIXED_PRECISION" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    return ("accelerate launch started one process, not --num_processes (without GPUs or a config it starts one "
            "per machine): this process scores every shard. For N processes on this machine's CPUs: accelerate "
            f"launch --config_file {ACCELERATE_CPU_CONFIG} --num_processes N ... (or torchrun --nproc_per_node N)")


def default_workers() -> int:
    """DataLoader workers per process: the cores a process has, less the one running the model (1 to 4)."""
    cores = max(1, (os.cpu_count() or 2) // local_processes())
    return min(4, max(1, cores - 1))


def default_threads(num_workers: int) -> int:
    """torch threads per process: the cores left to it after its decoding workers (at least 1; on a
    busy 2-core machine a second thread made the demo model 10x slower, docs/BENCHMARKS.md)."""
    return max(1, (os.cpu_count() or 2) // local_processes() - num_workers)


def process_group(device: str | None = None) -> tuple[int, int, Callable[[], None] | None, str | None]:
    """(rank, world size, barrier, device) of this process: under torchrun / accelerate launch / MPI
    (launched_processes() > 1) from Accelerate's PartialState, whose device (e.g. cuda:<local rank>)
    is used when `device` is None; else (0, 1, None, device), logging `one_process_notice()` if any."""
    if launched_processes() <= 1:
        notice = one_process_notice()
        if notice:
            log.warning(notice)
        return 0, 1, None, device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    return state.process_index, state.num_processes, state.wait_for_everyone, device or str(state.device)


@dataclass(frozen=True)
class PredictorSpec:
    """The predictor a job loads in each process (or Ray actor): checkpoint, device (None: cuda if
    available), `--set` overrides, int8, precision setting (None: CLARA_PRECISION, else auto)."""
    checkpoint: str
    device: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    int8: bool = False
    precision: str | None = None

    def resolved_device(self) -> str:
        return "cpu" if self.int8 and self.device is None else str(self.device or default_device())

    def decide_precision(self) -> str:
        """The precision this machine would run (`fp32` for int8); a job decides it once."""
        return "fp32" if self.int8 else resolve_precision(self.precision, self.resolved_device())[0]

    def load(self, precision: str | None = None) -> Any:
        from clara.inference import Predictor

        return Predictor.from_checkpoint(self.checkpoint, device=self.resolved_device(),
                                         overrides=dict(self.overrides), quantize=self.int8,
                                         precision=None if self.int8 else precision or self.precision)

    def arguments(self) -> dict[str, Any]:
        """What of the predictor decides the job's output (part of its arguments)."""
        return {"checkpoint": checkpoint_fingerprint(self.checkpoint), "overrides": dict(self.overrides),
                "int8": self.int8, "device": self.resolved_device().split(":")[0],
                "precision_setting": precision_setting(self.precision)}


def checkpoint_fingerprint(folder: str | Path) -> dict[str, Any]:
    """What identifies a checkpoint without reading its weights: its config's hash and labels, and
    the weights file's size and mtime."""
    folder = Path(folder).resolve()
    try:
        config = (folder / CONFIG_FILE).read_bytes()
        weights = (folder / WEIGHTS_FILE).stat()
        labels = json.loads(config).get("labels")
    except (OSError, ValueError, AttributeError) as exc:
        raise JobError(f"bad checkpoint: {folder}: {getattr(exc, 'strerror', None) or exc}"
                       f"{f' ({exc.filename})' if getattr(exc, 'filename', None) else ''}") from None
    return {"path": str(folder), "config_sha256": hashlib.sha256(config).hexdigest(),
            "labels": labels, "weights_size": weights.st_size,
            "weights_mtime_ns": weights.st_mtime_ns}


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {json.dumps(a)} there, {json.dumps(b)} now"
    return None


class JobFolder:
    """The output folder: its manifest (read and written under a file lock, so processes sharing the
    job update it in turn) and its shard files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST_FILE

    @contextlib.contextmanager
    def manifest(self) -> Iterator[dict[str, Any]]:
        """The manifest for the `with` block (an empty dict if there is none); written back atomically
        at the end if it was changed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(self.folder / LOCK_FILE):
            data = json.loads(self.manifest_path.read_text(encoding="utf-8")) if self.manifest_path.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                data["updated"] = _now()
                write_json(self.manifest_path, data)

    def start(self, arguments: dict[str, Any], num_rows: int, shards: Sequence[tuple[int, int]], engine: str,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the manifest, or check that the one there has the same arguments; JobError otherwise.
        Returns the manifest as it stands."""
        with self.manifest() as manifest:
            if not manifest and any(p.name != LOCK_FILE for p in self.folder.iterdir()):
                raise JobError(f"--out {self.folder} is not empty and holds no {MANIFEST_FILE}: give a new or "
                               "empty folder (a scoring job writes its shards and manifest there)")
            if manifest:
                if manifest.get("format") != MANIFEST_FORMAT or manifest.get("engine") != engine:
                    raise JobError(f"--out {self.folder} holds a {manifest.get('engine') or 'different'} job; "
                                   f"give another folder for this {engine} job")
                difference = _first_difference(manifest.get("arguments", {}), arguments)
                if difference:
                    raise JobError(f"--out {self.folder} holds a job with other arguments ({difference}); "
                                   "give another folder, or delete it to start again")
            else:
                manifest.update({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "engine": engine,
                                 "created": _now(), "arguments": arguments, **(extra or {}),
                                 "rows": num_rows, "runs": [],
                                 "shards": [{"index": k, "file": SHARD_PATTERN.format(index=k), "rows": [a, b],
                                             "status": "pending", "writes": 0}
                                            for k, (a, b) in enumerate(shards)]})
            return json.loads(json.dumps(manifest))

    def is_written(self, shard: Mapping[str, Any]) -> bool:
        return (self.folder / shard["file"]).is_file()

    def write_shard(self, shard: Mapping[str, Any], table: Any, record: dict[str, Any]) -> None:
        """Write one shard atomically (a temporary file beside it, then a rename) and record it."""
        target = self.folder / shard["file"]
        for stale in glob.glob(str(self.folder / f".{shard['file']}.*.tmp")):  # left by a killed run
            with contextlib.suppress(OSError):
                os.unlink(stale)
        temporary = self.folder / f".{shard['file']}.{os.getpid()}.tmp"
        pq.write_table(table, temporary)
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, target)
        with self.manifest() as manifest:
            entry = manifest["shards"][shard["index"]]
            entry.update({**record, "status": "done", "writes": entry.get("writes", 0) + 1, "finished": _now()})


@dataclass
class JobSummary:
    """What a job did, for the person who ran it (and the tests)."""
    folder: Path
    rows: int
    shards: int
    shards_done: int  # all done shards, whoever wrote them
    shards_written: int  # by this process in this run
    rows_scored: int  # by this process in this run
    seconds: float  # this run, start to end
    predicted: int  # over all done shards
    errors: dict[str, int] = field(default_factory=dict)  # by kind, over all done shards
    skipped_rows: int = 0  # malformed CSV rows the reader dropped
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    scoring_seconds: float = 0.0  # from the first batch to the last shard written (no start-up, no model load)

    @property
    def complete(self) -> bool:
        return self.shards_done == self.shards

    @property
    def rows_per_second(self) -> float:
        return self.rows_scored / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**to_jsonable(self), "complete": self.complete, "rows_per_second": round(self.rows_per_second, 2)}

    def lines(self) -> list[str]:
        errors = sum(self.errors.values())
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(self.errors.items(), key=lambda kv: -kv[1]))
        state = "complete" if self.complete else f"{self.shards - self.shards_done} shard(s) still to do"
        lines = [f"{self.folder}: {self.shards_done} of {self.shards} shard(s) done ({state}); "
                 f"{self.predicted} of {self.rows} rows predicted, {errors} with an error" +
                 (f" ({reasons})" if reasons else "")]
        if self.skipped_rows:
            lines.append(f"{self.skipped_rows} malformed CSV row(s) (a wrong number of fields) were skipped")
        if self.rows_scored:
            lines.append(f"this run: {self.shards_written} shard(s), {self.rows_scored} rows in {self.seconds:.1f} s "
                         f"({self.rows_per_second:.1f} rows/s while scoring)")
        else:
            lines.append("this run: nothing to score (every shard of this process was written before)")
        return lines


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (a decoding worker), MB."""
    return {"process": round(peak_rss_mb_of_process(), 1), "largest_worker": round(largest_child_peak_rss_mb(), 1)}


def summarise(folder: JobFolder, manifest: Mapping[str, Any], written: int, scored: int, seconds: float,
              scoring_seconds: float = 0.0) -> JobSummary:
    done = [s for s in manifest["shards"] if s["status"] == "done"]
    errors: Counter[str] = Counter()
    for shard in done:
        errors.update(shard.get("errors", {}))
    return JobSummary(folder=folder.folder, rows=manifest["rows"], shards=len(manifest["shards"]),
                      shards_done=len(done), shards_written=written, rows_scored=scored, seconds=seconds,
                      predicted=sum(s.get("predicted", 0) for s in done), errors=dict(errors),
                      skipped_rows=manifest.get("input", {}).get("skipped_rows", 0), peak_rss_mb=peak_rss_mb(),
                      scoring_seconds=scoring_seconds)


def job_arguments(source: Source, predictor: PredictorSpec, options: JobOptions) -> dict[str, Any]:
    """Everything that decides a job's output: the input (fingerprint), the predictor, the options."""
    return {"input": {"format": source.kind, "rows": source.num_rows, **source.fingerprint()},
            **predictor.arguments(), **options.output_arguments()}


def input_record(source: Source) -> dict[str, Any]:
    """What the manifest records about the input besides its fingerprint."""
    return {"input": {"format": source.kind, "skipped_rows": source.skipped.count,
                      "skipped_examples": source.skipped.examples}}


def run_job(source: Source, predictor: PredictorSpec, out: str | Path, options: JobOptions, rank: int = 0,
            world: int = 1, barrier: Callable[[], None] | None = None) -> JobSummary:
    """Score `source` into the folder `out` (see the module docstring); the predictor is loaded only if
    this process has shards to write, at the precision the job's first process decided."""
    started = time.perf_counter()
    folder = JobFolder(out)
    arguments = job_arguments(source, predictor, options)
    manifest = folder.start(arguments, source.num_rows, shard_ranges(source.num_rows, options.shard_size),
                            engine="local", extra=input_record(source))
    mine = [s for s in manifest["shards"] if s["index"] % world == rank and not folder.is_written(s)]
    written = scored = 0
    loaded_rss, scoring = None, 0.0
    if mine:
        with folder.manifest() as manifest:  # decided once (the CPU probe times a matmul): all shards alike
            precision = manifest.setdefault("precision", predictor.decide_precision())
        model = predictor.load(precision)
        loaded_rss = round(psutil.Process().memory_info().rss / 2**20, 1)  # the baseline the peak is read against
        written, scored, scoring = _score_shards(source, model, folder, mine, options, rank)
    if barrier is not None:
        barrier()
    with folder.manifest() as final:
        if mine:
            final["runs"].append({"finished": _now(), "rank": rank, "world": world, "host": socket.gethostname(),
                                  "pid": os.getpid(), "shards_written": written, "rows": scored,
                                  "seconds": round(time.perf_counter() - started, 2),
                                  "scoring_seconds": round(scoring, 2), "rss_after_load_mb": loaded_rss,
                                  "peak_rss_mb": peak_rss_mb()})
        for shard in final["shards"]:  # a shard whose file exists is done (written, then killed before this)
            if shard["status"] != "done" and folder.is_written(shard):
                shard["status"] = "done"
        snapshot = json.loads(json.dumps(final))
    return summarise(folder, snapshot, written, scored, time.perf_counter() - started, scoring)


def _score_shards(source: Source, predictor: Any, folder: JobFolder, shards: Sequence[Mapping[str, Any]],
                  options: JobOptions, rank: int) -> tuple[int, int, float]:
    """Score and write `shards`; (shards written, rows scored, seconds from the first batch on)."""
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    with folder.manifest() as manifest:
        manifest.setdefault("inference", predictor.path.to_dict())  # what the first process ran, for the record
    schema = result_schema(predictor.labels, options.keep_inputs)
    workers = default_workers() if options.num_workers is None else options.num_workers
    items = plan_batches([(s["index"], *s["rows"]) for s in shards], options.batch_size)
    images = BatchImages(folder=source.images_folder, confine=False) if source.images_folder else BatchImages()
    by_index = {s["index"]: s for s in shards}
    pending: dict[int, list[dict[str, Any]]] = {}
    written = scored = 0
    clock: dict[int, float | None] = {s["index"]: None for s in shards}
    first = None
    total = sum(b - a for a, b in (s["rows"] for s in shards))
    with tqdm(total=total, unit="rows", desc=f"scoring (process {rank})" if rank else "scoring",
              disable=None if options.progress is None else not options.progress, dynamic_ncols=True,
              smoothing=0.05) as bar:
        for batch in decoded_batches(source, images, items, options.allow_empty_text, workers):
            index = batch.item.shard
            clock[index] = clock[index] or time.perf_counter()
            first = first or clock[index]
            rows = pending.setdefault(index, [])
            rows.extend(score_batch(predictor, batch))
            bar.update(len(batch.rows))
            shard = by_index[index]
            if len(rows) == shard["rows"][1] - shard["rows"][0]:
                errors = Counter(r["error_kind"] or "other" for r in rows if r["error"])
                folder.write_shard(shard, result_table(pending.pop(index), schema),
                                   {"predicted": sum(1 for r in rows if r["predicted"]), "errors": dict(errors),
                                    "written_by": rank, "seconds": round(time.perf_counter() - clock[index], 2)})
                written, scored = written + 1, scored + len(rows)
    return written, scored, time.perf_counter() - first if first else 0.0
