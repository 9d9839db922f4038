"""A scoring job on Ray Data (`pip install "ray[data]"`, imported only here): read_parquet /
read_csv / read_text (JSONL) -> only the rows of shards not yet written -> map_batches over
`RayScorer` actors (one predictor each; how many, and their CPUs / GPUs, from RayOptions) -> the
results stream back in input order and each shard is written atomically once complete: the local
engine's files, manifest and resume (a rerun scores only the shards whose file is missing).
Rows, checks and predictions are the local engine's (clara.scoring_jobs.rows).

Without an address a local cluster is started; `RayOptions(address="auto")` or
`ray.init(address="ray://head:10001")` before the call joins an existing one (every node then needs
clara, the checkpoint and the images at the same paths; the output folder is the driver's).
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .job import (JobError, JobFolder, JobOptions, JobSummary, PredictorSpec, _now, input_record, job_arguments,
                  peak_rss_mb, shard_ranges, summarise)
from .rows import DecodedBatch, WorkItem, decode_row, merged_ranges, result_schema, result_table, score_batch
from .sources import FolderSource, JsonlSource, SkippedRows, Source, rows_from_arrow

ROW_COLUMN = "__row"  # the 0-based input row, zipped onto Ray's rows (Ray Data has no row index)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` None starts a local cluster (ray.init(address=...) otherwise);
    `concurrency` predictor actors, each with `num_cpus` CPUs (its torch threads) and `num_gpus` GPUs."""
    address: str | None = None
    concurrency: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None


class RayScorer:
    """A Ray Data actor: one predictor, called with a pyarrow table of input rows, returning result rows."""

    def __init__(self, source: Source, spec: PredictorSpec, precision: str, options: JobOptions, threads: int):
        import torch

        from clara.inputs import BatchImages

        torch.set_num_threads(threads)
        self.source, self.options = source, options
        self.predictor = spec.load(precision)
        self.schema = result_schema(self.predictor.labels, options.keep_inputs)
        self.images = BatchImages(folder=source.images_folder, confine=False)

    def __call__(self, table: pa.Table) -> pa.Table:
        numbers = table.column(ROW_COLUMN).to_pylist()
        if isinstance(self.source, FolderSource):
            rows = [self.source.row_at(n) for n in numbers]
        elif isinstance(self.source, JsonlSource):
            rows = [self.source.parse_line(n, line) for n, line in zip(numbers, table.column("text").to_pylist())]
        else:
            rows = rows_from_arrow(table, self.source.columns, numbers, self.source.kind)
        images = [decode_row(row, self.images, self.options.allow_empty_text) for row in rows]
        span = WorkItem(-1, numbers[0], numbers[-1] + 1) if numbers else WorkItem(-1, 0, 0)
        batch = DecodedBatch(span, rows, images)
        return result_table(score_batch(self.predictor, batch), self.schema)


def _read(ray: Any, source: Source) -> Any:
    if source.kind == "parquet":
        names = [c for c in (source.columns.image, source.columns.text, source.columns.id, source.columns.label) if c]
        return ray.data.read_parquet(str(source.path)).select_columns(list(dict.fromkeys(names)))
    if source.kind == "csv":
        if source.path is None:
            raise JobError("--engine ray reads CSV files, not CSV bytes")
        return ray.data.read_csv(str(source.path), **source.arrow_options(SkippedRows()))
    if source.kind == "jsonl":
        return ray.data.read_text(str(source.path))  # one row per line, blank ones dropped, as JsonlSource does
    return None  # a folder: the rows are only their numbers


