"""scripts/train.py --resume: a SIGKILLed training continues from its `last` checkpoint and ends
exactly where an uninterrupted run with the same seed ends; interrupted checkpoint writes leave
a loadable, consistent `last`; resuming other settings, nothing, or a finished run is refused.

Tolerance: none. On CPU with one thread every operation is deterministic, the resumed run
restores the weights, optimizer and scheduler bit for bit (safetensors, JSON floats written
with repr) and re-seeds every RNG per epoch from (seed, epoch), so its history, test metrics and
checkpoint weights must be *equal* to the uninterrupted run's (wall-clock times excepted).
The same on two processes (torchrun, gloo) is checked by a test that runs only with
CLARA_TEST_MULTIPROCESS_RESUME=1: its three 2-process runs take about two minutes on two cores.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

from clara.checkpoint import OLD_MARK, TMP_MARK, load_checkpoint, save_checkpoint
from clara.data.synthetic import write_synthetic
from clara.train.resume import (ResumeError, ResumeState, RunAlreadyFinished, pack_training_state,
                                read_resume_state)
from test_train import REPO, TRAIN_SCRIPT, free_port, load_train_script
from _eval_utils import build_model, one_thread, tiny_config  # noqa: F401

TIMING_KEYS = {"train_time_s", "epoch_time_s"}
EPOCHS = 3
# Tiny encoders, a 64-wide fusion, 3 optimizer steps of 2 accumulated micro-batches per epoch,
# with negative mixup on: every piece of state resuming must restore is exercised.
RUN_ARGS = ["--dataset", "mvsa_single", "--encoders", "tiny", "--epochs", str(EPOCHS), "--batch-size", "4",
            "--max-steps-per-epoch", "3", "--no-progress",
            "--set", "model.hidden_dim=64", "--set", "model.fusion_heads=4", "--set", "data.check_images=false",
            "--set", "train.mixed_precision=no", "--set", "train.grad_accum_steps=2",
            "--set", "train.negative_mixup_prob=0.5", "--set", "train.lr=1e-3"]
EPOCH_LINE = re.compile(r"^epoch (\d+): train loss", re.MULTILINE)


def last_dir(out: Path) -> Path:
    return out / "checkpoints" / "clara_mvsa_single_last"


def epochs_done(out: Path) -> int:
    try:
        return json.loads((last_dir(out) / "training_state.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):  # not written yet, or being swapped in
        return 0


def comparable(metrics: dict) -> dict:
    """metrics.json without wall-clock times and output paths."""
    history = [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in metrics["history"]]
    return {**{k: v for k, v in metrics.items() if k not in {"history", "checkpoint"}}, "history": history}


def start_training(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    """scripts/train.py (under `launcher`, e.g. torchrun) in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*(launcher or [sys.executable]), str(TRAIN_SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def signal_all(processes: list, signal_to_send: int) -> None:
    """Send `signal_to_send` to each of `processes` (psutil.Process) that still exists."""
    import psutil  # an Accelerate dependency
    for victim in processes:
        try:
            victim.send_signal(signal_to_send)
        except psutil.NoSuchProcess:
            pass


def kill_after_first_epoch(process: subprocess.Popen, out: Path, found: dict) -> None:
    """SIGKILL `process` and its descendants (torchrun's workers run in their own sessions) as soon
    as its `last` checkpoint holds epoch 1, i.e. inside epoch 2.

    The tree is first frozen with SIGSTOP, so the epoch count recorded is the one the kill leaves:
    a tiny epoch takes ~0.1 s here, and an earlier version that waited 0.3 s before killing once
    let the run finish all three epochs (CI, stop 19)."""
    import psutil  # an Accelerate dependency
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if epochs_done(out) >= 1:
            victims = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            signal_all(victims, signal.SIGSTOP)
            found["epochs_done_at_kill"] = epochs_done(out)
            signal_all(victims, signal.SIGKILL)
            return
        time.sleep(0.01)


def killed_run(process: subprocess.Popen, out: Path, found: dict) -> tuple[int, list[int]]:
    """Check the kill landed inside training: (epochs saved in `last`, epochs the killed run logged)."""
    killed_log, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, killed_log[-3000:]
    done = epochs_done(out)
    assert 1 <= done < EPOCHS and done == found["epochs_done_at_kill"]
    return done, [int(n) for n in EPOCH_LINE.findall(killed_log)]


def resumed_epochs_of(resumed_log: str, out: Path, done: int, logged_by_killed: list[int]) -> list[int]:
    """Check the resumed run trained the remaining epochs only, repeating at most the interrupted one."""
    assert f"resuming from {last_dir(out)}: {done} epoch(s) done" in resumed_log
    resumed_epochs = [int(n) for n in EPOCH_LINE.findall(resumed_log)]
    assert resumed_epochs == list(range(done + 1, EPOCHS + 1))
    # At most one epoch is trained twice: the one the kill interrupted (logged, maybe not yet saved).
    assert set(logged_by_killed) & set(resumed_epochs) <= {done + 1}
    return resumed_epochs


def assert_same_results(resumed_out: Path, reference_out: Path) -> None:
    """Equal test metrics, history (wall-clock times aside) and best/last weights, bit for bit."""
    metrics = {name: json.loads((out / "results" / "mvsa_single" / "metrics.json").read_text())
               for name, out in (("resumed", resumed_out), ("reference", reference_out))}
    assert [e["epoch"] for e in metrics["resumed"]["history"]] == list(range(1, EPOCHS + 1))
    assert comparable(metrics["resumed"]) == comparable(metrics["reference"])  # exact: see module docstring
    for kind in ("best", "last"):
        folders = [out / "checkpoints" / f"clara_mvsa_single_{kind}" for out in (resumed_out, reference_out)]
        resumed_weights, reference_weights = (load_file(folder / "model.safetensors") for folder in folders)
        assert resumed_weights.keys() == reference_weights.keys()
        assert all(torch.equal(resumed_weights[key], reference_weights[key]) for key in resumed_weights)
        assert load_checkpoint(folders[0]).labels == ["positive", "neutral", "negative"]


def test_a_killed_training_resumes_and_ends_exactly_like_an_uninterrupted_run(tmp_path, capsys):
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=48, seed=1, quirks=False)
    args = [*RUN_ARGS, "--data-dir", str(data_dir)]
    killed_out, reference_out = tmp_path / "killed", tmp_path / "reference"
    process = start_training([*args, "--output-dir", str(killed_out)])
    found: dict = {}
    killer = threading.Thread(target=kill_after_first_epoch, args=(process, killed_out, found))
    killer.start()
    script = load_train_script()
    # The uninterrupted run, in this process while the other one starts up.
    assert script.main([*args, "--output-dir", str(reference_out)]) == 0
    killer.join()
    done, logged_by_killed = killed_run(process, killed_out, found)
    capsys.readouterr()

    assert script.main([*args, "--output-dir", str(killed_out), "--resume"]) == 0
    resumed_epochs = resumed_epochs_of(capsys.readouterr().out, killed_out, done, logged_by_killed)
    with capsys.disabled():
        print(f"\nkilled after epochs {logged_by_killed} logged, {done} saved; resumed {resumed_epochs}")
    assert_same_results(killed_out, reference_out)

    # Resuming again: nothing to do.
    assert script.main([*args, "--output-dir", str(killed_out), "--resume"]) == 0
    assert "train.py: the run already finished: 3 epochs trained" in capsys.readouterr().out

    # Other settings are refused with the difference named, before any data is loaded.
    with pytest.raises(SystemExit) as refused:
        script.main([*args, "--output-dir", str(killed_out), "--resume", "--fusion", "token", "--batch-size", "8"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "model.fusion (checkpoint: 'pooled', now: 'token')" in err and "train.batch_size (checkpoint: 4, now: 8)" in err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CLARA_TEST_MULTIPROCESS_RESUME"),
                    reason="three 2-process runs (~2 min on 2 cores); set CLARA_TEST_MULTIPROCESS_RESUME=1")
def test_a_killed_two_process_training_resumes_exactly_on_two_processes(tmp_path):
    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=48, seed=1, quirks=False)
    args = [*RUN_ARGS, "--data-dir", str(data_dir)]
    killed_out, reference_out = tmp_path / "killed", tmp_path / "reference"

    def torchrun() -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]

    killed = start_training([*args, "--output-dir", str(killed_out)], torchrun())
    reference = start_training([*args, "--output-dir", str(reference_out)], torchrun())
    found: dict = {}
    kill_after_first_epoch(killed, killed_out, found)
    done, logged_by_killed = killed_run(killed, killed_out, found)
    reference_log, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_log[-3000:]
    resumed = start_training([*args, "--output-dir", str(killed_out), "--resume"], torchrun())
    resumed_log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, resumed_log[-3000:]
    assert "accelerate: 2 process(es), MULTI_CPU" in resumed_log
    resumed_epochs_of(resumed_log, killed_out, done, logged_by_killed)
    assert_same_results(killed_out, reference_out)


