"""The demo builder (clara.train.demo, scripts/make_demo_checkpoint.py) at a tiny size: one demo per
dataset, each a checkpoint the catalogue lists as a synthetic demo with a results folder the Metrics
and Errors pages read; the same command rebuilds the same tensors. The bundled demos themselves
(checkpoints/demo*/) are checked as the app reads them in test_catalog.py and test_app_metrics.py."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from safetensors.torch import load_file

from clara import catalog
from clara.train.demo import build_demos
from _app_utils import ROOT

TINY = {"posts": 40, "epochs": 1, "workers": 0}  # no worker process to start for a few posts
RESULT_KEYS = {"per_class", "confusion_matrix", "history", "ablations", "calibration", "data", "checkpoint"}


def load_script():
    spec = importlib.util.spec_from_file_location("make_demo_checkpoint", ROOT / "scripts" / "make_demo_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos")
    return root, list(build_demos(root / "checkpoints", root / "examples", **TINY))


def test_one_demo_per_dataset_listed_as_synthetic_with_its_results(built):
    root, builds = built
    assert [b.dataset for b in builds] == list(catalog.DEMO_FOLDERS)
    entries = catalog.find_checkpoints(root / "checkpoints")
    assert [(e.name, e.dataset) for e in entries] == [(name, dataset) for dataset, name in catalog.DEMO_FOLDERS.items()]
    for entry, build in zip(entries, builds):
        assert entry.usable and entry.is_demo and entry.synthetic and entry.metrics_split == "test"
        assert build.size_bytes < 5 * 2**20
        info = json.loads((entry.path / "config.json").read_text())
        assert info["data"]["synthetic"] is True and info["data"]["generator"]["format"] == entry.dataset
        assert info["config"]["data"]["data_dir"] is None  # no temporary path left behind
        assert info["source"].get("encoders_from") == ("checkpoints/demo" if entry.dataset == "hfm" else None)
    runs = catalog.find_results([], entries)
    assert [r.display_name for r in runs] == list(catalog.DEMO_FOLDERS.values())
    for run in runs:
        assert run.synthetic and RESULT_KEYS <= set(run.metrics)
        assert {"confusion_matrix", "per_class_metrics", "training_curves"} <= set(run.plots())
        records = catalog.load_predictions(run)
        assert records and all(catalog.resolve_image_path(run, r.image_path) for r in records)
    gallery = json.loads((root / "examples" / "examples.json").read_text())
    assert all((root / "examples" / entry["image"]).is_file() for entry in gallery)
    assert builds[0].examples == gallery and not builds[1].examples and not builds[2].examples


def test_the_script_rebuilds_the_same_tensors(built, tmp_path, capsys):
    root, _ = built
    script = load_script()
    with pytest.raises(FileNotFoundError, match="starts from the encoders of .*demo, which is missing"):
        script.main(["--dataset", "hfm", "--checkpoints-dir", str(tmp_path), *map(str, ["--posts", 40, "--epochs", 1])])
    shutil.copytree(root / "checkpoints" / "demo", tmp_path / "demo")  # HFM's starts from MVSA-Single's encoders
    assert script.main(["--dataset", "hfm", "--checkpoints-dir", str(tmp_path), "--examples", str(tmp_path / "ex"),
                        "--posts", str(TINY["posts"]), "--epochs", str(TINY["epochs"])]) == 0
    assert "hfm demo:" in capsys.readouterr().out and not (tmp_path / "ex").exists()
    first = load_file(root / "checkpoints" / "demo_hfm" / "model.safetensors")
    again = load_file(tmp_path / "demo_hfm" / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(first[key].equal(again[key]) for key in first)


def test_an_unknown_dataset_is_one_line(capsys):
    assert load_script().main(["--dataset", "imdb"]) == 2
    assert capsys.readouterr().err.strip() == (
        "make_demo_checkpoint.py: error: no demo for imdb; choose from mvsa_single, mvsa_multiple, hfm")
