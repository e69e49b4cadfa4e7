"""The import graph of the code: no cycle between modules or between the engine's parts, DALI imported only
where a pipeline is built, and reading a recipe loads no DALI.

The graph is read from the source with `ast`, imports inside functions included: a lazy import that closes a
cycle is still a cycle, it only moves the failure from import time to the first call.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "shards", "kernels", "benchmarks")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module of ours that `import name` executes last (a.b.c -> a.b when c is a function), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(our modules it imports, every imported name as written) of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours, written = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule; `from pkg import name` the package itself.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            names = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        written.update(names)
        ours.update(owner for owner in map(_owner, names) if owner and owner != module)
    return ours, written


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _part(module: str) -> str:
    """The engine's parts: kernels, each sub-package of engine/, each top-level module of engine/."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "engine" and len(parts) > 1 else parts[0]


def test_the_graph_is_read():
    assert {"engine.recipe", "engine.training.step", "shards.build", "kernels"} <= set(MODULES)
    assert "engine.training.step" in GRAPH["engine.train"][0]  # an import inside a function counts


def test_no_module_import_cycle():
    assert _cycle({module: ours for module, (ours, _) in GRAPH.items()}) is None


def test_no_cycle_between_the_engines_parts():
    edges: dict[str, set[str]] = {}
    for module, (ours, _) in GRAPH.items():
        if module.split(".")[0] in ("engine", "kernels"):
            edges.setdefault(_part(module), set()).update(_part(o) for o in ours if _part(o) != _part(module))
    assert _cycle(edges) is None


def test_only_modules_that_build_a_pipeline_import_dali():
    importers = {module for module, (_, written) in GRAPH.items()
                 if any(name == "nvidia.dali" or name.startswith("nvidia.dali.") for name in written)}
    builders = {module for module in importers if "pipeline_def" in MODULES[module].read_text(encoding="utf-8")}
    assert importers == builders, sorted(importers - builders)
    assert "engine.data.pipeline" in builders


@pytest.mark.parametrize("module", ["engine.recipe", "engine.train", "engine.data", "engine.jepa"])
def test_reading_a_recipe_loads_no_dali(module):
    code = (f"import sys, {module}; loaded = sorted(m for m in sys.modules if m.startswith('nvidia.dali')); "
            f"print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