# ---------------------------------------------------------------------------------------------
# The training state in `last`, without training


@pytest.fixture(scope="module")
def stepped():
    """A tiny model, its tokenizer and config, and an AdamW + warmup scheduler after 3 steps."""
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for param in trainable:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
        scheduler.step()
    return model, tokenizer, cfg, optimizer, scheduler


def state_at(epoch: int, optimizer, scheduler, num_processes: int = 1) -> ResumeState:
    return ResumeState(epochs_done=epoch, best_value=0.5 + epoch / 100, best_epoch=epoch, stale_epochs=0,
                       training_done=False, num_processes=num_processes, accelerator_step=1,
                       history=[{"epoch": e + 1} for e in range(epoch)], optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict())


def save_last(folder: Path, epoch: int, stepped) -> Path:
    model, tokenizer, cfg, optimizer, scheduler = stepped
    state = state_at(epoch, optimizer, scheduler)
    return save_checkpoint(folder, model, tokenizer, cfg, metrics={"epoch": epoch}, history=state.history,
                           training_state=pack_training_state(state))


def test_training_state_round_trips_exactly_and_loads_into_a_fresh_optimizer(stepped, tmp_path):
    model, _, cfg, optimizer, scheduler = stepped
    last = save_last(tmp_path / "checkpoints" / "clara_mvsa_single_last", 2, stepped)
    state = read_resume_state(last, cfg, 1, tmp_path / "no_results.json")
    assert (state.epochs_done, state.best_value, state.best_epoch, state.accelerator_step) == (2, 0.52, 2, 1)
    original = optimizer.state_dict()
    assert state.optimizer["param_groups"] == original["param_groups"]
    assert state.optimizer["state"].keys() == original["state"].keys()
    for index, slots in original["state"].items():
        assert slots.keys() == state.optimizer["state"][index].keys()
        assert all(torch.equal(slots[name], state.optimizer["state"][index][name]) for name in slots)
    assert state.scheduler == scheduler.state_dict()
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    fresh.load_state_dict(state.optimizer)
    fresh_scheduler = get_linear_schedule_with_warmup(fresh, num_warmup_steps=2, num_training_steps=10)
    fresh_scheduler.load_state_dict(state.scheduler)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert sorted(p.name for p in last.iterdir()) == [
        "README.md", "config.json", "history.json", "metrics.json", "model.safetensors", "tokenizer",
        "training_state.json", "training_state.safetensors"]


