"""clara.catalog: the checkpoints and evaluation runs found on disk, read as the app lists them,
and a run's predictions.csv read back for the Errors page.

The tests read the bundled demo checkpoint (checkpoints/demo/), exactly as the app does on a
fresh clone.
"""
from __future__ import annotations

import json
import shutil

import pytest

from clara import batch, catalog
from clara_app import tables
from _app_utils import DEMO_CHECKPOINT, ROOT, require_demo


def test_demo_checkpoint_is_listed_first_with_its_test_metrics():
    require_demo()
    entries = catalog.find_checkpoints(ROOT / "checkpoints", results_roots=[ROOT / "results"])
    demo = entries[0]
    assert demo.path == DEMO_CHECKPOINT and demo.is_demo and demo.usable
    assert (demo.name, demo.dataset, demo.protocol, demo.encoders) == ("demo", "mvsa_single", "clara", "tiny")
    assert demo.labels == ["positive", "neutral", "negative"]
    test_metrics = json.loads((DEMO_CHECKPOINT / "results" / "metrics.json").read_text())
    assert demo.metrics_split == "test"
    assert demo.metrics == {m: test_metrics[m] for m in ("accuracy", "f1_weighted", "f1_macro")}
    [row] = [r for r in tables.checkpoints_table(entries) if r["checkpoint"] == "demo"]
    assert row["accuracy"] == round(100 * test_metrics["accuracy"], 2)
    assert row["source"] == "demo (synthetic data)"


def test_checkpoint_listing_reads_results_and_flags_unusable_folders(tmp_path):
    require_demo()
    root = tmp_path / "checkpoints"
    info = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    trained = root / "clara_hfm_best"
    shutil.copytree(DEMO_CHECKPOINT / "tokenizer", trained / "tokenizer")
    info.update(dataset="hfm", labels=["not_sarcastic", "sarcastic"], source={"kind": "clara"})
    info["config"]["data"]["dataset"] = "hfm"
    (trained / "config.json").write_text(json.dumps(info))
    (trained / "model.safetensors").write_bytes(b"")
    broken = root / "group" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    (root / ".clara_hfm_best.tmp-123").mkdir()  # a save in progress is not listed
    (root / ".clara_hfm_best.tmp-123" / "config.json").write_text("{}")
    results = tmp_path / "results" / "hfm"
    results.mkdir(parents=True)
    # the training loop records the checkpoint relative to its output folder (here tmp_path)
    (results / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "f1_weighted": 0.25, "f1_macro": 0.2,
                                                      "dataset": "hfm",
                                                      "checkpoint": "checkpoints/clara_hfm_best"}))

    entries = catalog.find_checkpoints(root, results_roots=[tmp_path / "results"])
    assert sorted(e.name for e in entries) == ["clara_hfm_best", "group/broken"]
    by_name = {e.name: e for e in entries}
    assert by_name["clara_hfm_best"].usable and by_name["clara_hfm_best"].source == "clara"
    assert by_name["clara_hfm_best"].metrics == {"accuracy": 0.5, "f1_weighted": 0.25, "f1_macro": 0.2}
    assert by_name["clara_hfm_best"].metrics_split == "test"
    assert not by_name["group/broken"].usable
    assert "cannot read config.json" in by_name["group/broken"].problem
    [run] = catalog.find_results([tmp_path / "results"], entries)
    assert (run.name, run.dataset) == ("results/hfm", "hfm")
    assert run.checkpoint == tmp_path / "checkpoints" / "clara_hfm_best"
    assert run.labels == ["not_sarcastic", "sarcastic"]


@pytest.mark.parametrize("damage", ["labels: 5", "config.data a string", "deeply nested JSON", "not JSON",
                                    "unknown format_version"])
def test_one_bad_checkpoint_folder_is_listed_with_its_reason_and_the_others_still_work(tmp_path, damage):
    require_demo()
    root = tmp_path / "checkpoints"
    shutil.copytree(DEMO_CHECKPOINT, root / "demo")
    bad = root / "bad"
    shutil.copytree(DEMO_CHECKPOINT, bad, ignore=shutil.ignore_patterns("results"))
    info = json.loads((bad / "config.json").read_text())
    if damage == "labels: 5":
        info["labels"] = 5
    elif damage == "config.data a string":
        info["config"]["data"] = "mvsa_single"
    elif damage == "unknown format_version":
        info["format_version"] = 99
    text = {"deeply nested JSON": "[" * 100_000, "not JSON": "{not json"}.get(damage, json.dumps(info))
    (bad / "config.json").write_text(text)
    entries = {e.name: e for e in catalog.find_checkpoints(root)}
    assert entries["demo"].usable and entries["demo"].metrics_split == "test"
    assert not entries["bad"].usable and entries["bad"].problem.startswith("cannot read config.json")
    assert [r["status"] for r in tables.checkpoints_table(entries.values())].count("ok") == 1


def demo_run() -> catalog.RunResults:
    require_demo()
    runs = catalog.find_results([], catalog.find_checkpoints(ROOT / "checkpoints"))
    return next(run for run in runs if run.checkpoint == DEMO_CHECKPOINT)


