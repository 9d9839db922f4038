"""Calibration, ablation table and training-loop switches against the authors' own notebook code
(run by tests/_authors.py from ../shared/reference/clara-notebooks, not re-created; docs/FIDELITY.md).

- calibration: the chosen parameters and the test predictions of every variant equal the
  notebook functions' (MVSA-Single / HFM cell 18, MVSA-Multiple cells 22-23) on the same logits,
  and so do the predictions under MVSA-Multiple's fixed negative bias (cell 18);
- ablations: each row of our `ablations_notebook` table predicts what the notebook's ablation
  code (MVSA-Single cell 23, gated feedback; MVSA-Multiple cell 24; HFM cell 24) predicts on the
  same model weights and inputs;
- epoch 3 of MVSA-Multiple: `unfreeze_encoders` makes trainable exactly what the notebook's
  `set_trainable_except_lora(..., True)` does; a run resumed after the switch ends exactly as an
  uninterrupted one (that part needs no notebook).
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import _authors as authors
from _authors import runs_authors_code
from _eval_utils import one_thread, tiny_config  # noqa: F401
from clara.checkpoint import load_checkpoint, save_checkpoint
from clara.config import get_preset
from clara.data.synthetic import write_synthetic
from clara.datasets import REGISTRY
from clara.evaluate import calibration
from clara.evaluate.scoring import notebook_ablation_logits
from test_fidelity_model import build_pair, encoder_folder, tokenizer  # noqa: F401 (fixtures)

MVSA = ["positive", "neutral", "negative"]
HFM = ["not_sarcastic", "sarcastic"]


# --------------------------------------------------------------------------- stand-ins for the notebook's loop

class FixedLogits:
    """Stands in for a notebook model in its evaluation functions: returns the given logits (and,
    for MVSA-Single / HFM, their softmax as `probs`) whatever the batch, as a fresh tensor per
    call, as a forward pass gives (the notebooks edit `out['logits'].cpu().numpy()` in place)."""

    def __init__(self, logits: np.ndarray, dataset: str):
        self.logits = torch.tensor(logits)
        self.dataset = dataset

    def eval(self) -> "FixedLogits":
        return self

    def __call__(self, *args, **kwargs):
        logits = self.logits.clone()
        if self.dataset == "mvsa_multiple":
            return logits, logits.clone(), logits.clone()
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}


def one_batch(labels: np.ndarray) -> list[dict[str, torch.Tensor]]:
    n = len(labels)
    return [{"pixel_values": torch.zeros(n, 3, 2, 2), "input_ids": torch.zeros(n, 2, dtype=torch.long),
             "attention_mask": torch.ones(n, 2, dtype=torch.long), "labels": torch.as_tensor(labels)}]


def catch_predictions(namespace: dict) -> list[np.ndarray]:
    """Make the notebook's `accuracy_score(Y, P)` calls record P (its evaluation functions return scores only)."""
    caught: list[np.ndarray] = []
    scorer = namespace["accuracy_score"]

    def recording(y_true, y_pred, *args, **kwargs):
        caught.append(np.asarray(y_pred))
        return scorer(y_true, y_pred, *args, **kwargs)

    namespace["accuracy_score"] = recording
    return caught


