"""The checkpoints and evaluation runs on disk, as the app lists them: each checkpoint folder read
with clara.checkpoint (no weights loaded) with the test metrics of the results folder that names
it; each results folder (clara.evaluate.write_results: metrics.json, plots, predictions.csv).
Both say what their data was (synthetic or a real folder) from what training recorded, and a
run is named after its checkpoint. A folder that cannot be read is listed with its reason.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara.batch import PREDICTIONS_FILE, PredictionRecord, read_predictions
from clara.checkpoint import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, checkpoint_config, read_checkpoint_info
from clara.data.provenance import describe_data_folder
from clara.datasets import REGISTRY
from clara.evaluate import SUMMARY_METRICS

DEMO_SOURCE_KIND = "demo"
# The bundled demo checkpoints (scripts/make_demo_checkpoint.py), one per dataset, by folder name
# under checkpoints/, in the order they are listed; "demo" (MVSA-Single) is the one the app opens on.
DEMO_FOLDERS = {"mvsa_single": "demo", "mvsa_multiple": "demo_mvsa_multiple", "hfm": "demo_hfm"}
# How deep under checkpoints/ a checkpoint folder may sit (checkpoints/<run>/ or checkpoints/<group>/<run>/).
MAX_CHECKPOINT_DEPTH = 3
RESULTS_DIR = "results"  # a checkpoint's own results folder, and the training script's results root


@dataclass
class CheckpointEntry:
    """One checkpoint folder as the picker lists it (read from its config.json, no weights loaded)."""
    path: Path
    name: str  # path relative to the checkpoints folder
    dataset: str | None = None
    protocol: str | None = None
    encoders: str | None = None
    fusion: str | None = None
    labels: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, f1_weighted, f1_macro (fractions)
    metrics_split: str | None = None  # "test" or "val": which split `metrics` were measured on
    created: str | None = None
    source: str = "clara"  # config.json source.kind: clara (trained here) | notebook (imported) | demo
    synthetic: bool | None = None  # trained on clara.data.synthetic posts; None: not recorded
    data_dir: str | None = None  # the training data folder, as recorded
    mtime: float = 0.0
    problem: str | None = None  # why the folder cannot be used, if it cannot

    @property
    def is_demo(self) -> bool:
        return self.source == DEMO_SOURCE_KIND

    @property
    def usable(self) -> bool:
        return self.problem is None


def checkpoint_mtime(path: str | Path) -> float:
    """Newest modification time of the files that define a checkpoint (cache key for the app)."""
    times = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            times.append((Path(path) / name).stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


def read_checkpoint_entry(path: str | Path, checkpoints_dir: str | Path | None = None,
                          results_roots: Sequence[str | Path] = ()) -> CheckpointEntry:
    """Describe one checkpoint folder from its config.json and metrics files.

    Test metrics come from the results folder whose metrics.json names this checkpoint (looked up
    in the checkpoint's own `results/` folder, then under each of `results_roots`), else from the
    checkpoint's metrics.json ("test" entry, or the validation metrics it was selected on).
    """
    path = Path(path)
    name = str(path.relative_to(checkpoints_dir)) if checkpoints_dir and _is_under(path, checkpoints_dir) else path.name
    entry = CheckpointEntry(path=path, name=name, mtime=checkpoint_mtime(path))
    try:
        info = read_checkpoint_info(path)
        cfg = checkpoint_config(info)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OSError) as exc:  # CheckpointError too
        entry.problem = f"cannot read {CONFIG_FILE}: {exc}"
        return entry
    entry.dataset, entry.protocol = cfg.data.dataset, cfg.data.protocol
    entry.encoders, entry.fusion = cfg.model.encoders, cfg.model.fusion
    entry.labels = list(cfg.labels)
    entry.created = info.get("created")
    source = info.get("source")
    if isinstance(source, dict) and source.get("kind"):
        entry.source = str(source["kind"])
    entry.synthetic, entry.data_dir = recorded_data(info, cfg.data.data_dir)
    entry.synthetic = True if entry.is_demo else entry.synthetic
    entry.metrics, entry.metrics_split = _checkpoint_metrics(path, results_roots)
    return entry


def recorded_data(info: Mapping[str, Any], data_dir: str | None) -> tuple[bool | None, str | None]:
    """(synthetic, data folder) from config.json's "data" record; a checkpoint saved before that
    record existed is judged by its config's data folder, when that folder is still there."""
    record = info.get("data")
    if not isinstance(record, dict):
        record = describe_data_folder(data_dir) if data_dir else {}
        if record and not Path(str(record.get("dir"))).is_dir():
            record = {"dir": record.get("dir"), "synthetic": None}
    synthetic, folder = record.get("synthetic"), record.get("dir")
    return (synthetic if isinstance(synthetic, bool) else None), (str(folder) if folder else None)


def synthetic_data_note(checkpoint: str | Path) -> str | None:
    """The one-line warning a command prints (on stderr) for a checkpoint trained on synthetic data."""
    entry = read_checkpoint_entry(checkpoint)
    if not entry.synthetic:
        return None
    return f"note: {checkpoint} was trained on synthetic data; not a sentiment model"


def _is_under(path: Path, parent: str | Path) -> bool:
    return path.resolve().is_relative_to(Path(parent).resolve())


def _headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in SUMMARY_METRICS if isinstance(metrics.get(k), (int, float))}