class KeepRows:
    """A Ray Data batch function keeping the rows inside `ranges` (sorted, disjoint [start, end))."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self.starts = np.array([a for a, _ in ranges], dtype=np.int64)
        self.ends = np.array([b for _, b in ranges], dtype=np.int64)

    def __call__(self, table: pa.Table) -> pa.Table:
        numbers = table.column(ROW_COLUMN).to_numpy()
        where = np.searchsorted(self.starts, numbers, side="right") - 1
        return table.filter(pa.array((where >= 0) & (numbers < self.ends[np.maximum(where, 0)])))


def write_shards(results: Iterable[pa.Table], folder: JobFolder, shards: Sequence[Mapping[str, Any]],
                 shard_size: int) -> tuple[int, int, float]:
    """Write each of `shards` once all its rows have come in `results` (tables of result rows); (shards
    written, rows written, seconds from the first result on)."""
    by_index = {s["index"]: s for s in shards}
    parts: dict[int, list[pa.Table]] = {}
    clock: dict[int, float] = {}
    written = rows = 0
    first = None
    for table in results:
        if not table.num_rows:
            continue
        first = first or time.perf_counter()
        shard_of_row = pc.divide(table.column("row"), pa.scalar(shard_size, pa.int64()))
        for index in pc.unique(shard_of_row).to_pylist():
            clock.setdefault(index, time.perf_counter())
            part = parts.setdefault(index, [])
            part.append(table.filter(pc.equal(shard_of_row, index)))
            shard = by_index[index]
            if sum(t.num_rows for t in part) < shard["rows"][1] - shard["rows"][0]:
                continue
            done = pa.concat_tables(parts.pop(index))
            done = done.take(pc.sort_indices(done.column("row")))
            failed = done.filter(pc.is_null(done.column("predicted"))).column("error_kind")
            errors = {e["values"]: e["counts"] for e in pc.value_counts(pc.fill_null(failed, "other")).to_pylist()}
            seconds = round(time.perf_counter() - clock[index], 2)
            folder.write_shard(shard, done, {"predicted": done.num_rows - failed.length(), "errors": errors,
                                             "written_by": "ray", "seconds": seconds})
            written, rows = written + 1, rows + done.num_rows
    return written, rows, time.perf_counter() - first if first else 0.0


def run_ray_job(source: Source, spec: PredictorSpec, out: str | Path, options: JobOptions,
                ray_options: RayOptions = RayOptions()) -> JobSummary:
    """Score `source` into `out` on Ray Data: the shards whose file is missing (every shard the first
    time; a rerun with the same arguments resumes, other arguments are refused, as with the local engine)."""
    started = time.perf_counter()
    folder = JobFolder(out)
    manifest = folder.start(job_arguments(source, spec, options), source.num_rows,
                            shard_ranges(source.num_rows, options.shard_size), engine="ray",
                            extra=input_record(source))
    if not manifest["shards"]:  # written by the earlier engine (Ray's own ray-part-* files, no shards)
        raise JobError(f"--out {folder.folder} holds a Ray job of an earlier clara without shards; give another folder")
    pending = [s for s in manifest["shards"] if not folder.is_written(s)]
    written = scored = 0
    scoring = 0.0
    if pending:
        results, settings = _scored_rows(source, spec, folder, options, ray_options,
                                         [tuple(s["rows"]) for s in pending], len(manifest["shards"]))
        written, scored, scoring = write_shards(results, folder, pending, options.shard_size)
    with folder.manifest() as final:
        for shard in final["shards"]:  # a shard whose file exists is done (written, then killed before this)
            if shard["status"] != "done" and folder.is_written(shard):
                shard["status"] = "done"
        if pending:
            final["runs"].append({"finished": _now(), "engine": "ray", "host": socket.gethostname(),
                                  "pid": os.getpid(), "shards_written": written, "rows": scored,
                                  "seconds": round(time.perf_counter() - started, 2),
                                  "scoring_seconds": round(scoring, 2), "peak_rss_mb": peak_rss_mb(), "ray": settings})
        final["status"] = "done" if all(s["status"] == "done" for s in final["shards"]) else "incomplete"
        snapshot = {**final, "shards": [dict(s) for s in final["shards"]]}
    return summarise(folder, snapshot, written, scored, time.perf_counter() - started, scoring)


def _scored_rows(source: Source, spec: PredictorSpec, folder: JobFolder, options: JobOptions,
                 ray_options: RayOptions, ranges: list[tuple[int, int]],
                 shards: int) -> tuple[Iterable[pa.Table], dict[str, Any]]:
    """The result rows of `ranges` as Ray Data computes them (tables, in input order), and the settings."""
    try:
        import ray
    except ImportError:
        raise JobError('--engine ray needs Ray Data: pip install "ray[data]" (or pip install ".[scale]")') from None
    if not ray.is_initialized():
        ray.init(address=ray_options.address, include_dashboard=False, ignore_reinit_error=True,
                 **({"num_cpus": os.cpu_count()} if ray_options.address is None else {}))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = options.progress is not False
    context.execution_options.preserve_order = True  # zip pairs rows by position, shards complete in turn
    with folder.manifest() as record:  # decided once: a resumed job's shards are computed alike
        precision = record.setdefault("precision", spec.decide_precision())
    cpus, actors = ray_options.num_cpus or 1, ray_options.concurrency or 1
    available = ray.cluster_resources().get("CPU", 0)
    if cpus * actors > available - 1:  # Ray Data's read tasks need a CPU too, or the job waits forever
        raise JobError(f"{actors} actor(s) x {cpus:g} CPU(s) leave no CPU of the cluster's {available:g} for Ray "
                       "Data's read tasks: use fewer actors (--concurrency) or fewer CPUs each (--num-cpus 0.5)")
    numbered = ray.data.range(source.num_rows).rename_columns({"id": ROW_COLUMN})
    read = _read(ray, source)
    with warnings.catch_warnings():  # zip is deprecated from Ray 2.60 (removed in 2.64): the extra pins below that
        warnings.filterwarnings("ignore", message="(?s).*`Dataset.zip` is deprecated")
        rows = numbered if read is None else read.zip(numbered)
    if len(ranges) < shards:  # a resumed job: only the missing shards' rows are scored
        wanted = merged_ranges([WorkItem(-1, start, end) for start, end in sorted(ranges)])
        rows = rows.map_batches(KeepRows(wanted), batch_format="pyarrow", batch_size=None)
    scored = rows.map_batches(
        RayScorer, fn_constructor_kwargs={"source": source, "spec": spec, "precision": precision, "options": options,
                                          "threads": max(1, int(cpus))},
        batch_size=options.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, num_gpus=ray_options.num_gpus or 0)
    settings = {"address": ray_options.address, "concurrency": actors, "num_cpus": cpus,
                "num_gpus": ray_options.num_gpus or 0}
    return scored.iter_batches(batch_size=None, batch_format="pyarrow"), settings

