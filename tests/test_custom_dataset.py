"""--dataset custom: a CSV / JSONL / Parquet table of image, text, label read through the same skip
report and splits as the benchmarks, its labels carried by the checkpoint; trained, evaluated,
predicted and explained end to end (tiny encoders, a cosine LR schedule by name), and handed to
Hugging Face `datasets`. The tables are made from clara.data.synthetic posts."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from clara.config import get_preset
from clara.data import DatasetError, load_dataset, to_hf_dataset
from clara.data.synthetic import write_synthetic
from clara.datasets import REGISTRY

REPO = Path(__file__).resolve().parents[1]
MVSA = ["positive", "neutral", "negative"]
SMALL = ["--encoders", "tiny", "--set", "model.hidden_dim=64", "--set", "model.fusion_heads=4",
         "--set", "data.check_images=false"]
# Rows the reader must refuse, one per skip reason, appended to the good rows.
BAD_ROWS = [
    {"id": "no_image", "image": "nowhere.jpg", "text": "a post", "label": "positive"},
    {"id": "blank", "image": "IMAGE", "text": "   ", "label": "neutral"},
    {"id": "1", "image": "IMAGE", "text": "the same id again", "label": "neutral"},
    {"id": "no_label", "image": "IMAGE", "text": "a post", "label": ""},
]


def script_main(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_custom", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> list[dict[str, str]]:
    """Synthetic MVSA-Single posts as table rows (images copied under images/ later)."""
    source = tmp_path_factory.mktemp("synthetic")
    write_synthetic("mvsa_single", source, n=60, seed=3, quirks=False)
    loaded = load_dataset("mvsa_single", source, check_images=False)
    return [{"id": s.id, "image": str(s.image_path), "text": s.text, "label": MVSA[s.label]} for s in loaded.samples]


def write_table(folder: Path, rows: list[dict[str, str]], kind: str = "csv", bad: bool = True) -> Path:
    """`folder`/posts.<kind> with image paths relative to `folder`/images/."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    table_rows = []
    for row in rows:
        name = Path(row["image"]).name
        shutil.copyfile(row["image"], folder / "images" / name)
        table_rows.append({**row, "image": name})
    if bad:
        table_rows += [{**row, "image": table_rows[0]["image"] if row["image"] == "IMAGE" else row["image"]}
                       for row in BAD_ROWS]
    path = folder / f"posts.{kind}"
    if kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(table_rows[0]))
            writer.writeheader()
            writer.writerows(table_rows)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table_rows) + "not json\n", encoding="utf-8")
    else:
        pyarrow = pytest.importorskip("pyarrow")
        import pyarrow.parquet as parquet
        parquet.write_table(pyarrow.Table.from_pylist(table_rows), path)
    return folder


@pytest.fixture(scope="module")
def table(posts, tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("custom"), posts)


# ------------------------------------------------------------------------------------- the reader

def test_the_registry_entry_is_all_a_new_dataset_needs():
    spec = REGISTRY["custom"]
    assert spec.labels == () and spec.reader.__name__ == "load_custom"
    cfg = get_preset("custom")
    assert cfg.labels == [] and cfg.train.selection_metric == "f1_macro"


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_each_table_format_gives_the_same_posts_and_skip_report(posts, tmp_path, kind):
    loaded = load_dataset("custom", write_table(tmp_path, posts, kind))
    assert loaded.layout == kind and loaded.protocol == "clara"
    assert loaded.labels == sorted(MVSA)  # from the data, sorted
    assert sorted(s.id for s in loaded.samples) == sorted(p["id"] for p in posts)
    expected = {"missing_image": 1, "empty_text": 1, "duplicate_id": 1, "malformed_line": 1 + (kind == "jsonl")}
    assert loaded.skipped.as_dict() == expected
    by_id = {s.id: s for s in loaded.samples}
    assert all(loaded.labels[by_id[p["id"]].label] == p["label"] for p in posts)
    assert all(s.image_path.parent == tmp_path / "images" for s in loaded.samples)


