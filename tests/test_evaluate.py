"""Metrics on hand-made examples, evaluate_model with its ablations, the result files, and
recomputing a checkpoint's metrics with evaluate_checkpoint / scripts/evaluate.py."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clara.checkpoint import save_checkpoint
from clara.config import ABLATIONS
from clara.data import CLARADataset, Collator, ImageTransform, load_dataset
from clara.data.synthetic import write_synthetic
from clara.datasets import REGISTRY
from clara.evaluate import (EvaluationError, calibration_report, compute_metrics, evaluate_checkpoint, evaluate_model,
                            prediction_rows, write_results)
from clara.evaluate.scoring import posthoc_metrics
from clara.precision import autocast as precision_autocast
from clara.precision import resolve_mixed_precision
from _eval_utils import build_model, one_thread, tiny_config  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
MVSA = ["positive", "neutral", "negative"]
HFM = ["not_sarcastic", "sarcastic"]
COMPARED = ("accuracy", "f1_weighted", "f1_macro", "per_class", "confusion_matrix", "labels", "n", "ablations",
            "ablations_notebook", "calibration", "reliability")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ compute_metrics

def test_metrics_of_a_hand_made_three_class_example():
    y_true = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 2, 2, 2, 0, 2]
    metrics = compute_metrics(y_true, y_pred, MVSA)
    assert metrics["accuracy"] == pytest.approx(0.7)
    # per class F1: 2/3, 2/3, 3/4 -> macro 25/36, weighted (3*2/3 + 3*2/3 + 4*3/4) / 10 = 0.7
    assert metrics["f1_macro"] == pytest.approx(25 / 36)
    assert metrics["f1_weighted"] == pytest.approx(0.7)
    assert metrics["per_class"]["positive"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert metrics["per_class"]["negative"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert metrics["labels"] == MVSA and metrics["n"] == 10
    assert "f1_sarcastic" not in metrics


def test_hfm_metrics_include_the_sarcastic_class_f1():
    metrics = compute_metrics([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], HFM)
    assert metrics["f1_sarcastic"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 1
    assert metrics["per_class"]["not_sarcastic"]["f1"] == pytest.approx(0.5)
    assert metrics["f1_macro"] == pytest.approx(7 / 12)


def test_a_class_missing_from_the_split_is_still_reported():
    metrics = compute_metrics([0, 1, 0], [0, 1, 1], MVSA)
    assert metrics["per_class"]["negative"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"class indices \[3\] are outside the 3 labels"):
        compute_metrics([0, 3], [0, 0], MVSA)
    with pytest.raises(ValueError, match="empty split"):
        compute_metrics([], [], MVSA)


# ------------------------------------------------------------------ a synthetic folder and an untrained model

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data_dir = root / "data"
    write_synthetic("mvsa_single", data_dir, n=60, seed=0, quirks=False)
    cfg = tiny_config(**{"data.data_dir": str(data_dir), "train.eval_batch_size": "8"})
    data = load_dataset("mvsa_single", data_dir, check_images=cfg.data.check_images)
    model, tokenizer = build_model(cfg, texts=[s.text for s in data.splits["train"]])
    folder = save_checkpoint(root / "checkpoints" / "clara_mvsa_single_best", model, tokenizer, cfg)
    return {"root": root, "data_dir": data_dir, "cfg": cfg, "data": data, "model": model, "tokenizer": tokenizer,
            "checkpoint": folder}


def loader_for(setup, split: str) -> DataLoader:
    stats = setup["model"].image_stats
    return DataLoader(CLARADataset(setup["data"].splits[split], ImageTransform(stats.size, stats.mean, stats.std)),
                      batch_size=8, collate_fn=Collator(setup["tokenizer"]))


def test_evaluate_model_scores_the_split_and_each_ablation(setup):
    model = setup["model"]
    model.train()  # evaluate_model switches to eval and restores the previous mode
    result = evaluate_model(model, loader_for(setup, "test"), MVSA)
    assert model.training
    model.eval()
    n_test = len(setup["data"].splits["test"])
    assert result.logits.shape == (n_test, 3) and result.probs.shape == (n_test, 3)
    assert np.allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert result.y_pred.tolist() == result.logits.argmax(1).tolist()
    assert result.ids == [s.id for s in setup["data"].splits["test"]]
    assert result.y_true.tolist() == [s.label for s in setup["data"].splits["test"]]
    assert result.metrics["accuracy"] == pytest.approx(np.mean(result.y_true == result.y_pred))
    assert set(result.metrics["ablations"]) == set(ABLATIONS)

    # One ablation recomputed by hand: the prediction head on the fused vector (no feedback).
    preds = []
    with torch.inference_mode():
        for batch in loader_for(setup, "test"):
            inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
            preds += model(**inputs, ablation="no_feedback").logits.argmax(-1).tolist()
    expected = compute_metrics(result.y_true, preds, MVSA)
    assert result.metrics["ablations"]["no_feedback"] == {k: expected[k] for k in ("accuracy", "f1_weighted", "f1_macro")}

    without = evaluate_model(model, loader_for(setup, "test"), MVSA, ablations=False)
    assert "ablations" not in without.metrics and np.array_equal(without.logits, result.logits)
    assert "ablations_notebook" not in result.metrics  # the notebook's table needs the dataset


def model_readings(model, loader, **decide_args) -> tuple[list[int], list[int]]:
    """Argmax of (final logits, prediction-head logits) of model.decide over a loader."""
    final, pred = [], []
    with torch.inference_mode():
        for batch in loader:
            vision, text = model.encode(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
            out = model.decide(vision, text, batch["attention_mask"], **decide_args)
            final += out.logits.argmax(-1).tolist()
            pred += out.pred_logits.argmax(-1).tolist()
    return final, pred


@pytest.mark.parametrize("dataset", ["mvsa_single", "mvsa_multiple"])
def test_the_notebook_ablation_table_reads_the_model_as_that_notebook(setup, dataset):
    """MVSA-Single (cell 23): gated feedback in full, text_only, image_only and no_coattention;
    MVSA-Multiple (cell 25): the plain forward for full, the prediction head alone for the rest."""
    model, loader = setup["model"], loader_for(setup, "test")
    result = evaluate_model(model, loader, MVSA, dataset=dataset)
    table = result.metrics["ablations_notebook"]
    method = REGISTRY[dataset].ablation_method
    assert table["source"] == method.source and table["feedback_gate"] == method.feedback_gate
    assert list(table["variants"]) == ["full", *ABLATIONS]
    for name, row in table["variants"].items():
        ablation = None if name == "full" else name
        through_feedback = name == "full" or name in method.through_feedback
        final, pred = model_readings(model, loader, ablation=ablation,
                                     feedback_gate=method.feedback_gate if through_feedback else None)
        expected = compute_metrics(result.y_true, final if through_feedback else pred, MVSA)
        assert row == {k: expected[k] for k in ("accuracy", "f1_weighted", "f1_macro")}, name
        assert result.notebook_ablation_logits[name].argmax(1).tolist() == (final if through_feedback else pred)
    if dataset == "mvsa_multiple":  # ungated full row: the model's own logits
        assert np.array_equal(result.notebook_ablation_logits["full"], result.logits)


def test_the_feedback_gate_zeroes_the_signal_of_posts_whose_heads_agree(setup):
    model = setup["model"]
    batch = next(iter(loader_for(setup, "test")))
    with torch.inference_mode():
        vision, text = model.encode(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        mask = batch["attention_mask"]
        ungated = model.decide(vision, text, mask)
        fused, _ = model.fusion(vision, text, mask)
        pred = model.pred(fused)
        silent = model.pred(model.feed(fused, pred, pred))  # the feedback MLP on a zero disagreement
        disagreement = (ungated.verify_logits.softmax(-1) - pred.softmax(-1)).abs().sum(-1)
        gate = float(disagreement.median())  # about half the posts on each side
        gated = model.decide(vision, text, mask, feedback_gate=gate)
        always = model.decide(vision, text, mask, feedback_gate=-1.0)  # every post passes the gate
    torch.testing.assert_close(always.logits, ungated.logits, rtol=0, atol=0)
    opened = disagreement > gate
    assert 0 < int(opened.sum()) < len(opened)
    torch.testing.assert_close(gated.logits[opened], ungated.logits[opened], rtol=0, atol=0)
    torch.testing.assert_close(gated.logits[~opened], silent[~opened], rtol=0, atol=1e-6)
    torch.testing.assert_close(gated.pred_logits, ungated.pred_logits, rtol=0, atol=0)


def test_posthoc_metrics_report_the_fixed_bias_beside_raw_and_what_val_fits(setup):
    model = setup["model"]
    test = evaluate_model(model, loader_for(setup, "test"), MVSA, dataset="mvsa_single")
    val = evaluate_model(model, loader_for(setup, "val"), MVSA, ablations=False)
    assert set(posthoc_metrics(None, test, "mvsa_multiple")) == set()
    bias_only = posthoc_metrics(None, test, "mvsa_multiple", {"negative": 0.6})
    shifted = test.logits + np.array([0.0, 0.0, 0.6], dtype=np.float32)
    expected = compute_metrics(test.y_true, shifted.argmax(1), MVSA)
    assert bias_only["posthoc_bias"] == {"bias": {"negative": 0.6},
                                         **{k: v for k, v in expected.items() if k not in ("labels", "n")}}
    entries = posthoc_metrics(val, test, "mvsa_single", {"negative": 0.6})
    assert set(entries) == {"posthoc_bias", "calibration", "reliability", "ablations_notebook"}
    assert entries["calibration"] == calibration_report(val, test, dataset="mvsa_single")
    assert entries["reliability"]["n_bins"] == 15
    for reading in ("raw", "temperature_scaling"):
        assert sum(b["count"] for b in entries["reliability"][reading]["bins"]) == len(test.y_true)
    # MVSA-Single's table ends with "Full + Bias+Temp": the gated full logits under the fitted variant.
    variants = entries["ablations_notebook"]["variants"]
    assert list(variants) == ["full", *ABLATIONS, "full_bias_temperature"]
    assert "full_bias_temperature" not in test.metrics["ablations_notebook"]["variants"]  # not changed in place


def test_write_results_writes_metrics_plots_and_predictions(setup, tmp_path):
    result = evaluate_model(setup["model"], loader_for(setup, "test"), MVSA, ablations=False)
    history = [{"epoch": 1, "train_loss": 1.1, "val_loss": 1.0, "val_accuracy": 0.4, "val_f1_weighted": 0.3,
                "best_epoch": 1},
               {"epoch": 2, "train_loss": 0.9, "val_loss": 0.95, "val_accuracy": 0.5, "val_f1_weighted": 0.45,
                "best_epoch": 2}]
    metrics = {**result.metrics, "best_epoch": 2, "params": {"total": 10, "trainable": 5}}
    rows = prediction_rows(result, setup["data"].splits["test"], MVSA)
    folder = write_results(tmp_path / "results", metrics, history, MVSA, predictions=rows)

    assert sorted(p.name for p in folder.iterdir()) == ["confusion_matrix.png", "metrics.json", "per_class_metrics.png",
                                                       "predictions.csv", "training_curves.png"]
    written = json.loads((folder / "metrics.json").read_text())
    assert written["history"] == history and written["best_epoch"] == 2
    assert written["confusion_matrix"] == result.metrics["confusion_matrix"]
    for name in ("confusion_matrix.png", "training_curves.png", "per_class_metrics.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == ["id", "text", "image_path", "label", "predicted", "prob_positive", "prob_neutral",
                              "prob_negative"]
    first = setup["data"].splits["test"][0]
    assert (table[0]["id"], table[0]["text"], table[0]["image_path"]) == (first.id, first.text, str(first.image_path))
    assert [row["predicted"] for row in table] == [MVSA[i] for i in result.y_pred]
    assert float(table[0]["prob_neutral"]) == pytest.approx(float(result.probs[0, 1]), abs=1e-6)


def test_write_results_copes_with_an_empty_history_and_probability_mappings(tmp_path):
    metrics = compute_metrics([0, 1, 2], [0, 1, 1], MVSA)
    rows = [{"id": "7", "text": "hi", "image_path": "7.jpg", "label": "neutral", "predicted": "neutral",
             "probabilities": {"positive": 0.1, "neutral": 0.8, "negative": 0.1}}]  # the training loop's form
    folder = write_results(tmp_path, metrics, [], MVSA, predictions=rows)
    assert json.loads((folder / "metrics.json").read_text())["history"] == []
    assert (folder / "training_curves.png").stat().st_size > 1000
    lines = (folder / "predictions.csv").read_text().splitlines()
    assert lines[1] == "7,hi,7.jpg,neutral,neutral,0.100000,0.800000,0.100000"


# ------------------------------------------------------------------ recomputing a checkpoint's metrics

def test_evaluate_checkpoint_recomputes_the_metrics_written_at_the_end(setup, tmp_path):
    model, cpu = setup["model"], torch.device("cpu")
    # Under the precision evaluate_checkpoint resolves (auto: bf16 where a CPU runs it faster).
    with precision_autocast(resolve_mixed_precision(setup["cfg"].train.mixed_precision, cpu), cpu):
        test = evaluate_model(model, loader_for(setup, "test"), MVSA, dataset="mvsa_single")
        val = evaluate_model(model, loader_for(setup, "val"), MVSA, ablations=False)
    metrics = {**test.metrics, **posthoc_metrics(val, test, "mvsa_single")}
    write_results(tmp_path / "results", metrics, [], MVSA)
    written = json.loads((tmp_path / "results" / "metrics.json").read_text())

    recomputed = evaluate_checkpoint(setup["checkpoint"], "mvsa_single", setup["data_dir"], device="cpu",
                                     results_dir=tmp_path / "again")
    assert {k: recomputed[k] for k in COMPARED} == {k: written[k] for k in COMPARED}
    assert recomputed["split"] == "test" and recomputed["protocol"] == "clara"
    assert (tmp_path / "again" / "predictions.csv").is_file()


def test_evaluate_script_prints_the_table_and_json(setup, tmp_path, capsys):
    script = load_script("evaluate")
    out = tmp_path / "m.json"
    args = ["--checkpoint", str(setup["checkpoint"]), "--dataset", "mvsa_single", "--data-dir", str(setup["data_dir"]),
            "--split", "val", "--device", "cpu"]
    assert script.main([*args, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["split"] == "val" and printed["n"] == len(setup["data"].splits["val"])
    assert "calibration" not in printed  # calibration is fitted on val, so reported for test only

    assert script.main(args) == 0
    table = capsys.readouterr().out
    assert f"accuracy      {100 * printed['accuracy']:7.2f}" in table
    assert "confusion matrix (rows: true, columns: predicted)" in table and "no_coattention" in table


@pytest.mark.parametrize("change, message", [
    ({"--dataset": "hfm"}, "was trained on mvsa_single, not hfm"),
    ({"--dataset": "mvsa_twitter"}, "unknown dataset 'mvsa_twitter'"),
    ({"--checkpoint": "missing_ck"}, "checkpoint folder .*missing_ck does not exist"),
    ({"--data-dir": "missing_data"}, "--data-dir .*missing_data does not exist"),
    ({"--data-dir": "empty_data"}, "--data-dir .*empty_data: "),
])
def test_evaluate_script_exits_2_with_one_line(setup, tmp_path, capsys, change, message):
    (tmp_path / "empty_data").mkdir()
    values = {"--checkpoint": str(setup["checkpoint"]), "--dataset": "mvsa_single", "--data-dir": str(setup["data_dir"])}
    values.update({k: (str(tmp_path / v) if k != "--dataset" else v) for k, v in change.items()})
    argv = [item for pair in values.items() for item in pair]
    assert load_script("evaluate").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("evaluate.py: error: ")
    import re
    assert re.search(message, err), err


def test_evaluate_checkpoint_refuses_another_dataset(setup):
    with pytest.raises(EvaluationError, match="trained on 'mvsa_single', not 'hfm'; use --dataset mvsa_single"):
        evaluate_checkpoint(setup["checkpoint"], "hfm", setup["data_dir"])


# ------------------------------------------------------------------ train -> evaluate round trip

@pytest.mark.slow
def test_training_then_evaluate_checkpoint_gives_the_same_metrics(tmp_path):
    from clara.train.loop import train

    data_dir = tmp_path / "data"
    write_synthetic("hfm", data_dir, n=60, seed=2, quirks=False)
    cfg = tiny_config("hfm", **{"data.data_dir": str(data_dir), "train.output_dir": str(tmp_path / "run"),
                                "train.epochs": "1", "train.batch_size": "16", "train.eval_batch_size": "8"})
    result = train(cfg, progress=False)
    written = json.loads((result.results_dir / "metrics.json").read_text())
    assert "f1_sarcastic" in written and set(written["calibration"]) == {"raw", "bias_temperature", "top2_flip",
                                                                         "affine"}
    assert written["ablations_notebook"]["source"] == "HFM cell 24" and "posthoc_bias" not in written
    assert set(written["reliability"]) == {"n_bins", "raw", "temperature_scaling"}

    recomputed = evaluate_checkpoint(result.best_dir, "hfm", data_dir, device="cpu")
    assert {k: recomputed[k] for k in (*COMPARED, "f1_sarcastic")} == {k: written[k] for k in (*COMPARED, "f1_sarcastic")}

    # ... and the Predictor on the reloaded checkpoint predicts what training wrote to predictions.csv.
    from clara.inference import Predictor

    with (result.results_dir / "predictions.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    predictions = Predictor.from_checkpoint(result.best_dir, device="cpu").predict(
        [Path(row["image_path"]) for row in rows], [row["text"] for row in rows], batch_size=8)
    assert [p.label for p in predictions] == [row["predicted"] for row in rows]
    for prediction, row in zip(predictions, rows):
        assert prediction.probs["sarcastic"] == pytest.approx(float(row["prob_sarcastic"]), abs=1e-5)