def test_demo_predictions_and_errors():
    run = demo_run()
    records = catalog.load_predictions(run)
    assert len(records) == run.metrics["n"]
    wrong = batch.misclassified(records)
    assert len(wrong) == run.metrics["n"] - round(run.metrics["accuracy"] * run.metrics["n"])
    for record in records:
        assert catalog.resolve_image_path(run, record.image_path) is not None
        assert sum(record.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(r["count"] for r in tables.error_counts(records)) == len(wrong)
    if wrong:
        first = wrong[0]
        assert first in batch.misclassified(records, first.label, first.predicted)
        assert batch.misclassified(records, first.label, first.label) == []


def test_what_training_recorded_about_its_data_flags_synthetic_runs(tmp_path):
    """config.json's "data" record (clara.checkpoint writes it from the data folder), or for a
    checkpoint saved before that record the config's data folder, says synthetic or real; a results
    run is named after its checkpoint and inherits the flag; predict.py's note comes from it."""
    from clara.data.synthetic import write_synthetic

    require_demo()
    root = tmp_path / "checkpoints"
    synthetic_dir, real_dir = tmp_path / "synthetic", tmp_path / "real"
    write_synthetic("mvsa_single", synthetic_dir, 6, quirks=False)
    real_dir.mkdir()
    for name, data_dir, record in (("recorded", None, {"dir": str(synthetic_dir), "synthetic": True}),
                                   ("older_synthetic", synthetic_dir, None), ("older_real", real_dir, None),
                                   ("real", None, {"dir": str(real_dir), "synthetic": False}),
                                   ("moved", tmp_path / "gone", None)):
        folder = root / name
        shutil.copytree(DEMO_CHECKPOINT, folder, ignore=shutil.ignore_patterns("results"))
        info = json.loads((folder / "config.json").read_text())
        info["source"] = {"kind": "clara"}
        info.pop("data", None)
        if record is not None:
            info["data"] = record
        info["config"]["data"]["data_dir"] = str(data_dir) if data_dir else None
        (folder / "config.json").write_text(json.dumps(info))
    results = tmp_path / "results" / "mvsa_single"
    results.mkdir(parents=True)
    (results / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "dataset": "mvsa_single",
                                                      "checkpoint": "checkpoints/older_synthetic"}))

    entries = {e.name: e for e in catalog.find_checkpoints(root, results_roots=[tmp_path / "results"])}
    assert {name: (e.synthetic, e.data_dir) for name, e in entries.items()} == {
        "recorded": (True, str(synthetic_dir)), "older_synthetic": (True, str(synthetic_dir.resolve())),
        "older_real": (False, str(real_dir.resolve())), "real": (False, str(real_dir)),
        "moved": (None, str((tmp_path / "gone").resolve()))}
    [run] = catalog.find_results([tmp_path / "results"], list(entries.values()))
    assert (run.name, run.display_name, run.synthetic) == ("results/mvsa_single", "older_synthetic", True)
    assert tables.run_name(run) == tables.run_name(entries["older_synthetic"]) == "older_synthetic"
    assert tables.series_label(run) == "older_synthetic · synthetic data"
    assert catalog.synthetic_data_note(root / "recorded") == (
        f"note: {root / 'recorded'} was trained on synthetic data; not a sentiment model")
    assert catalog.synthetic_data_note(root / "real") is None
    assert catalog.synthetic_data_note(DEMO_CHECKPOINT) is not None  # a demo is synthetic by definition


def test_the_demos_are_listed_first_in_their_fixed_order(tmp_path):
    require_demo()
    root = tmp_path / "checkpoints"
    for name in ("demo_hfm", "trained", "demo_mvsa_multiple", "demo"):  # the newest last
        shutil.copytree(DEMO_CHECKPOINT, root / name, ignore=shutil.ignore_patterns("results"))
        if name == "trained":
            info = json.loads((root / name / "config.json").read_text())
            info["source"] = {"kind": "clara"}
            (root / name / "config.json").write_text(json.dumps(info))
    assert [e.name for e in catalog.find_checkpoints(root)] == [*catalog.DEMO_FOLDERS.values(), "trained"]


def test_a_saved_checkpoint_records_its_data_folder(tmp_path):
    from clara.checkpoint import read_checkpoint_info, save_checkpoint
    from clara.config import get_preset
    from clara.data.synthetic import write_synthetic
    from clara.model import create_model

    write_synthetic("hfm", tmp_path / "data", 10, quirks=False)
    cfg = get_preset("hfm").override({"model.encoders": "tiny", "model.hidden_dim": "32", "model.fusion_heads": "2",
                                      "data.data_dir": str(tmp_path / "data")})
    model, tokenizer = create_model(cfg)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, cfg)
    data = read_checkpoint_info(tmp_path / "ckpt")["data"]
    assert data["dir"] == str((tmp_path / "data").resolve()) and data["synthetic"] is True
    assert data["generator"]["format"] == "hfm" and data["generator"]["n"] == 10
    save_checkpoint(tmp_path / "plain", model, tokenizer, cfg.override({"data.data_dir": str(tmp_path)}))
    assert read_checkpoint_info(tmp_path / "plain")["data"] == {"dir": str(tmp_path.resolve()), "synthetic": False}
