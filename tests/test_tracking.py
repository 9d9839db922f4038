"""Experiment tracking through Accelerate's trackers (train.report_to, --report-to): a real tiny
training with TensorBoard writes loss and learning rate per optimizer step and the history's
validation metrics per epoch under OUT/tracking/, read back with TensorBoard's EventAccumulator;
a resumed run continues the step counter and draws the repeated epoch once; `none` writes no
event files; an unknown or uninstalled tracker is one line and exit status 2, before any data
is read."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from clara.config import REPORT_TO, ConfigError, get_preset
from clara.data.synthetic import write_synthetic
from clara.evaluate.results import read_run_in_progress
from test_train import REPO, load_train_script, run_main_expecting_exit
from _eval_utils import one_thread  # noqa: F401 (a fixture)

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator

STEPS_PER_EPOCH = 3
SETTINGS = {"model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4",
            "data.check_images": "false", "train.mixed_precision": "no", "train.batch_size": "4",
            "train.max_steps_per_epoch": str(STEPS_PER_EPOCH), "train.epochs": "2", "train.patience": "2"}
ARGS = ["--dataset", "hfm", "--encoders", "tiny", "--epochs", "2", "--batch-size", "4",
        "--max-steps-per-epoch", str(STEPS_PER_EPOCH), "--no-progress",
        *[arg for key in ("model.hidden_dim", "model.fusion_heads", "data.check_images", "train.mixed_precision")
          for arg in ("--set", f"{key}={SETTINGS[key]}")]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic("hfm", tmp_path_factory.mktemp("tracking") / "hfm", n=48, seed=1, quirks=False)["out_dir"]


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for one run folder: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def event_files(folder) -> list:
    return sorted(folder.rglob("events.out.tfevents.*"))


def exit_with_one_line(argv: list[str], capsys) -> tuple[int, str, str]:
    status, lines, out = run_main_expecting_exit(argv, capsys)
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
    return status, lines[0], out


def test_tensorboard_gets_loss_and_lr_per_step_and_validation_metrics_per_epoch(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert load_train_script().main([*ARGS, "--data-dir", str(data_dir), "--output-dir", str(out),
                                     "--report-to", "tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert f"tracking: tensorboard; files under {out / 'tracking' / 'hfm'}" in printed
    run_dir = out / "tracking" / "hfm"
    assert event_files(run_dir)
    logged = scalars(run_dir)
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for tag in ("train/loss", "train/lr"):  # every optimizer step
        assert [step for step, _ in logged[tag]] == steps, tag
    assert logged["train/lr"][0][1] > logged["train/lr"][-1][1]  # the schedule decays
    epoch_ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    history = json.loads((out / "results" / "hfm" / "metrics.json").read_text())["history"]
    for key in ("val_loss", "val_accuracy", "val_f1_macro", "val_f1_weighted", "val_f1_sarcastic"):
        tag = f"val/{key[4:]}"
        assert [step for step, _ in logged[tag]] == epoch_ends, tag  # per epoch, as history.json
        assert [value for _, value in logged[tag]] == pytest.approx([entry[key] for entry in history])
    assert [value for _, value in logged["epoch/train_loss"]] == pytest.approx([e["train_loss"] for e in history])
    assert [value for _, value in logged["epoch/epoch"]] == [1, 2]
    assert {"test/accuracy", "test/f1_weighted", "test/f1_macro"} <= set(logged)
    [hparams] = run_dir.glob("*/hparams.yml")  # the resolved config, flat
    recorded = yaml.safe_load(hparams.read_text())
    assert recorded["train.report_to"] == "tensorboard" and recorded["data.dataset"] == "hfm"
    assert recorded["model.vision_lora_targets"] == "q_proj,k_proj,v_proj,out_proj"
    assert all(value is None or isinstance(value, (str, int, float, bool)) for value in recorded.values())


def test_a_resumed_run_continues_the_step_counter_and_draws_the_repeated_epoch_once(data_dir, tmp_path,
                                                                                   monkeypatch):
    from clara.train import loop

    cfg = get_preset("hfm").override({**SETTINGS, "data.data_dir": str(data_dir),
                                      "train.output_dir": str(tmp_path), "train.report_to": "tensorboard"})
    gather = loop._gather_outputs
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C after epoch 2 trained, before its checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return gather(*args, **kwargs)

    monkeypatch.setattr(loop, "_gather_outputs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, progress=False)
    run_dir = tmp_path / "tracking" / "hfm"
    assert [step for step, _ in scalars(run_dir)["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    last = tmp_path / "checkpoints" / "clara_hfm_last"
    progress = read_run_in_progress(last)  # what the Metrics page shows meanwhile
    assert (progress.problem, progress.status, progress.synthetic) == (None, "in progress · epoch 1 of 2", True)
    assert [entry["epoch"] for entry in progress.history] == [1] and "val_f1_macro" in progress.history[0]
    monkeypatch.setattr(loop, "_gather_outputs", gather)
    loop.train(cfg, progress=False, resume=True)
    assert read_run_in_progress(last) is None  # training has ended
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # each run its own file, in the run's folder
    logged = scalars(run_dir)
    assert [step for step, _ in logged["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [step for step, _ in logged["val/f1_macro"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_none_writes_no_event_files(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert load_train_script().main([*ARGS, "--data-dir", str(data_dir), "--output-dir", str(out),
                                     "--report-to", "none", "--epochs", "1", "--max-steps-per-epoch", "1"]) == 0
    assert "tracking: none (train.report_to=none)" in capsys.readouterr().out
    assert (out / "results" / "hfm" / "metrics.json").is_file()
    assert not event_files(out) and not (out / "tracking").exists()


def test_an_unknown_tracker_is_one_line_listing_the_valid_ones(data_dir, tmp_path, capsys):
    status, line, _ = exit_with_one_line([*ARGS, "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
                                          "--report-to", "nosuchtracker"], capsys)
    assert status == 2 and "argument --report-to: invalid choice: 'nosuchtracker'" in line
    assert all(name in line for name in REPORT_TO)
    status, line, _ = exit_with_one_line([*ARGS, "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
                                          "--set", "train.report_to=nosuchtracker"], capsys)
    assert status == 2 and "train.report_to='nosuchtracker' is not one of: auto, none, tensorboard, wandb" in line
    with pytest.raises(ConfigError, match="train.report_to='TensorBoard' is not one of"):
        get_preset("hfm").override({"train.report_to": "TensorBoard"})


def test_a_tracker_that_is_not_installed_stops_before_training_naming_the_package(data_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    from clara.train import loop

    monkeypatch.setattr(loop, "get_available_trackers", lambda: [])  # as where nothing is installed
    status, line, printed = exit_with_one_line([*ARGS, "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
                                                "--report-to", "mlflow"], capsys)
    assert status == 2
    assert line.endswith("train.report_to=mlflow (--report-to): the mlflow package is not installed; "
                         "pip install mlflow, or report to none")
    assert "skipped" not in printed and not (tmp_path / "checkpoints").exists()  # no data read, nothing trained
    with pytest.raises(loop.TrackerError, match=r'the tensorboard package is not installed; pip install "clara\[track\]"'):
        loop.resolve_trackers("tensorboard")
    assert loop.resolve_trackers("auto") == (
        [], 'none (the default, as tensorboard is not installed: pip install "clara[track]")')


def test_the_default_is_tensorboard_where_installed_and_every_name_is_accelerates():
    from accelerate.utils import LoggerType

    from clara.train import loop

    assert get_preset("hfm").train.report_to == "auto"
    assert loop.resolve_trackers("auto") == (["tensorboard"], "tensorboard (the default, as it is installed)")
    assert loop.resolve_trackers("none") == ([], "none (train.report_to=none)")
    assert set(REPORT_TO) - {"auto", "none"} <= set(LoggerType.list())


@pytest.fixture(scope="module")
def last_checkpoint(tmp_path_factory):
    """A `last` checkpoint of a run in progress: the bundled HFM demo with a training state (1 of 10 epochs)."""
    folder = tmp_path_factory.mktemp("progress") / "clara_hfm_last"
    shutil.copytree(REPO / "checkpoints" / "demo_hfm", folder, ignore=shutil.ignore_patterns("results"))
    return folder


STATE = {"state_version": 1, "epochs_done": 1, "training_done": False}


@pytest.mark.parametrize("state, history, reason", [
    (STATE, "[" * 100_000, "history.json is not readable JSON (nested too deeply)"),
    (STATE, b"\xff\xfe", "history.json is not readable JSON (invalid start byte)"),
    (STATE, " " * (17 * 2**20), "history.json is 17 MiB, larger than a training run writes (16 MiB at most): not read"),
    (STATE, {"epoch": 1}, "history.json is not a list of epochs"),
    (STATE, [{"epoch": 2}], "history.json lists epochs [2] but the training state says 1 were done"),
    ({**STATE, "epochs_done": 10**12}, [{"epoch": 1}], "history.json lists epochs [1] but the training state says "
                                                       "1000000000000 were done"),
    ([], [{"epoch": 1}], "training_state.json does not hold a training state (epochs_done, training_done)"),
    ({**STATE, "training_done": "no"}, [{"epoch": 1}], "does not hold a training state (epochs_done, training_done)"),
], ids=["deep", "not UTF-8", "17 MiB", "object", "other epochs", "10**12 epochs", "state list", "state flag"])
def test_a_history_that_cannot_be_shown_gives_one_line(last_checkpoint, state, history, reason):
    (last_checkpoint / "training_state.json").write_text(json.dumps(state))
    (last_checkpoint / "history.json").write_bytes(
        history if isinstance(history, bytes) else
        (history if isinstance(history, str) else json.dumps(history)).encode())
    run = read_run_in_progress(last_checkpoint)
    assert run is not None and run.problem.endswith(reason) and "\n" not in run.problem, run.problem


def test_only_finite_numbers_of_a_history_are_kept(last_checkpoint):
    (last_checkpoint / "training_state.json").write_text(json.dumps(STATE))
    (last_checkpoint / "history.json").write_text(
        '[{"epoch": 1, "train_loss": NaN, "val_loss": 1e999, "steps": 1' + "0" * 400 + ', "val_accuracy": 0.5, '
        '"note": "x", "improved": true}]')
    run = read_run_in_progress(last_checkpoint)
    assert run.problem is None and run.history == [{"epoch": 1.0, "val_accuracy": 0.5}]
    assert (run.status, run.dataset, run.synthetic) == ("in progress · epoch 1 of 10", "hfm", True)
    (last_checkpoint / "training_state.json").unlink()
    assert read_run_in_progress(last_checkpoint) is None  # a checkpoint that is no run's `last`
