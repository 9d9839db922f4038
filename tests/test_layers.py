"""The three layers (docs/ARCHITECTURE.md): imports point one way and the library has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LIBRARY_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, id(node) in top_level))
            # `from clara.evaluate import calibration` imports the submodule too
            found += [(f"{base}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


LIBRARY = sorted(p for p in (ROOT / "clara").rglob("*.py") if "train" not in p.relative_to(ROOT / "clara").parts)
ALL_MODULES = {module_name(p): p for p in (ROOT / "clara").rglob("*.py")}


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_neither_the_training_package_nor_streamlit(path):
    bad = [m for m, _ in imports(path) if m == "clara.train" or m.startswith(("clara.train.", "streamlit"))]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_stay_short(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LIBRARY_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_no_import_cycle_at_module_level():
    graph = {name: {m for m, top in imports(path) if top and m in ALL_MODULES and m != name}
             for name, path in ALL_MODULES.items()}
    for name, deps in graph.items():  # a package's modules import its __init__ first: not a cycle
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_scripts_and_pages_do_not_reach_into_the_app_layer_backwards():
    """clara_app is Streamlit glue over the library: scripts never import it, it never imports pages."""
    for path in (ROOT / "scripts").glob("*.py"):
        assert not [m for m, _ in imports(path) if m.startswith("clara_app")], path.name
    for path in (ROOT / "clara_app").glob("*.py"):
        assert not [m for m, _ in imports(path) if m.startswith("pages")], path.name
