"""Batch scoring: the one path from a table or folder of posts to predictions, for the app's Batch
page, `scripts/predict.py --csv` and jobs of millions of rows.

`sources` reads the input in chunks, `rows` decodes images in DataLoader workers and predicts a
batch at a time, `job` writes resumable Parquet shards and their manifest (one process or many under
torchrun / accelerate launch), `ray_engine` runs the same rows on Ray Data (optional extra).
Layout, columns and measurements: docs/BENCHMARKS.md ("Scoring jobs") and scripts/predict.py --help.
"""
from clara.scoring_jobs.job import (DEFAULT_SHARD_SIZE, MANIFEST_FILE, SHARD_PATTERN, JobError, JobFolder, JobOptions,
                                    JobSummary, PredictorSpec, checkpoint_fingerprint, default_threads,
                                    default_workers, job_arguments, process_group, run_job)
from clara.scoring_jobs.rows import (ERROR_COLUMNS, IMAGE_ONLY_PREFIX, TEXT_ONLY_PREFIX, result_columns, result_schema,
                                     score_source)
from clara.scoring_jobs.sources import (CsvSource, FolderSource, InputRow, JsonlSource, ParquetSource, Source,
                                        open_source)

__all__ = ["DEFAULT_SHARD_SIZE", "ERROR_COLUMNS", "IMAGE_ONLY_PREFIX", "MANIFEST_FILE", "SHARD_PATTERN",
           "TEXT_ONLY_PREFIX", "CsvSource", "FolderSource", "InputRow", "JobError", "JobFolder", "JobOptions",
           "JobSummary", "JsonlSource", "ParquetSource", "PredictorSpec", "Source", "checkpoint_fingerprint",
           "default_threads", "default_workers", "job_arguments", "open_source", "process_group", "result_columns",
           "result_schema", "run_job", "score_source"]