def test_a_kill_at_any_point_of_a_save_leaves_the_previous_last_loadable_and_consistent(stepped, tmp_path):
    """The states a SIGKILL can leave while `last` is replaced (clara.checkpoint.folder._swap_in), made on
    disk as the kill leaves them: a half-written temporary folder beside `last`, and (where the
    OS has no atomic exchange) `last` renamed aside before the new folder was renamed in."""
    cfg = stepped[2]
    last = save_last(tmp_path / "checkpoints" / "clara_mvsa_single_last", 1, stepped)
    results = tmp_path / "results.json"
    # 1. killed while writing the new folder: a partial temporary folder sits beside `last`
    partial = last.parent / f".{last.name}{TMP_MARK}0123456789ab"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    state = read_resume_state(last, cfg, 1, results)
    assert state.epochs_done == 1 and len(state.history) == 1
    assert load_checkpoint(last).labels == cfg.labels
    # 2. killed between rename-aside and rename-in: only the aside copy of epoch 1 exists
    aside = last.parent / f".{last.name}{OLD_MARK}0123456789ab"
    os.replace(last, aside)
    with pytest.warns(UserWarning, match="interrupted save left the previous checkpoint"):
        state = read_resume_state(last, cfg, 1, results)
    assert state.epochs_done == 1
    # the next save puts the previous checkpoint back first, then replaces it
    save_last(last, 2, stepped)
    assert read_resume_state(last, cfg, 1, results).epochs_done == 2
    assert not aside.exists()


