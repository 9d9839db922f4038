"""The Metrics page under AppTest, as on a fresh clone (the app pointed at copies of the bundled demo
runs): per-class bars for MVSA-Single, MVSA-Multiple and HFM with the published CLARA numbers beside
the demo runs, every demo series marked synthetic, one colour per series, normalised confusion
matrices; and the app tests' isolation from a user's own runs in the working tree."""
from __future__ import annotations

import json
import shutil

import pytest

from clara.catalog import DEMO_FOLDERS
from clara_app import charts, state, tables
from _app_utils import ROOT, AppFolders, app_folders, point_app_at, require_demo  # noqa: F401 (a fixture)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
TIMEOUT = 180
DATASETS = ["MVSA-Single", "MVSA-Multiple", "HFM"]


def check(at: AppTest) -> AppTest:
    assert not at.exception, "\n\n".join(e.value for e in at.exception)
    return at


def metrics_page(folders, monkeypatch) -> AppTest:
    point_app_at(folders, monkeypatch)
    at = check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    return check(at.switch_page("pages/metrics.py").run())


def frame(at: AppTest, *columns: str, exclude: tuple[str, ...] = ()):
    matches = [d.value for d in at.dataframe
               if set(columns) <= set(d.value.columns) and not set(exclude) & set(d.value.columns)]
    assert len(matches) == 1, [list(d.value.columns) for d in at.dataframe]
    return matches[0]


