"""Every command the README and docs tell a user to type runs the way they write it: `python benchmarks/X.py`
and `python -m package.module`, each asked for `--help` from the repository root in a fresh interpreter
(a script named like a package, e.g. benchmarks/kernels.py beside the `kernels` package, used to import
itself instead). Slow only because each command imports torch: ~4 s each on 2 cores."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "shards" / "README.md", REPO / "kernels" / "README.md",
        *sorted((REPO / "docs").glob("*.md"))]
# `python benchmarks/x.py`, `python3 benchmarks/gpu/x.py`, or a bare `benchmarks/x.py --flag` in a table cell
SCRIPT = re.compile(r"(?:\bpython3? |`)(benchmarks/[\w/]+\.py)\b")
MODULE = re.compile(r"\bpython3? -m\s+([A-Za-z_][\w.]*)")  # a command may wrap after -m
NOT_OURS = {"pip", "venv", "pytest"}


def named_commands() -> list[tuple[str, ...]]:
    """The commands the docs name, and every benchmark script run by its path."""
    commands = {(f"benchmarks/{path.name}",) for path in (REPO / "benchmarks").glob("*.py")
                if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8")}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        commands |= {(script,) for script in SCRIPT.findall(text) if (REPO / script).is_file()}
        commands |= {("-m", module) for module in MODULE.findall(text) if module.split(".")[0] not in NOT_OURS}
    return sorted(commands)


def test_the_docs_name_the_commands_this_test_runs():
    commands = named_commands()
    assert ("benchmarks/kernels.py",) in commands and ("-m", "shards.build") in commands
    assert ("benchmarks/remote_loader.py",) in commands and ("-m", "shards.verify") in commands
    assert ("benchmarks/objectives.py",) in commands and ("-m", "benchmarks.learning_search.search") in commands


@pytest.mark.slow
@pytest.mark.parametrize("command", named_commands(), ids=" ".join)
def test_named_command_answers_help(command):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"python {' '.join(command)} --help:\n{result.stderr[-1500:]}"
    assert "usage:" in result.stdout, result.stdout[-500:]


def undocumented_options(help_text: str) -> list[str]:
    """Options of an argparse --help text with no help line (argparse puts it beside or under the option)."""
    lines = help_text.split("options:", 1)[1].splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  -") or line.startswith("  -h, --help"):
            continue
        beside = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if len(beside) < 2 and not below.startswith(" " * 8):
            missing.append(beside[0])
    return missing


@pytest.mark.parametrize("script", ["benchmarks/remote_loader.py", "benchmarks/remote_stall.py"])
def test_remote_benchmark_help_is_whole_and_documents_every_option(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    text = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True).stdout
    description = text.split("\n\n")[1]  # after the usage block
    assert description.rstrip().endswith("."), f"the description stops mid-sentence: {description!r}"
    assert "--out" in text and not undocumented_options(text), undocumented_options(text)