def test_a_real_kill_during_repeated_saves_leaves_a_consistent_last(tmp_path):
    """A subprocess saves `last` for epoch 1, 2, 3, ... as fast as it can; SIGKILL it mid-stream:
    `last` loads, and its weights, metrics, history and training state are all of one epoch."""
    program = f"""
import sys, torch
sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
from _eval_utils import build_model, tiny_config
from clara.checkpoint import save_checkpoint
from clara.train.resume import ResumeState, pack_training_state
cfg = tiny_config()
model, tokenizer = build_model(cfg)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
head = next(p for p in model.parameters() if p.requires_grad)
for epoch in range(1, 10_000):
    with torch.no_grad():
        head.fill_(epoch)
    history = [{{"epoch": e}} for e in range(1, epoch + 1)]
    state = ResumeState(epoch, 0.5, epoch, 0, False, 1, 0, history, opt.state_dict(), {{"last_epoch": epoch}})
    save_checkpoint({str(tmp_path / 'clara_mvsa_single_last')!r}, model, tokenizer, cfg, metrics={{"epoch": epoch}},
                    history=history, training_state=pack_training_state(state))
    print(epoch, flush=True)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if int(line) >= 3:  # several saves done, more under way
            break
    time.sleep(0.37)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    last = tmp_path / "clara_mvsa_single_last"
    folder = last if last.exists() else next(tmp_path.glob(f".{last.name}{OLD_MARK}*"))
    state = read_resume_state(last, tiny_config(), 1, tmp_path / "results.json") if last.exists() else None
    loaded = load_checkpoint(folder)
    epoch = json.loads((folder / "metrics.json").read_text())["epoch"]
    head = next(p for p in loaded.model.parameters() if p.requires_grad)
    assert epoch >= 3 and torch.all(head == epoch)
    assert len(json.loads((folder / "history.json").read_text())) == epoch
    assert json.loads((folder / "training_state.json").read_text())["scheduler"] == {"last_epoch": epoch}
    if state is not None:
        assert state.epochs_done == epoch


def test_an_epochs_sample_order_depends_only_on_the_seed_and_the_epoch():
    from clara.train.resume import seed_epoch
    from clara.train.samplers import LengthGroupedSampler, NegativeMixup, build_sampler

    labels = [0, 1, 2, 2, 1, 0, 0, 1, 2, 1] * 4
    lengths = [3 + (7 * i) % 11 for i in range(len(labels))]

    def sampler_and_mixup():
        base = build_sampler("weighted", labels, 3, seed=42)
        return LengthGroupedSampler(base, lengths, batch_size=4, seed=42, mega_batch_factor=2), \
            NegativeMixup(2, 0.5, 0.4, seed=42)

    def epoch_draws(sampler, mixup, epoch):
        seed_epoch(42, epoch, 0, sampler, mixup)
        return list(sampler), mixup.rng.random(3).tolist(), torch.rand(3).tolist()

    sampler, mixup = sampler_and_mixup()
    uninterrupted = [epoch_draws(sampler, mixup, epoch) for epoch in (1, 2, 3)]
    resumed_sampler, resumed_mixup = sampler_and_mixup()  # a fresh process that starts at epoch 3
    assert epoch_draws(resumed_sampler, resumed_mixup, 3) == uninterrupted[2]
    assert uninterrupted[1] != uninterrupted[2]  # and epochs still differ


# ---------------------------------------------------------------------------------------------
# Refusals


def test_resume_refuses_a_missing_checkpoint_other_settings_and_another_process_count(stepped, tmp_path):
    cfg = stepped[2]
    last = tmp_path / "checkpoints" / "clara_mvsa_single_last"
    with pytest.raises(ResumeError, match=r"--resume: no checkpoint to resume from at .*clara_mvsa_single_last"):
        read_resume_state(last, cfg, 1, tmp_path / "results.json")
    save_last(last, 2, stepped)
    other = cfg.override({"model.fusion": "pooled", "data.dataset": "hfm", "model.hidden_dim": "16"})
    with pytest.raises(ResumeError) as refused:
        read_resume_state(last, other, 1, tmp_path / "results.json")
    message = str(refused.value)
    for difference in ("data.dataset (checkpoint: 'mvsa_single', now: 'hfm')",
                       "model.fusion (checkpoint: 'token', now: 'pooled')",
                       "model.hidden_dim (checkpoint: 32, now: 16)"):
        assert difference in message
    # fields that change nothing trained may differ
    assert read_resume_state(last, cfg.override({"train.num_workers": "2", "train.calibrate": "false"}), 1,
                             tmp_path / "results.json").epochs_done == 2
    with pytest.raises(ResumeError, match=r"was trained on 1 process\(es\), this run has 2"):
        read_resume_state(last, cfg, 2, tmp_path / "results.json")


def test_resume_refuses_a_checkpoint_without_training_state(stepped, tmp_path):
    model, tokenizer, cfg, _, _ = stepped
    best = save_checkpoint(tmp_path / "clara_mvsa_single_best", model, tokenizer, cfg, history=[])
    with pytest.raises(ResumeError, match="no training_state.json in .* it holds no training state"):
        read_resume_state(best, cfg, 1, tmp_path / "results.json")


def test_resume_after_training_ended_but_before_the_test_results_only_evaluates(stepped, tmp_path):
    model, tokenizer, cfg, optimizer, scheduler = stepped
    last = tmp_path / "clara_mvsa_single_last"
    state = state_at(2, optimizer, scheduler)
    state.training_done = True
    save_checkpoint(last, model, tokenizer, cfg, history=state.history, training_state=pack_training_state(state))
    results = tmp_path / "metrics.json"
    assert read_resume_state(last, cfg, 1, results).training_done  # no results yet: evaluation still to do
    results.write_text(json.dumps({"best_epoch": 1, "history": [{}, {}]}))  # an earlier run's results
    assert read_resume_state(last, cfg, 1, results).training_done
    results.write_text(json.dumps({"best_epoch": 2, "history": [{}, {}]}))
    with pytest.raises(RunAlreadyFinished, match="the run already finished: 2 epochs trained"):
        read_resume_state(last, cfg, 1, results)


# ---------------------------------------------------------------------------------------------
# A loss that becomes NaN after some good epochs


def test_a_loss_that_diverges_after_good_epochs_stops_and_keeps_their_checkpoints(tmp_path):
    from clara.config import get_preset
    from clara.train.loop import TrainingError, train

    data_dir = tmp_path / "data"
    write_synthetic("mvsa_single", data_dir, n=48, seed=1, quirks=False)
    # One step per epoch and warmup over the whole run: step 1 has lr 0 (epoch 1 is good), step 2
    # lr 1e30 / 3 sends the weights to ~1e29, and a later loss is no longer finite.
    cfg = get_preset("mvsa_single").override({
        "model.encoders": "tiny", "model.hidden_dim": "64", "model.fusion_heads": "4", "data.check_images": "false",
        "data.data_dir": str(data_dir), "train.output_dir": str(tmp_path / "out"), "train.epochs": "4",
        "train.lr": "1e30", "train.warmup_ratio": "1", "train.batch_size": "4", "train.max_steps_per_epoch": "1"})
    with pytest.raises(TrainingError, match=r"training stopped: the (loss|gradient norm) became (nan|inf) at epoch "
                                            r"(\d), step 1; the checkpoints of the last good epoch are kept") as stopped:
        train(cfg, progress=False)
    bad_epoch = int(re.search(r"at epoch (\d)", str(stopped.value)).group(1))
    assert bad_epoch >= 2
    last = tmp_path / "out" / "checkpoints" / "clara_mvsa_single_last"
    assert load_checkpoint(last).labels == cfg.labels
    assert load_checkpoint(last.with_name("clara_mvsa_single_best")).labels == cfg.labels
    assert read_resume_state(last, cfg, 1, tmp_path / "none.json").epochs_done == bad_epoch - 1


def test_a_best_checkpoint_saved_by_the_interrupted_epoch_is_reported(stepped, tmp_path):
    from clara.train.resume import interrupted_best_note

    model, tokenizer, cfg, _, _ = stepped
    last = save_last(tmp_path / "clara_mvsa_single_last", 2, stepped)
    state = read_resume_state(last, cfg, 1, tmp_path / "results.json")
    best = tmp_path / "clara_mvsa_single_best"
    save_checkpoint(best, model, tokenizer, cfg, metrics={"epoch": 3, "val": {}})  # killed before `last` of epoch 3
    assert interrupted_best_note(best, state) == (
        f"note: {best} holds epoch 3, saved just before the kill, before the last checkpoint; epoch 3 is trained "
        "again and rewrites it if it improves on epoch 2")
    save_checkpoint(best, model, tokenizer, cfg, metrics={"epoch": 2, "val": {}})
    assert interrupted_best_note(best, state) is None
