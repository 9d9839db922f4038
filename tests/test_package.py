"""clara as a package: pyproject.toml's requirements (ranges a user's machine can satisfy, the
exact tested set in constraints.txt), console scripts over clara's own CLI modules with scripts/*.py
as shims, `python -m clara`, and (opt-in, CLARA_INSTALL_TEST=1: about 2 minutes) a non-editable
install into a fresh virtualenv whose clara-predict runs on the demo checkpoint."""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import clara.__main__ as about

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SECTIONS = {"": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
REQUIREMENTS = {extra: [Requirement(r) for r in items] for extra, items in SECTIONS.items()}
SHIMS = ("train", "evaluate", "predict", "explain", "data_summary", "make_synthetic", "import_notebook_checkpoint")
INSTALL_TEST = "CLARA_INSTALL_TEST"  # opt-in: the fresh-virtualenv install below


def names(extras: tuple[str, ...]) -> set[str]:
    return {canonicalize_name(r.name) for extra in extras for r in REQUIREMENTS[extra]}


def test_ranges_are_not_capped_at_this_machine():
    for requirement in REQUIREMENTS[""]:
        if requirement.name in ("torch", "torchvision"):
            assert not any(s.operator in ("<", "<=", "==", "~=") for s in requirement.specifier), requirement
    assert {"app", "ocr", "track", "scale", "dev", "hub", "data"} <= set(REQUIREMENTS)
    assert (REPO / "requirements.txt").read_text().splitlines()[-1] == "-e .[app,ocr]"


def test_every_third_party_import_is_declared():
    """Module-level imports: of clara/ in the core or an extra, of clara_app/ in the core or `app`."""
    modules = metadata.packages_distributions()
    for folder, allowed in (("clara", names(tuple(REQUIREMENTS))), ("clara_app", names(("", "app")))):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                imported = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                            [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for top in {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names):
                    if top in ("clara", "clara_app", "__future__"):
                        continue
                    dists = {canonicalize_name(d) for d in modules.get(top, [top])}
                    assert dists & allowed, f"{path.relative_to(REPO)} imports {top}, which pyproject.toml lacks"


def test_constraints_pin_what_is_installed_inside_the_ranges():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins == dict(sorted(pins.items()))
    for extra, requirements in REQUIREMENTS.items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            if name == "clara" or name not in pins:
                assert name == "clara" or extra, f"core requirement {name} is not pinned"
                continue
            assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_console_scripts_point_at_clara_modules_and_the_scripts_are_shims():
    scripts = PROJECT["scripts"]
    assert set(scripts) == {"clara-train", "clara-evaluate", "clara-predict", "clara-explain", "clara-data-summary"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert module.startswith("clara.")
        assert callable(getattr(importlib.import_module(module), function))
    for name in SHIMS:
        source = (REPO / "scripts" / f"{name}.py").read_text(encoding="utf-8")
        assert len(source.splitlines()) <= 5 and "import main, run" in source, name


def test_python_m_clara_says_what_is_installed_and_where_the_demo_is(capsys):
    assert about.main([]) == 0
    shown = capsys.readouterr().out
    assert f"torch {metadata.version('torch')}" in shown and "CPU capability" in shown
    for extra in ("app", "ocr", "track", "scale", "dev"):
        assert f"\n  {extra} " in shown
    assert f"demo checkpoint: {REPO / 'checkpoints' / 'demo'}" in shown
    assert about.main(["--constraints"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("#") and f"torch=={metadata.version('torch')}" in printed


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(INSTALL_TEST), reason=f"about 2 minutes of pip and imports: set {INSTALL_TEST}=1")
def test_a_non_editable_install_runs_clara_predict_on_the_demo(tmp_path):
    """pip install ".[app]" into a fresh virtualenv (system packages visible, so nothing is
    downloaded but the build backend), outside the source tree: clara-predict works, pip check is clean."""
    source, venv = tmp_path / "source", tmp_path / "venv"
    # pip builds in the tree it is given: a copy, so that no build/ folder appears in the repository
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "checkpoints", "build", "*.egg-info",
                                                                 "__pycache__", "data", "runs", "results"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([python, "-m", "pip", "install", "-q", f"{source}[app]"], check=True, env=env, timeout=600,
                   cwd=tmp_path)
    where = subprocess.run([python, "-c", "import clara; print(clara.__file__)"], capture_output=True, text=True,
                           check=True, env=env, cwd=tmp_path).stdout
    assert str(venv) in where  # the installed copy, not the source tree
    done = subprocess.run([venv / "bin" / "clara-predict", "--checkpoint", REPO / "checkpoints" / "demo", "--image",
                           REPO / "examples" / "positive_5.jpg", "--text", "hi"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] in ("positive", "neutral", "negative"), done.stdout  # the predicted label
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout
