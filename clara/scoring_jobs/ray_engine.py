"""A scoring job on Ray Data (`pip install "ray[data]"`, imported only here): read_parquet /
read_csv / read_text (JSONL) -> map_batches over `RayScorer` actors (one predictor each; how many,
and their CPUs / GPUs, from RayOptions) -> write_parquet into the job's folder beside its
manifest. Rows, checks and predictions are the local engine's (clara.scoring_jobs.rows).

Without an address a local cluster is started; `RayOptions(address="auto")` or
`ray.init(address="ray://head:10001")` before the call joins an existing one (every node then needs
clara, the checkpoint and the images at the same paths). Ray has no resume: a rerun after a crash
scores everything again; a finished job is not rerun.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from .job import JobError, JobFolder, JobOptions, JobSummary, PredictorSpec, input_record, job_arguments, peak_rss_mb
from .rows import DecodedBatch, WorkItem, decode_row, result_schema, result_table, score_batch
from .sources import FolderSource, JsonlSource, Source, SkippedRows, rows_from_arrow

ROW_COLUMN = "__row"  # the 0-based input row, zipped onto Ray's rows (Ray Data has no row index)
FILE_PREFIX = "ray-part"


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


def _filename_provider() -> Any:
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{FILE_PREFIX}-{write_uuid}-{task_index:05d}.parquet"

    return ShardNames(file_format="parquet")


def run_ray_job(source: Source, spec: PredictorSpec, out: str | Path, options: JobOptions,
                ray_options: RayOptions = RayOptions()) -> JobSummary:
    """Score `source` into `out` on Ray Data (a finished job there with the same arguments is not
    rerun; other arguments are refused, as with the local engine)."""
    try:
        import ray
    except ImportError:
        raise JobError('--engine ray needs Ray Data: pip install "ray[data]" (or pip install ".[scale]")') from None
    started = time.perf_counter()
    folder = JobFolder(out)
    manifest = folder.start(job_arguments(source, spec, options), source.num_rows, [], engine="ray",
                            extra=input_record(source))
    if manifest.get("status") == "done":
        return _summary(folder, source, manifest.get("files", []), 0, time.perf_counter() - started)
    for stale in folder.folder.glob(f"{FILE_PREFIX}-*.parquet"):  # a run that did not finish
        stale.unlink()
    if not ray.is_initialized():
        ray.init(address=ray_options.address, include_dashboard=False, ignore_reinit_error=True,
                 **({"num_cpus": os.cpu_count()} if ray_options.address is None else {}))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = options.progress is not False
    context.execution_options.preserve_order = True  # zip below pairs rows by position: keep the order
    precision = spec.decide_precision()
    with folder.manifest() as record:
        record["precision"] = precision
    cpus, actors = ray_options.num_cpus or 1, ray_options.concurrency or 1
    available = ray.cluster_resources().get("CPU", 0)
    if cpus * actors > available - 1:  # Ray Data's read and write tasks need a CPU too, or the job waits forever
        raise JobError(f"{actors} actor(s) x {cpus:g} CPU(s) leave no CPU of the cluster's {available:g} for Ray "
                       "Data's read and write tasks: use fewer actors (--concurrency) or fewer CPUs each "
                       "(--num-cpus 0.5)")
    numbered = ray.data.range(source.num_rows).rename_columns({"id": ROW_COLUMN})
    read = _read(ray, source)
    with warnings.catch_warnings():  # zip is deprecated from Ray 2.60 (removed in 2.64): the extra pins below that
        warnings.filterwarnings("ignore", message=".*Dataset.zip.*is deprecated")
        rows = numbered if read is None else read.zip(numbered)
    scored = rows.map_batches(
        RayScorer, fn_constructor_kwargs={"source": source, "spec": spec, "precision": precision, "options": options,
                                          "threads": max(1, int(cpus))},
        batch_size=options.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, num_gpus=ray_options.num_gpus or 0)
    scored.write_parquet(str(folder.folder), filename_provider=_filename_provider(),
                         min_rows_per_file=options.shard_size)
    files = sorted(p.name for p in folder.folder.glob(f"{FILE_PREFIX}-*.parquet"))
    summary = _summary(folder, source, files, source.num_rows, time.perf_counter() - started)
    with folder.manifest() as record:
        record.update({"status": "done", "files": files, "predicted": summary.predicted, "errors": summary.errors,
                       "ray": {"address": ray_options.address, "concurrency": actors,
                               "num_cpus": cpus, "num_gpus": ray_options.num_gpus or 0,
                               "seconds": round(summary.seconds, 2)}})
    return summary


def _summary(folder: JobFolder, source: Source, files: list[str], scored: int, seconds: float) -> JobSummary:
    counts: Counter[str] = Counter()
    predicted = rows = 0
    if files:
        table = pads.dataset([str(folder.folder / name) for name in files], format="parquet").to_table(
            columns=["predicted", "error_kind"])
        rows = table.num_rows
        predicted = table.num_rows - table.column("predicted").null_count
        counts.update(kind or "other" for kind, predicted_label in zip(table.column("error_kind").to_pylist(),
                                                                        table.column("predicted").to_pylist())
                      if predicted_label is None)
    shards = max(1, len(files))
    return JobSummary(folder=folder.folder, rows=source.num_rows, shards=shards,
                      shards_done=shards if rows == source.num_rows else 0,
                      shards_written=int(bool(scored)), rows_scored=scored, seconds=seconds, predicted=predicted,
                      errors=dict(counts), skipped_rows=source.skipped.count, peak_rss_mb=peak_rss_mb(),
                      scoring_seconds=seconds)