def calibration_logits(n_classes: int, seed: int, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits whose target column (index 1) sits too low, with near ties: a search with an optimum."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    logits = 1.5 * np.eye(n_classes)[labels] + rng.normal(0.0, 0.9, size=(n, n_classes))
    logits[:, 1] -= 0.7
    return logits.astype(np.float32), labels


# --------------------------------------------------------------------------- calibration

def notebook_calibration(dataset: str, val: tuple, test: tuple) -> dict[str, tuple[dict, np.ndarray]]:
    """{variant: (params, test predictions)} as the notebook's own functions compute them."""
    book = authors.notebook(dataset)
    namespace = {**book.namespace(), "device": torch.device("cpu")}
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    if dataset == "mvsa_multiple":
        book.run(22, ["apply_bias_temp_neutral", "tune_bias_temp_neutral", "apply_affine_neutral",
                      "tune_affine_neutral"], namespace)
        _, (bias, temperature) = namespace["tune_bias_temp_neutral"](val_logits, val_labels)
        _, (scale, shift) = namespace["tune_affine_neutral"](val_logits, val_labels)
        namespace.update(logits_test=test_logits, y_test_np=test_labels, b_opt=bias, tau_opt=temperature,
                         w_opt=scale, b_aff=shift)
        book.run(23, ["probs_raw", "pred_raw", "variant_preds_and_confidences"], namespace)
        predict = namespace["variant_preds_and_confidences"]
        return {"raw": ({}, predict("Raw")[0]),
                "bias_temperature": ({"bias": bias, "temperature": temperature}, predict("Bias+Temp")[0]),
                "top2_flip": ({"margin": 0.03}, predict("Top-2 Flip")[0]),
                "affine": ({"scale": scale, "shift": shift}, predict("Affine Neutral")[0])}
    names = ["gather_logits_labels", "tune_bias_temp_neutral", "evaluate_with_bias_temp", "evaluate_with_top2_flip",
             "tune_affine_neutral", "evaluate_with_affine_neutral"]
    book.run(18, names, namespace)
    caught = catch_predictions(namespace)
    device = namespace["device"]
    val_model, test_model = FixedLogits(val_logits, dataset), FixedLogits(test_logits, dataset)
    bias, temperature = namespace["tune_bias_temp_neutral"](val_model, one_batch(val_labels), device)
    scale, shift = namespace["tune_affine_neutral"](val_model, one_batch(val_labels), device)
    loader = one_batch(test_labels)
    namespace["evaluate_with_bias_temp"](test_model, loader, device, bias, temperature)
    namespace["evaluate_with_top2_flip"](test_model, loader, device, eps=0.03)
    namespace["evaluate_with_affine_neutral"](test_model, loader, device, scale, shift)
    flipped_etc = dict(zip(("bias_temperature", "top2_flip", "affine"), caught))
    return {"raw": ({}, test_logits.argmax(1)),
            "bias_temperature": ({"bias": bias, "temperature": temperature}, flipped_etc["bias_temperature"]),
            "top2_flip": ({"margin": 0.03}, flipped_etc["top2_flip"]),
            "affine": ({"scale": scale, "shift": shift}, flipped_etc["affine"])}


@runs_authors_code
@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_calibration_equals_the_notebook_functions_on_the_same_logits(dataset):
    labels = HFM if dataset == "hfm" else MVSA
    val = calibration_logits(len(labels), seed=10)
    test = calibration_logits(len(labels), seed=11)
    expected = notebook_calibration(dataset, val, test)
    report = calibration.calibration_report(*val, *test, labels, dataset=dataset)
    target = calibration.target_class(labels, dataset)
    for variant, (params, predictions) in expected.items():
        ours = {k: v for k, v in report[variant]["params"].items() if k != "target"}
        assert ours == params, variant
        assert calibration.variant_predictions(variant, test[0], target, ours).tolist() == predictions.tolist(), variant
        assert report[variant]["accuracy"] == pytest.approx(float(np.mean(predictions == test[1])), abs=1e-12)
    # The searches found something: not every variant is raw.
    assert any(expected[v][1].tolist() != expected["raw"][1].tolist() for v in ("bias_temperature", "affine"))


@runs_authors_code
def test_mvsa_multiple_posthoc_negative_bias_equals_the_notebooks():
    namespace = authors.training_namespace("mvsa_multiple", [0, 1, 2])
    assert namespace["CONFIG"]["negative_bias_posthoc"] == 0.6
    assert get_preset("mvsa_multiple").train.posthoc_logit_bias == {"negative": 0.6}
    authors.notebook("mvsa_multiple").run(18, ["evaluate_posthoc_bias"], namespace)
    logits, labels = calibration_logits(3, seed=12)
    *_, predictions, _ = namespace["evaluate_posthoc_bias"](FixedLogits(logits, "mvsa_multiple"), one_batch(labels),
                                                            torch.device("cpu"), neg_bias=0.6)
    ours = calibration.apply_logit_bias(logits, MVSA, {"negative": 0.6}).argmax(1)
    assert ours.tolist() == predictions
    assert ours.tolist() != logits.argmax(1).tolist()


# --------------------------------------------------------------------------- the ablation table

# Where each notebook's ablation table is, and our row names for its variant keys.
ABLATION_CELL = {"mvsa_single": 23, "mvsa_multiple": 24, "hfm": 24}
NOTEBOOK_ROWS = {"full": "full", "no_verification": "w/o_verification", "no_feedback": "w/o_feedback",
                 "no_coattention": "w/o_coattn", "text_only": "text_only", "image_only": "vision_only"}
MULTIPLE_PREDICTORS = {"full": "_predict_full", "no_verification": "_predict_wo_verification",
                       "no_feedback": "_predict_wo_feedback", "no_coattention": "_predict_wo_coattn",
                       "text_only": "_predict_text_only", "image_only": "_predict_vision_only"}


def straddle_the_gate(theirs, ours, batch: dict, gate: float) -> None:
    """Make the verification head a perturbed copy of the prediction head, in both models alike,
    so that some posts' disagreement sum |p_v - p_p| falls below `gate` and some above."""
    with torch.no_grad():
        for model in (theirs.model, ours):
            model.veri.load_state_dict(model.pred.state_dict())
        noise = torch.randn(ours.veri.net[4].weight.shape, generator=torch.Generator().manual_seed(3))
        for scale in (1.0, 0.5, 0.25, 0.12, 0.06, 0.03):
            for model in (theirs.model, ours):
                model.veri.net[4].weight.copy_(model.pred.net[4].weight + scale * noise)
            out = ours(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
            disagreement = (out.verify_logits.softmax(-1) - out.pred_logits.softmax(-1)).abs().sum(-1)
            if (disagreement > gate).any() and (disagreement <= gate).any():
                return
    raise AssertionError("no perturbation puts the heads' disagreement on both sides of the gate")


@pytest.fixture(scope="module")
def ablation_batch(tokenizer):  # noqa: F811 (the imported fixture)
    texts = [f"{a} {b}" for a in ("i love", "what an awful", "just a", "the best", "so sad")
             for b in ("day", "morning at the park", "photo")]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(5)
    return {"pixel_values": torch.randn(len(texts), 3, 64, 64, generator=generator),
            "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "labels": torch.arange(len(texts)) % 3}


@runs_authors_code
@pytest.mark.parametrize("dataset", authors.DATASETS)
def test_the_ablation_table_predicts_what_the_notebooks_ablation_code_predicts(dataset, encoder_folder, tokenizer,
                                                                               ablation_batch):  # noqa: F811
    theirs, ours = build_pair(dataset, encoder_folder, tokenizer)
    method = REGISTRY[dataset].ablation_method
    batch = ablation_batch
    if method.feedback_gate is not None:
        straddle_the_gate(theirs, ours, batch, method.feedback_gate)
    with torch.no_grad():
        vision, text = ours.encode(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        rows = {name: logits.argmax(-1).tolist() for name, logits in notebook_ablation_logits(
            ours, vision, text, batch["attention_mask"], method).items()}

    book, device = authors.notebook(dataset), torch.device("cpu")
    namespace = theirs.namespace
    if dataset == "mvsa_multiple":
        book.run(24, ["_forward_feats", "_pred_head_logits", "_final_logits_with_feedback",
                      *MULTIPLE_PREDICTORS.values()], namespace)
        expected = {name: namespace[function](theirs.model, [batch], device).tolist()
                    for name, function in MULTIPLE_PREDICTORS.items()}
    else:
        names = (["_forward_full_blocks", "_coattn", "_pred", "_veri", "_feed"] if dataset == "mvsa_single"
                 else ["_forward_feats", "_pred_head_logits", "_final_logits_with_feedback"])
        book.run(ABLATION_CELL[dataset], [*names, "evaluate_variant"], namespace)
        caught = catch_predictions(namespace)
        expected = {}
        for name, key in NOTEBOOK_ROWS.items():
            namespace["evaluate_variant"](theirs.model, [batch], device, variant=key)
            expected[name] = caught[-1].tolist()
    assert rows == expected
    if dataset == "mvsa_single":
        with torch.no_grad():
            full = notebook_ablation_logits(ours, vision, text, batch["attention_mask"], method)["full"]
            ungated = ours.decide(vision, text, batch["attention_mask"]).logits
        assert not torch.equal(full, ungated)  # the gate closed for some posts
        # "Full + Bias+Temp" (the table's last row) with the notebook's globals b_opt / tau_opt.
        namespace.update(b_opt=0.3, tau_opt=0.9)
        namespace["evaluate_variant"](theirs.model, [batch], device, variant="full_bias_temp")
        ours_bt = calibration.apply_bias_temperature(full.numpy(), 1, 0.9, 0.3).argmax(1)
        assert ours_bt.tolist() == caught[-1].tolist()


# --------------------------------------------------------------------------- MVSA-Multiple's epoch 3

def epoch3_switch(book: authors.Notebook) -> list[ast.stmt]:
    """The body of `if epoch == 3:` in the notebook's Trainer.train (cell 14)."""
    train = book.method("Trainer", "train", authors.TRAINER_CELL["mvsa_multiple"])
    [switch] = [node for node in ast.walk(train) if isinstance(node, ast.If)
                and isinstance(node.test, ast.Compare) and ast.unparse(node.test) == "epoch == 3"]
    return switch.body


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


@runs_authors_code
def test_epoch_3_trains_what_set_trainable_except_lora_unfreezes():
    from clara.model import create_model

    book = authors.notebook("mvsa_multiple")
    namespace = book.namespace()
    book.exec([node for node in book.statements(12, ["set_trainable_except_lora"])
               if isinstance(node, ast.FunctionDef)], namespace)  # the function, not cell 12's calls of it
    cfg = tiny_config("mvsa_multiple", **{"model.fusion": "pooled"})
    torch.manual_seed(0)
    ours, _ = create_model(cfg, tokenizer_texts=["a photo", "so sad"])
    theirs = copy.deepcopy(ours)
    # Before: the notebook's cell 12 freeze (LoRA trainable only) leaves what our encoders start with.
    namespace["set_trainable_except_lora"](theirs.text, False)
    namespace["set_trainable_except_lora"](theirs.vision.backbone, False)
    assert trainable_names(theirs) == trainable_names(ours)
    # Epoch 3: the notebook's own statements, on the same modules (its vision_core is our CLIPVisionModel).
    namespace["self"] = types.SimpleNamespace(model=types.SimpleNamespace(text=theirs.text,
                                                                          vision_core=theirs.vision.backbone))
    book.exec(epoch3_switch(book), namespace)
    unfrozen = ours.unfreeze_encoders()
    assert trainable_names(ours) == trainable_names(theirs) == {name for name, _ in ours.named_parameters()}
    assert unfrozen > 0 and ours.unfreeze_encoders() == 0  # idempotent

    # The authors' whole model after the switch trains as many weights as ours, and its Trainer's
    # AdamW holds every parameter from the start, frozen or not.
    authors_model = authors.build_authors_model("mvsa_multiple", authors.tiny_encoder_configs(100, 0),
                                                {"hidden_dim": 32, "coattn_heads": 4})
    frozen_at_start = sum(p.numel() for p in authors_model.model.parameters() if not p.requires_grad)
    namespace["self"] = types.SimpleNamespace(model=authors_model.model)
    book.exec(epoch3_switch(book), namespace)
    assert frozen_at_start > 0 and all(p.requires_grad for p in authors_model.model.parameters())
    book.run(14, ["Trainer"], namespace)
    trainer = namespace["Trainer"](model=authors_model.model, train_loader=[None], val_loader=[None],
                                   config=authors_model.config, device=torch.device("cpu"), criterion=None,
                                   amp_dtype=torch.float32, save_path="unused.pt")
    assert len(trainer.optimizer.param_groups[0]["params"]) == len(list(authors_model.model.parameters()))


# --------------------------------------------------------------------------- resuming after the switch

class Interrupted(Exception):
    """Raised in place of a kill, right after `last` holds the given epoch."""


def interrupt_after(epoch: int, monkeypatch) -> None:
    import clara.train.loop as loop

    save = loop.save_checkpoint

    def saving_then_stopping(path, *args, **kwargs):
        folder = save(path, *args, **kwargs)
        state = kwargs.get("training_state")
        if state is not None and state[1]["epochs_done"] == epoch:
            raise Interrupted(epoch)
        return folder

    monkeypatch.setattr(loop, "save_checkpoint", saving_then_stopping)


def test_a_run_resumed_after_the_full_finetuning_switch_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """Tiny encoders, the MVSA-Multiple preset with the switch at epoch 2 of 3: interrupted after
    epoch 2 (encoders already trained), resumed, it ends with the reference run's weights and metrics."""
    from clara.train import train

    data_dir = tmp_path / "data"
    write_synthetic("mvsa_multiple", data_dir, n=48, seed=1, quirks=False)

    def config(out: Path):
        return tiny_config("mvsa_multiple", **{
            "data.data_dir": str(data_dir), "train.output_dir": str(out), "train.epochs": "3",
            "train.full_finetune_from_epoch": "2", "train.batch_size": "4", "train.max_steps_per_epoch": "2",
            "train.mixed_precision": "no", "data.check_images": "false", "train.lr": "1e-3"})

    reference = train(config(tmp_path / "reference"), progress=False)
    assert "epoch 2: every encoder weight trainable from now on" in capsys.readouterr().out

    with monkeypatch.context() as patch:
        interrupt_after(2, patch)
        with pytest.raises(Interrupted):
            train(config(tmp_path / "resumed"), progress=False)
    last = tmp_path / "resumed" / "checkpoints" / "clara_mvsa_multiple_last"
    info = json.loads((last / "config.json").read_text())
    assert info["params"]["trainable"] == info["params"]["total"]  # saved after the switch
    state = json.loads((last / "training_state.json").read_text())
    n_params = len(list(load_checkpoint(last).model.parameters()))
    assert len(state["optimizer"]["param_groups"][0]["params"]) == n_params  # AdamW over every parameter
    capsys.readouterr()

    resumed = train(config(tmp_path / "resumed"), progress=False, resume=True)
    assert "epoch 3: every encoder weight trainable from now on" in capsys.readouterr().out
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    timing = {"train_time_s", "epoch_time_s"}
    assert ([{k: v for k, v in e.items() if k not in timing} for e in resumed.history]
            == [{k: v for k, v in e.items() if k not in timing} for e in reference.history])
    for key in ("accuracy", "f1_weighted", "ablations", "ablations_notebook", "calibration", "posthoc_bias"):
        assert resumed.metrics[key] == reference.metrics[key], key
    for kind in ("best", "last"):
        got, want = (load_file(run / "checkpoints" / f"clara_mvsa_multiple_{kind}" / "model.safetensors")
                     for run in (tmp_path / "resumed", tmp_path / "reference"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), kind


RANK_HASHES = """
import hashlib, sys
import clara.train.loop as loop
from clara.config import get_preset

train_epoch = loop._train_epoch


def hashing(accelerator, model, *args, **kwargs):  # after each epoch: a hash of this process's weights
    result = train_epoch(accelerator, model, *args, **kwargs)
    unwrapped = accelerator.unwrap_model(model)
    digest = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in unwrapped.parameters())).hexdigest()
    trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    print(f"rank {accelerator.process_index} trainable {trainable} weights {digest}", flush=True)
    return result


loop._train_epoch = hashing
loop.train(get_preset("mvsa_multiple").override(dict(arg.split("=", 1) for arg in sys.argv[1:])), progress=False)
"""


@pytest.mark.slow
def test_two_processes_keep_the_encoders_in_sync_after_the_switch(tmp_path):
    """DDP all-reduces only what was trainable when it wrapped the model: the loop wraps it
    unfrozen, so the encoder weights that start training at the switch stay equal on every process."""
    from test_train import REPO, free_port

    data_dir = tmp_path / "data"
    write_synthetic("mvsa_multiple", data_dir, n=48, seed=1, quirks=False)
    (tmp_path / "run.py").write_text(RANK_HASHES)
    settings = {"model.encoders": "tiny", "model.hidden_dim": "32", "model.fusion_heads": "4",
                "data.data_dir": str(data_dir), "train.output_dir": str(tmp_path / "out"), "train.epochs": "2",
                "train.full_finetune_from_epoch": "2", "train.batch_size": "4", "train.max_steps_per_epoch": "2",
                "train.mixed_precision": "no", "data.check_images": "false", "train.lr": "1e-3"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), str(tmp_path / "run.py"),
                           *(f"{k}={v}" for k, v in settings.items())],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    # Two readings per epoch (one per process; an epoch ends with a collective, so they come in epoch order).
    readings = [(int(trainable), digest) for _, trainable, digest in
                re.findall(r"rank (\d) trainable (\d+) weights ([0-9a-f]{40})", done.stdout)]
    assert len(readings) == 4, done.stdout[-3000:]
    (lora_only, _), = set(readings[:2])  # both processes agree ...
    (everything, _), = set(readings[2:])  # ... also once the encoders train
    assert everything > lora_only


def test_a_checkpoint_saved_after_the_switch_over_published_encoders_loads(tmp_path):
    from clara.model import build_tokenizer, create_model

    tokenizer = build_tokenizer(get_preset("mvsa_single").override({"model.encoders": "tiny"}).model, ["a b", "so sad"])
    folder = authors.save_encoders(tmp_path / "encoders", authors.tiny_encoder_configs(len(tokenizer),
                                                                                      tokenizer.pad_token_id), tokenizer)
    cfg = get_preset("mvsa_multiple").override({"model.vision_encoder": str(folder / "vision"), "model.hidden_dim": "32",
                                                "model.text_encoder": str(folder / "text"), "model.fusion_heads": "4"})
    model, tokenizer = create_model(cfg, tokenizer=tokenizer)
    model.unfreeze_encoders()
    with torch.no_grad():
        model.text.base_model.model.embeddings.word_embeddings.weight.add_(1.0)  # fine-tuned, unlike the hub's
    saved = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, cfg)
    loaded = load_checkpoint(saved).model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
