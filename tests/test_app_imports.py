"""Home and the sidebar import no PyTorch, Transformers, PEFT, scikit-learn or Captum: they read the
checkpoints' JSON files only, so the first visit after a server start draws in about a second
(docs/BENCHMARKS.md, "Dashboard"). The import checks run in a fresh Python: pytest's has them all."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _app_utils import ROOT, app_folders  # noqa: F401 (a fixture)
from clara_app.state import CHECKPOINTS_ENV, RESULTS_ENV

HEAVY = ("torch", "transformers", "peft", "sklearn", "captum")
# What streamlit_app.py and pages/home.py import, and the library modules they list checkpoints with.
LIGHT_MODULES = ("clara.checkpoint", "clara.checkpoint.info", "clara.evaluate", "clara.catalog",
                 "clara_app.state", "clara_app.tables", "clara_app.widgets")

HOME_IN_APPTEST = r"""
import json, sys
from streamlit.testing.v1 import AppTest
heavy = json.loads(sys.argv[2])


def shown(at):
    return {"exceptions": [e.value for e in at.exception], "markdown": [str(m.value) for m in at.markdown],
            "sidebar": [str(m.value) for m in at.sidebar.markdown],
            "tables": [list(d.value.columns) for d in at.dataframe],
            "heavy": [name for name in heavy if name in sys.modules]}


at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
home = shown(at)
predict = shown(at.switch_page("pages/predict.py").run())
home_again = shown(at.switch_page("pages/home.py").run())
print(json.dumps({"home": home, "predict": predict, "home_again": home_again}))
"""


def fresh_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_modules_home_lists_checkpoints_with_import_no_heavy_library():
    code = ("import importlib, json, sys\n"
            "for name in json.loads(sys.argv[1]):\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps([name for name in json.loads(sys.argv[2]) if name in sys.modules]))")
    loaded = json.loads(fresh_python(code, json.dumps(LIGHT_MODULES), json.dumps(HEAVY)).splitlines()[-1])
    assert loaded == []


def test_home_and_the_sidebar_draw_without_a_heavy_library_and_predict_then_loads_them(app_folders):
    env = {**os.environ, CHECKPOINTS_ENV: str(app_folders.checkpoints), RESULTS_ENV: str(app_folders.results)}
    out = fresh_python(HOME_IN_APPTEST, str(ROOT / "streamlit_app.py"), json.dumps(HEAVY), env=env)
    runs = json.loads(out.splitlines()[-1])
    home = runs["home"]
    assert home["exceptions"] == []
    assert any({"checkpoint", "encoders"} <= set(columns) for columns in home["tables"])  # Home's table
    assert "**Training data:** synthetic" in "\n".join(home["markdown"])
    assert "demo" in "\n".join(home["sidebar"])
    device = [m for m in home["markdown"] if m.startswith("**Device in use:**")]
    assert len(device) == 1 and "when a page first loads the model" in device[0]
    assert home["heavy"] == []
    # The first page that runs the model imports them (clara_app.state loads the Predictor lazily) ...
    assert runs["predict"]["exceptions"] == [] and {"torch", "transformers"} <= set(runs["predict"]["heavy"])
    # ... and Home then names the device it uses.
    assert runs["home_again"]["exceptions"] == []
    assert any(m.startswith("**Device in use:** `cpu`") for m in runs["home_again"]["markdown"])


def test_the_names_that_need_pytorch_are_still_importable_from_the_packages():
    from clara import checkpoint, evaluate
    from clara.checkpoint import folder, notebook
    from clara.evaluate import scoring

    assert checkpoint.load_checkpoint is folder.load_checkpoint
    assert checkpoint.import_notebook_checkpoint is notebook.import_notebook_checkpoint
    assert checkpoint.CheckpointError is folder.CheckpointError  # one class, defined in checkpoint.info
    assert evaluate.evaluate_checkpoint is scoring.evaluate_checkpoint
    assert sorted(name for name in checkpoint.__all__ if not hasattr(checkpoint, name)) == []
    assert sorted(name for name in evaluate.__all__ if not hasattr(evaluate, name)) == []
    with pytest.raises(AttributeError):
        checkpoint.no_such_name  # noqa: B018
