"""`python -m clara`: what is installed (clara's dependencies with their versions, which optional
extras are present, torch's device and CPU capability) and where the demo checkpoint lives.

`python -m clara --constraints` prints `name==version` for every installed distribution that clara
and all its extras need, dependencies of dependencies included: constraints.txt is that output.
Requirements come from pyproject.toml in a source tree, else from the installed package's metadata.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import clara

PROJECT = "clara"
SOURCE_ROOT = Path(clara.__file__).resolve().parent.parent  # the repository, when run from a source tree
DEMO_CHECKPOINT = Path("checkpoints") / "demo"
CONSTRAINTS_HEADER = """\
# The exact set the tests passed with: every installed distribution clara and all its extras need,
# dependencies of dependencies included (pyproject.toml holds the ranges). Written by
#   python -m clara --constraints > constraints.txt
# and used as  pip install -c constraints.txt -e ".[dev]"  (.ci/run)."""


def clara_requirements() -> dict[str, list[Requirement]]:
    """clara's requirements per extra ("" for the core ones)."""
    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == PROJECT:
            sections = {"": project.get("dependencies", []), **project.get("optional-dependencies", {})}
            return {extra: [Requirement(r) for r in items] for extra, items in sections.items()}
    try:  # an installed wheel: Requires-Dist lines, each extra's marked `extra == "<name>"`
        raw = [Requirement(r) for r in metadata.requires(PROJECT) or []]
        extras = metadata.metadata(PROJECT).get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        return {"": []}
    found: dict[str, list[Requirement]] = {extra: [] for extra in ["", *extras]}
    for requirement in raw:
        extra = next((e for e in extras if requirement.marker and requirement.marker.evaluate({"extra": e})
                      and not requirement.marker.evaluate({"extra": ""})), "")
        if extra:
            requirement.marker = None  # the extra was its only condition that this report needs
        found[extra].append(requirement)
    return found


def needed(extras: Iterable[str]) -> list[Requirement]:
    """The requirements of the core and `extras` on this machine, self-references (`clara[app,...]`) expanded."""
    sections = clara_requirements()
    asked, pending = {""}, ["", *extras]
    while pending:
        extra = pending.pop()
        asked.add(extra)
        pending += [e for r in sections.get(extra, []) if canonicalize_name(r.name) == PROJECT
                    for e in r.extras if e not in asked]
    return [r for extra in sections if extra in asked for r in sections[extra]
            if canonicalize_name(r.name) != PROJECT and (r.marker is None or r.marker.evaluate())]


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether a dependency's requirement is needed with these of its extras asked for, on this machine."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**default_environment(), "extra": extra}) for extra in [*extras, ""])


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def closure(extras: Iterable[str]) -> dict[str, str]:
    """canonical name -> installed version of everything `needed(extras)` pulls in, transitively."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(r, frozenset(r.extras)) for r in needed(extras)]
    while pending:
        requirement, asked = pending.pop()
        name = canonicalize_name(requirement.name)
        version = installed_version(requirement.name)
        if version is None or name == PROJECT or (name, asked) in seen:
            continue
        seen.add((name, asked))
        found[name] = version
        for raw in metadata.requires(requirement.name) or []:
            try:
                child = Requirement(raw)
            except InvalidRequirement:
                continue
            if applies(child, asked):
                pending.append((child, frozenset(child.extras)))
    return dict(sorted(found.items()))


def describe_requirement(requirement: Requirement) -> str:
    version = installed_version(requirement.name)
    if version is None:
        state = "MISSING"
    elif requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        state = f"{version} (outside {requirement.specifier})"
    else:
        state = version
    return f"  {requirement.name:<18} {state:<12} {requirement.specifier or ''}"


def device_lines() -> list[str]:
    import torch

    from clara.precision import default_device

    device = default_device()
    lines = [f"  torch {torch.__version__}: device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
             f" {torch.get_num_threads()} CPU threads"]
    if device.type == "cuda":
        lines.append(f"  GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    return lines


def demo_line() -> str:
    for folder in (Path.cwd() / DEMO_CHECKPOINT, SOURCE_ROOT / DEMO_CHECKPOINT):
        if (folder / "config.json").is_file():
            return (f"demo checkpoint: {folder}\n  run the dashboard on it from {folder.parent.parent}: "
                    "streamlit run streamlit_app.py (needs the app extra)")
    return (f"demo checkpoint: not found (it ships in the source repository as {DEMO_CHECKPOINT}/; run from a "
            "clone, or rebuild it there with python scripts/make_demo_checkpoint.py)")


def report() -> str:
    lines = [f"clara {clara.__version__} at {Path(clara.__file__).resolve().parent}",
             f"python {platform.python_version()} ({sys.executable})", "", "dependencies:"]
    lines += [describe_requirement(r) for r in needed([])]
    lines += ["", "optional extras (pip install \"clara[NAME]\"):"]
    sections = clara_requirements()
    core = {str(r) for r in needed([])}
    for extra in (e for e in sections if e):
        own = [r for r in needed([extra]) if str(r) not in core or r in sections[extra]]
        missing = [r.name for r in own if installed_version(r.name) is None]
        state = f"missing {', '.join(missing)}" if missing else "installed"
        lines.append(f"  {extra:<8} {state}  ({', '.join(r.name for r in own)})")
    lines += ["", "device:", *device_lines(), "", demo_line()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clara", description=__doc__.split("\n\n")[0])
    parser.add_argument("--constraints", action="store_true",
                        help="print name==version of everything installed that clara and all its extras need")
    args = parser.parse_args(argv)
    if args.constraints:
        pins = [f"{name}=={version}" for name, version in closure(clara_requirements()).items()]
        print("\n".join([CONSTRAINTS_HEADER, *pins]))
    else:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