def test_labels_asked_for_keep_their_order_and_refuse_other_rows(posts, tmp_path):
    loaded = load_dataset("custom", write_table(tmp_path, posts), class_names=["negative", "positive"])
    assert loaded.labels == ["negative", "positive"]
    neutral = sum(p["label"] == "neutral" for p in posts + BAD_ROWS)  # checked before duplicates and texts
    assert loaded.skipped.as_dict() == {"malformed_line": 1 + neutral, "missing_image": 1}
    assert "label 'neutral' is not one of negative, positive" in " ".join(loaded.skipped.examples["malformed_line"])


def test_a_split_column_places_every_row(posts, tmp_path):
    rows = [{**p, "split": ("train", "dev", "test")[i % 3]} for i, p in enumerate(posts)]
    loaded = load_dataset("custom", write_table(tmp_path, rows, bad=False))
    assert loaded.protocol == "official"
    assert {s.id for s in loaded.splits["val"]} == {p["id"] for p in rows if p["split"] == "dev"}
    rows[0]["split"] = "later"
    broken = load_dataset("custom", write_table(tmp_path / "b", rows, bad=False))
    assert broken.skipped.as_dict() == {"malformed_line": 1}


@pytest.mark.parametrize("files, message", [
    ({}, "is not a custom dataset folder (found none)"),
    ({"a.csv": "image,text,label\n", "b.jsonl": ""}, "(found a.csv, b.jsonl)"),
    ({"a.csv": "image,words,label\nx.jpg,hi,positive\n"}, "has no text column (columns: image, words, label)"),
    ({"a.csv": "image,text,label\nx.jpg,hi,positive\n"}, "needs at least two labels"),
])
def test_a_folder_that_is_no_table_is_refused_in_one_line(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as error:
        load_dataset("custom", tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_any_loaded_dataset_goes_to_hugging_face_datasets(table):
    pytest.importorskip("datasets")
    loaded = load_dataset("custom", table)
    hf = to_hf_dataset(loaded)
    assert list(hf) == ["train", "validation", "test"]
    assert [len(hf[name]) for name in hf] == [len(loaded.splits[name]) for name in ("train", "val", "test")]
    assert hf["train"].features["label"].names == loaded.labels
    first, sample = hf["train"][0], loaded.splits["train"][0]
    assert (first["id"], first["text"], first["label"]) == (sample.id, sample.text, sample.label)
    assert first["image"].size == (96, 96)  # decoded from its path on access


# ------------------------------------------------------------------------------------- end to end

def test_train_evaluate_predict_and_explain_on_a_custom_table(table, tmp_path, capsys):
    out = tmp_path / "out"
    assert script_main("train")(["--dataset", "custom", "--data-dir", str(table), "--epochs", "2", "--batch-size",
                                 "8", "--max-steps-per-epoch", "2", "--output-dir", str(out), "--no-progress", *SMALL,
                                 "--set", "train.lr_scheduler=cosine", "--set", "train.warmup_ratio=0"]) == 0
    capsys.readouterr()
    best = out / "checkpoints" / "clara_custom_best"
    info = json.loads((best / "config.json").read_text())
    assert info["labels"] == sorted(MVSA) == info["config"]["data"]["class_names"]
    assert "**Not a real model.**" in (best / "README.md").read_text()
    history = json.loads((out / "checkpoints" / "clara_custom_last" / "history.json").read_text())
    steps = history[-1]["steps"] * len(history)
    assert history[0]["lr"] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * history[0]["steps"] / steps)))
    results = json.loads((out / "results" / "custom" / "metrics.json").read_text())
    assert results["labels"] == sorted(MVSA) and results["dataset"] == "custom"

    assert script_main("evaluate")(["--checkpoint", str(best), "--dataset", "custom", "--data-dir", str(table),
                                    "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["labels"] == sorted(MVSA) and evaluated["n"] == results["n"]
    assert evaluated["accuracy"] == pytest.approx(results["accuracy"])

    image = next((table / "images").iterdir())
    assert script_main("predict")(["--checkpoint", str(best), "--image", str(image), "--text", "a post",
                                   "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["label"] in MVSA and set(predicted["probs"]) == set(MVSA)

    explained = tmp_path / "explained"
    assert script_main("explain")(["--checkpoint", str(best), "--image", str(image), "--text", "a post", "--out",
                                   str(explained), "--methods", "attention", "text_ig", "--steps", "4"]) == 0
    scores = json.loads((explained / "scores.json").read_text())
    assert scores["labels"] == sorted(MVSA)