def _checkpoint_metrics(path: Path, results_roots: Sequence[str | Path]) -> tuple[dict[str, float], str | None]:
    for results_dir in [path / RESULTS_DIR, *(Path(r) for r in results_roots)]:
        for metrics_file in _metrics_files(results_dir):
            metrics = _read_json(metrics_file)
            if not isinstance(metrics, dict):
                continue
            own_folder = metrics_file.parent == path / RESULTS_DIR
            named = named_checkpoint(metrics, metrics_file.parent)
            if (own_folder or (named is not None and named.resolve() == path.resolve())) and _headline(metrics):
                return _headline(metrics), "test"
    own = _read_json(path / METRICS_FILE)
    if isinstance(own, dict):
        for split in ("test", "val"):
            if isinstance(own.get(split), dict) and _headline(own[split]):
                return _headline(own[split]), split
    return {}, None


def named_checkpoint(metrics: Mapping[str, Any], results_dir: Path) -> Path | None:
    """The checkpoint folder a results metrics.json names, if it exists.

    The training loop records the path as it was given, often relative to the folder it ran in
    (OUT, with results in OUT/results/<run>/), so a relative path is tried from there and from
    the current folder.
    """
    named = metrics.get("checkpoint")
    if not isinstance(named, str) or not named:
        return None
    path = Path(named)
    candidates = [path] if path.is_absolute() else [results_dir.parent.parent / path, Path.cwd() / path]
    return next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)


