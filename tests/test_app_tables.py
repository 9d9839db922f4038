"""clara_app.tables and clara_app.gallery: the results tables of the demo run beside the published
numbers, what each head and each modality of a prediction says, and the bundled examples."""
from __future__ import annotations

import pytest

from clara import catalog
from clara.config import ABLATIONS
from clara.inputs import check_image_upload
from clara_app import tables
from clara_app.gallery import load_examples
from _app_utils import DEMO_CHECKPOINT, EXAMPLES_DIR, ROOT, require_demo


def demo_run() -> catalog.RunResults:
    require_demo()
    runs = catalog.find_results([], catalog.find_checkpoints(ROOT / "checkpoints"))
    return next(run for run in runs if run.checkpoint == DEMO_CHECKPOINT)


def test_results_tables_of_the_demo_run():
    run = demo_run()
    metrics = run.metrics
    assert run.dataset == "mvsa_single" and run.labels == ["positive", "neutral", "negative"]
    per_class = tables.per_class_rows([run])  # grouped by dataset; the published F1 of every dataset
    assert [(r["run"], r["dataset"], r["class"]) for r in per_class] == [
        ("CLARA (published)", "mvsa_single", "positive"), ("CLARA (published)", "mvsa_single", "neutral"),
        ("CLARA (published)", "mvsa_single", "negative"),
        ("demo", "mvsa_single", "positive"), ("demo", "mvsa_single", "neutral"), ("demo", "mvsa_single", "negative"),
        ("CLARA (published)", "mvsa_multiple", "positive"), ("CLARA (published)", "mvsa_multiple", "neutral"),
        ("CLARA (published)", "mvsa_multiple", "negative"),
        ("CLARA (published)", "hfm", "not_sarcastic"), ("CLARA (published)", "hfm", "sarcastic")]
    assert per_class[3]["f1"] == round(100 * metrics["per_class"]["positive"]["f1"], 2)
    assert per_class[0]["f1"] == 88.84 and per_class[0]["precision"] is None  # the papers give F1 only
    assert sum(r["support"] for r in per_class[3:6]) == metrics["n"]
    assert [r["data"] for r in per_class[:6]] == ["published"] * 3 + ["synthetic"] * 3
    summary = tables.summary_rows([run])
    assert [(r["run"], r["dataset"]) for r in summary] == [
        ("CLARA (published)", "mvsa_single"), ("demo", "mvsa_single"), ("CLARA (published)", "mvsa_multiple"),
        ("CLARA (published)", "hfm")]
    assert summary[0]["accuracy"] == 83.16 and summary[1]["data"] == "synthetic"
    assert list(summary[0]) == list(summary[1])  # the same columns, in the same order
    labels, matrix = tables.confusion_matrix(run)
    assert labels == run.labels and sum(map(sum, matrix)) == metrics["n"]
    ablations = tables.ablation_rows([run])
    assert [r["variant"] for r in ablations if r["run"] == "demo"] == ["full", *ABLATIONS]
    assert len([r for r in ablations if r["run"] == "CLARA (published)"]) == 6
    calibration = tables.calibration_rows([run])
    assert [r["variant"] for r in calibration] == list(metrics["calibration"])
    history = tables.history_rows(run)
    assert len(history) == len(metrics["history"]) and "val_accuracy" in history[0]


def test_reference_numbers():
    rows = tables.reference_rows(["hfm"])
    assert rows == [{"run": "CLARA (published)", "dataset": "hfm",
                     "protocol": "official splits, hashtag labels (the notebooks' choice)",
                     "accuracy": 88.13, "f1_weighted": 88.13, "f1_macro": 87.82,
                     "f1 not_sarcastic": 88.33, "f1 sarcastic": 87.92}]
    standard = {r["method"]: r for r in tables.standard_protocol_rows()}
    assert standard["CLMLF (NAACL-F 2022)"]["mvsa_single accuracy"] == 75.33
    assert standard["MultiSentiNet (2017)"]["hfm F1"] is None


@pytest.fixture(scope="module")
def demo_predictor():
    require_demo()
    from clara.inference import Predictor
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")


def test_examples_gallery_is_bundled():
    examples = load_examples(EXAMPLES_DIR)
    assert len(examples) >= 4
    assert {e.label for e in examples} == {"positive", "neutral", "negative"}
    assert any(e.name.startswith("meme_") and e.text == "" for e in examples)
    for example in examples:
        check_image_upload(example.image_path.read_bytes())


def test_prediction_views_and_agreement(demo_predictor):
    example = next(e for e in load_examples(EXAMPLES_DIR) if e.label == "neutral")
    [prediction] = demo_predictor.predict([example.image_path.read_bytes()], [example.text])
    views = tables.prediction_views(prediction, demo_predictor.labels)
    assert [v["view"] for v in views] == ["final", "prediction head", "verification head", "text only", "image only"]
    for view in views:
        assert sum(view[label] for label in demo_predictor.labels) == pytest.approx(1.0, abs=1e-5)
    assert views[0]["says"] == prediction.label == "neutral"
    notes = tables.agreement_summary(views)
    assert notes[0].startswith("The verification head")
    assert any("text only" in note for note in notes)


def test_per_class_chart_marks_synthetic_series_and_keeps_colours():
    """clara_app.charts on the demo run's rows: the published F1 of every dataset beside it, the demo
    hatched and faded, one colour per series whichever metric is shown, a note where only F1 is published."""
    from clara_app import charts

    rows = tables.per_class_rows([demo_run()])
    colours = charts.series_colours([r["run"] for r in rows])
    assert colours["CLARA (published)"] == charts.PUBLISHED_COLOUR and colours["demo"] != charts.PUBLISHED_COLOUR
    f1 = charts.per_class_figure(rows, "f1", colours)
    assert [a.text for a in f1.layout.annotations] == ["MVSA-Single", "MVSA-Multiple", "HFM"]
    names = [(trace.name, trace.xaxis) for trace in f1.data]
    assert names == [("CLARA (published)", "x"), ("CLARA (published)", "x2"), ("CLARA (published)", "x3"),
                     ("demo · synthetic data", "x")]
    demo = f1.data[3]
    assert (demo.marker.pattern.shape, demo.marker.opacity) == (charts.SYNTHETIC_PATTERN, charts.SYNTHETIC_OPACITY)
    assert [t.showlegend for t in f1.data] == [True, False, False, True]  # one legend entry per series
    recall = charts.per_class_figure(rows, "recall", colours)
    assert [t.name for t in recall.data] == ["demo · synthetic data"]
    assert recall.data[0].marker.color == demo.marker.color
    assert "per-class F1 only" in recall.layout.annotations[-1].text


def test_confusion_figure_shows_row_shares_with_counts():
    from clara_app import charts

    figure = charts.confusion_figure(["a", "b"], [[3, 1], [0, 0]], synthetic=False)
    [heat] = figure.data
    assert [list(row) for row in heat.z] == [[0.75, 0.25], [0.0, 0.0]]  # an empty row stays zero
    assert [list(row) for row in heat.customdata] == [[3, 1], [0, 0]]
    assert heat.text[0][0] == "75.0%<br>(3)" and not figure.layout.annotations
    assert figure.layout.title.text is None
    marked = charts.confusion_figure(["a", "b"], [[3, 1], [0, 2]], synthetic=True)
    assert [a.text for a in marked.layout.annotations] == [tables.SYNTHETIC_MARK]