def figures(at: AppTest) -> list[dict]:
    """Every Plotly figure on the page, as the JSON Streamlit sends to the browser."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def per_class_chart(at: AppTest) -> dict:
    [figure] = [f for f in figures(at) if f["layout"].get("barmode") == "group"]
    return figure


@pytest.fixture(scope="module")
def demo_names() -> list[str]:
    names = [name for name in DEMO_FOLDERS.values() if (ROOT / "checkpoints" / name / "config.json").is_file()]
    assert names == list(DEMO_FOLDERS.values()), "rebuild the demos: python scripts/make_demo_checkpoint.py"
    return names


def test_metrics_page_compares_three_datasets_with_the_published_numbers(app_folders, demo_names, monkeypatch):
    at = metrics_page(app_folders, monkeypatch)
    summary = frame(at, "run", "best epoch")
    assert list(summary["run"]) == ["CLARA (published)", "demo", "CLARA (published)", "demo_mvsa_multiple",
                                    "CLARA (published)", "demo_hfm"]
    assert list(summary["data"]) == ["published", "synthetic"] * 3
    assert summary.iloc[0]["accuracy"] == 83.16
    assert "synthetic data" in "\n".join(w.value for w in at.warning)
    per_class = frame(at, "run", "class", "support")
    assert len(per_class) == 2 * (3 + 3 + 2)
    assert len(frame(at, "variant", "f1_macro", exclude=("params",))) >= 3 * 6 + 6  # every demo's, the published
    assert len(at.get("plotly_chart")) >= 1 + 3 + 3 * 2  # per-class bars, 3 confusion matrices, curves

    figure = per_class_chart(at)
    assert [a["text"] for a in figure["layout"]["annotations"]] == DATASETS  # one panel per dataset
    bars = figure["data"]
    published = [b for b in bars if b["name"] == "CLARA (published)"]
    assert [b["xaxis"] for b in published] == ["x", "x2", "x3"]  # beside the runs in every panel
    assert [b["y"] for b in published] == [[88.84, 70.77, 79.83], [81.24, 75.09, 47.43], [88.33, 87.92]]
    demos = [b for b in bars if b["name"] != "CLARA (published)"]
    assert [b["name"] for b in demos] == [f"{n} · synthetic data" for n in demo_names]
    for bar in demos:  # hatched and faded, never drawn like the published numbers
        assert bar["marker"]["pattern"]["shape"] == charts.SYNTHETIC_PATTERN
        assert bar["marker"]["opacity"] == charts.SYNTHETIC_OPACITY
    assert all(b["marker"]["pattern"]["shape"] == "" and b["marker"]["opacity"] == 1 for b in published)
    colours = {b["name"]: b["marker"]["color"] for b in bars}
    assert len(set(colours.values())) == len(colours)  # one colour per series

    at.radio(key="metrics_metric").set_value("precision")
    check(at.run())
    precision = per_class_chart(at)
    assert "CLARA (published)" not in {b["name"] for b in precision["data"]}
    assert "publish per-class F1 only" in "\n".join(i.value for i in at.info)
    assert any("per-class F1 only" in a["text"] for a in precision["layout"]["annotations"])
    assert {b["name"]: b["marker"]["color"] for b in precision["data"]} == {
        name: colour for name, colour in colours.items() if name != "CLARA (published)"}  # same colours

    [placeholder] = {d.proto.placeholder for d in at.dataframe}
    assert placeholder == "—"  # no "None" in empty cells


def test_confusion_matrices_are_row_shares_with_counts_and_no_title(app_folders, demo_names, monkeypatch):
    at = metrics_page(app_folders, monkeypatch)
    heatmaps = [f for f in figures(at) if f["data"] and f["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 3
    for figure in heatmaps:
        [heat] = figure["data"]
        assert all(sum(row) == pytest.approx(1.0) for row in heat["z"])  # share of each true class
        assert "%{customdata} posts" in heat["hovertemplate"] and sum(map(sum, heat["customdata"])) > 0
        assert (heat["zmin"], heat["zmax"]) == (0.0, 1.0)
        assert not figure["layout"].get("title", {}).get("text")  # the page writes it, clear of the toolbar
        assert tables.SYNTHETIC_MARK in [a["text"] for a in figure["layout"]["annotations"]]
    for figure in figures(at):
        assert not figure["layout"].get("title", {}).get("text")


def test_a_users_own_runs_in_the_working_tree_do_not_reach_the_app_tests(app_folders, demo_names, tmp_path,
                                                                         monkeypatch):
    """After training once in a clone, checkpoints/ and results/ hold the user's run: the app shows it
    when nothing is set, and the tests' folders (as the `app` fixtures set them) leave it out."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "checkpoints" / "demo", clone / "checkpoints" / "demo")
    trained = clone / "checkpoints" / "clara_mvsa_single_best"  # as scripts/train.py leaves them
    shutil.copytree(ROOT / "checkpoints" / "demo", trained, ignore=shutil.ignore_patterns("results"))
    info = json.loads((trained / "config.json").read_text())
    info["source"], info["data"] = {"kind": "clara"}, {"dir": str(tmp_path / "MVSA_Single"), "synthetic": False}
    (trained / "config.json").write_text(json.dumps(info))
    results = clone / "results" / "mvsa_single"
    shutil.copytree(ROOT / "checkpoints" / "demo" / "results", results)
    metrics = json.loads((results / "metrics.json").read_text())
    metrics["checkpoint"] = "checkpoints/clara_mvsa_single_best"
    metrics.pop("data", None)  # as training writes it today
    (results / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(state, "ROOT", clone)

    monkeypatch.delenv(state.CHECKPOINTS_ENV, raising=False)
    monkeypatch.delenv(state.RESULTS_ENV, raising=False)
    at = check(check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
               .switch_page("pages/metrics.py").run())
    user_rows = frame(at, "run", "best epoch").query("run == 'clara_mvsa_single_best'")
    assert list(user_rows["data"]) == ["real"]  # the user's run, named as on Home, not as synthetic

    at = metrics_page(app_folders, monkeypatch)
    assert "clara_mvsa_single_best" not in set(frame(at, "run", "best epoch")["run"])
    assert not any("clara_mvsa_single_best" in bar["name"] for bar in per_class_chart(at)["data"])


def test_a_checkpoint_trained_on_synthetic_data_is_flagged_on_home(tmp_path, monkeypatch):
    """Not a demo, but trained on a clara.data.synthetic folder: Home's table, details and banner say so.
    (Alone in its folder, so the app opens on it: AppTest drops the banner's elements on reruns.)"""
    require_demo()
    root = tmp_path / "checkpoints"
    trained = root / "clara_hfm_best"
    shutil.copytree(ROOT / "checkpoints" / "demo", trained, ignore=shutil.ignore_patterns("results"))
    info = json.loads((trained / "config.json").read_text())
    info["source"] = {"kind": "clara"}
    info["data"] = {"dir": str(tmp_path / "synthetic_hfm"), "synthetic": True}
    (trained / "config.json").write_text(json.dumps(info))
    monkeypatch.setenv(state.CHECKPOINTS_ENV, str(root))
    monkeypatch.setenv(state.RESULTS_ENV, str(tmp_path / "results"))
    at = check(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    [row] = frame(at, "checkpoint", "encoders").to_dict("records")
    assert row["data"] == "synthetic" and row["training data"] == f"synthetic ({tmp_path / 'synthetic_hfm'})"
    assert "clara_hfm_best was trained on synthetic data" in "\n".join(w.value for w in at.warning)
    assert not at.info or "You are using the demo checkpoint" not in "\n".join(i.value for i in at.info)
    assert f"**Training data:** synthetic ({tmp_path / 'synthetic_hfm'})" in "\n".join(m.value for m in at.markdown)
    assert "synthetic data" in at.selectbox(key="checkpoint_picker").options[0]


# ----------------------------------------------------------------------------- a run in progress

def write_progress(last, epochs: int, done: bool = False) -> None:
    """What the training loop rewrites in a run's `last` checkpoint after each epoch (the parts the page reads)."""
    history = [{"epoch": e, "lr": 1e-4, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 20,
                "val_f1_macro": 0.4 + e / 20, "val_f1_weighted": 0.45 + e / 20, "steps": 5, "best_epoch": e}
               for e in range(1, epochs + 1)]
    (last / "history.json").write_text(json.dumps(history))
    (last / "training_state.json").write_text(json.dumps({"state_version": 1, "epochs_done": epochs,
                                                          "training_done": done}))


def test_a_run_in_progress_is_shown_from_its_growing_history(tmp_path, monkeypatch):
    """A `last` checkpoint whose training goes on (5 epochs asked, 2 written): its own section with
    the loss and validation curves, refreshed on a timer; a third epoch appears on the next run; a
    damaged history is one line; once training has ended the run leaves the section."""
    require_demo()
    folders = AppFolders(tmp_path / "checkpoints", tmp_path / "results")
    folders.results.mkdir(parents=True)
    last = folders.checkpoints / "clara_hfm_last"
    shutil.copytree(ROOT / "checkpoints" / "demo_hfm", last, ignore=shutil.ignore_patterns("results"))
    info = json.loads((last / "config.json").read_text())
    info["config"]["train"]["epochs"] = 5
    (last / "config.json").write_text(json.dumps(info))
    write_progress(last, 2)
    at = metrics_page(folders, monkeypatch)

    assert "Training in progress" in [h.value for h in at.header]
    [line] = [m.value for m in at.markdown if "in progress" in m.value]
    assert line.startswith(f"**clara_hfm_last · {tables.SYNTHETIC_MARK}** · HFM · in progress · epoch 2 of 5 · "
                           "last epoch written ")
    assert at.toggle(key="metrics_live_refresh").value is True
    curves = figures(at)
    assert [[t["name"] for t in f["data"]] for f in curves] == [["train_loss", "val_loss"],
                                                               ["val_accuracy", "val_f1_macro", "val_f1_weighted"]]
    assert all(t["x"] == [1, 2] for f in curves for t in f["data"])
    assert "No results yet" in "\n".join(i.value for i in at.info)  # no finished run besides

    at.toggle(key="metrics_live_refresh").set_value(False)  # no timer: read again only when the page reruns
    write_progress(last, 3)
    check(at.run())
    assert any("epoch 3 of 5" in m.value for m in at.markdown)
    assert all(t["x"] == [1, 2, 3] for f in figures(at) for t in f["data"])

    (last / "history.json").write_text("[{\"epoch\": 1,")  # caught mid-write by another tool, or damaged
    check(at.run())
    [warning] = [w.value for w in at.warning if "cannot show its progress" in w.value]
    assert warning.endswith(f"{last / 'history.json'} is not readable JSON (Expecting property name enclosed in "
                            "double quotes, line 1)") and "\n" not in warning

    write_progress(last, 3, done=True)
    check(at.run())
    assert "Training in progress" not in [h.value for h in at.header]
