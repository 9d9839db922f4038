"""The Metrics page's confusion matrices stay readable at 1280 px: at most two side by side
(`widgets.confusion_grid`), square cells, level axis labels given the margin they need."""
from __future__ import annotations

import pytest

from clara_app import charts
from _app_utils import app_folders, point_app_at  # noqa: F401 (a fixture)

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


def test_confusion_cells_are_square_and_labels_level():
    figure = charts.confusion_figure(["not_sarcastic", "sarcastic"], [[46, 1], [0, 53]], synthetic=True)
    assert figure.layout.yaxis.scaleanchor == "x" and figure.layout.yaxis.constrain == "domain"
    assert figure.layout.xaxis.tickangle == 0
    assert figure.layout.xaxis.automargin and figure.layout.yaxis.automargin
    three = charts.confusion_figure(["a", "b", "c"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], synthetic=False)
    assert three.layout.height - figure.layout.height == charts.CONFUSION_CELL  # room grows with the classes


def _grid_page() -> None:
    from clara_app import state, tables, widgets

    runs = state.list_results()
    widgets.confusion_grid([(run, tables.confusion_matrix(run)) for run in runs])


def test_three_datasets_matrices_are_laid_out_two_per_row(app_folders, monkeypatch):
    point_app_at(app_folders, monkeypatch)
    at = AppTest.from_function(_grid_page, default_timeout=120).run()
    assert not at.exception
    charts_drawn = at.get("plotly_chart")
    assert len(charts_drawn) == 3  # the three bundled demo runs
    # two rows of CONFUSION_PER_ROW (= 2) columns: 2 matrices, then 1 beside a free cell
    assert charts.CONFUSION_PER_ROW == 2 and len(at.columns) == 4
    assert [len(column.get("plotly_chart")) for column in at.columns] == [1, 1, 1, 0]
