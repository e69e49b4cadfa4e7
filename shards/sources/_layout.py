"""Checks shared by the adapters: every failure is one LayoutError line naming the path and what is expected."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.errors import LayoutError


@dataclass(frozen=True)
class AdapterOptions:
    """Source-specific switches from the CLI (each adapter reads only its own)."""

    ucf_split: int = 1
    class_list: Path | None = None
    # The build's OUT folder. It may lie inside ROOT (folder layout: ROOT/shards), and a rerun must not
    # read its own output as a split or class folder.
    exclude: Path | None = None


def require_root(root: Path, expected: str) -> Path:
    if not root.is_dir():
        raise LayoutError(f"{root}: raw root not found; expected a folder holding {expected}")
    return root


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path}: folder not found; expected {expected}")
    return path


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: file not found; expected {expected}")
    return path


def read_json(path: Path, expected: str) -> Any:
    require_file(path, expected)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: not valid JSON ({error}); expected {expected}") from None


def read_entry_list(path: Path, required: tuple[str, ...], expected: str) -> list[dict]:
    """A JSON list of objects that each hold the `required` keys (SSv2 and Diving-48 split files)."""
    entries = read_json(path, expected)
    if not isinstance(entries, list):
        raise LayoutError(f"{path}: expected {expected}")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(key not in entry for key in required):
            keys = " or ".join(repr(key) for key in required)
            raise LayoutError(f"{path}: entry {position} lacks {keys}; expected {expected}")
    return entries


def read_lines(path: Path, expected: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines; CRLF files (as UCF-101 ships them) work."""
    require_file(path, expected)
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def sorted_subdirs(path: Path, exclude: Path | None = None) -> list[Path]:
    """Visible sub-folders, without `exclude` (the build's own output folder)."""
    excluded = exclude.resolve() if exclude is not None else None
    return sorted(child for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")
                  and (excluded is None or child.resolve() != excluded))