def _metrics_files(results_dir: Path) -> list[Path]:
    """metrics.json of a results folder, or of each run folder under a results root."""
    try:
        if not results_dir.is_dir():
            return []
        direct = results_dir / METRICS_FILE  # results folders use the checkpoints' file name
        return [direct] if direct.is_file() else sorted(results_dir.glob(f"*/{METRICS_FILE}"))
    except OSError:
        return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def find_checkpoints(checkpoints_dir: str | Path, results_roots: Sequence[str | Path] = ()) -> list[CheckpointEntry]:
    """Every checkpoint folder (a folder holding config.json) under `checkpoints_dir`.

    The demo checkpoints come first (DEMO_FOLDERS' order), then the others newest first. Hidden
    folders (e.g. the temporary folder of a save in progress) and results folders are not searched.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / CONFIG_FILE).is_file() and folder != root:
            found.append(folder)
            return
        if depth >= MAX_CHECKPOINT_DEPTH:
            return
        try:
            children = sorted(folder.iterdir())
        except OSError:  # an unreadable folder hides nothing else
            return
        for child in children:
            if child.is_dir() and not child.name.startswith(".") and child.name != RESULTS_DIR:
                walk(child, depth + 1)

    walk(root, 0)
    entries = [read_checkpoint_entry(p, root, results_roots) for p in found]
    demo_order = {name: i for i, name in enumerate(DEMO_FOLDERS.values())}
    return sorted(entries, key=lambda e: (not e.is_demo, demo_order.get(e.name, len(demo_order)), -e.mtime, e.name))


@dataclass
class RunResults:
    """One evaluation run's results folder: metrics.json (+ history, plots, predictions.csv)."""
    name: str  # the results folder: the checkpoint's name for its own, else results/<run>
    results_dir: Path
    metrics: dict[str, Any]
    checkpoint: Path | None = None
    display_name: str = ""  # what every page calls it: its checkpoint's catalogue name when known
    synthetic: bool | None = None  # evaluated (and trained) on synthetic data; None: not recorded

    def __post_init__(self) -> None:
        self.display_name = self.display_name or self.name

    @property
    def dataset(self) -> str | None:
        dataset = self.metrics.get("dataset")
        return dataset if isinstance(dataset, str) else None

    @property
    def labels(self) -> list[str]:
        labels = self.metrics.get("labels")
        if isinstance(labels, list) and labels:
            return [str(label) for label in labels]
        return list(REGISTRY[self.dataset].labels) if self.dataset in REGISTRY else []

    @property
    def history(self) -> list[dict[str, Any]]:
        history = self.metrics.get("history")
        return history if isinstance(history, list) else []

    @property
    def predictions_file(self) -> Path | None:
        path = self.results_dir / PREDICTIONS_FILE
        return path if path.is_file() else None

    def plots(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.results_dir.glob("*.png"))}


def find_results(results_roots: Sequence[str | Path], checkpoints: Sequence[CheckpointEntry] = ()
                 ) -> list[RunResults]:
    """Every results folder with a metrics.json: `<checkpoint>/results/` of each checkpoint, then
    `<root>/<run>/` under each results root (the training script's `results/`). A run whose
    checkpoint is listed is displayed under the checkpoint's name (with its folder when two runs
    share one) and inherits what the checkpoint says about its data."""
    runs: list[RunResults] = []
    seen: set[Path] = set()
    listed = {entry.path.resolve(): entry for entry in checkpoints}

    def add(results_dir: Path, name: str, checkpoint: Path | None) -> None:
        key = results_dir.resolve()
        metrics = _read_json(results_dir / METRICS_FILE)
        if key in seen or not isinstance(metrics, dict):
            return
        seen.add(key)
        checkpoint = checkpoint or named_checkpoint(metrics, results_dir)
        entry = listed.get(checkpoint.resolve()) if checkpoint is not None else None
        taken = {run.display_name for run in runs}
        display = name if entry is None else entry.name if entry.name not in taken else f"{entry.name} · {name}"
        recorded, _ = recorded_data({"data": metrics["data"]} if isinstance(metrics.get("data"), dict) else {}, None)
        if entry is None and checkpoint is not None:
            trained = read_checkpoint_entry(checkpoint).synthetic  # a checkpoint outside the listed folder
        else:
            trained = entry.synthetic if entry is not None else None
        flags = (recorded, trained)  # synthetic if either the evaluated or the training data was
        synthetic = True if True in flags else False if False in flags else None
        runs.append(RunResults(name=name, results_dir=results_dir, metrics=metrics, checkpoint=checkpoint,
                               display_name=display, synthetic=synthetic))

    for entry in checkpoints:
        add(entry.path / RESULTS_DIR, entry.name, entry.path)
    for root in results_roots:
        for metrics_file in _metrics_files(Path(root)):
            add(metrics_file.parent, f"{RESULTS_DIR}/{metrics_file.parent.name}", None)
    return runs


def load_predictions(run: RunResults) -> list[PredictionRecord]:
    """The rows of a run's predictions.csv; none when it has no such file."""
    path = run.predictions_file
    return read_predictions(path, run.labels) if path is not None else []


def resolve_image_path(run: RunResults, image_path: str) -> Path | None:
    """The image of a prediction row: a relative path is taken relative to the results folder."""
    if not image_path:
        return None
    path = Path(image_path)
    if not path.is_absolute():
        path = run.results_dir / path
    return path if path.is_file() else None
