"""What an adapter hands to the builder: the samples of each split, before any media work."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shards.errors import LayoutError

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class SourceItem:
    """One raw sample. `source` is the path relative to the raw root (posix), for provenance."""

    key: str
    path: Path
    source: str
    label: int
    label_name: str
    kind: str  # "video" or "image"


@dataclass
class SourceListing:
    """A dataset as an adapter sees it: class names in label order and the samples of each split."""

    dataset: str
    classes: list[str]
    splits: dict[str, list[SourceItem]] = field(default_factory=dict)
    # Per split: entries of a split file that name no usable sample ({"source", "reason"}). They are
    # rejected like a broken file, so one bad line does not stop a build of thousands.
    rejects: dict[str, list[dict]] = field(default_factory=dict)


def media_kind(path: Path) -> str | None:
    """'video', 'image', or None for a file the builder does not read (notes, checksums, ...)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def safe_key(text: str) -> str:
    """Map any name to `[A-Za-z0-9_-]+` (dots, slashes and spaces become '_')."""
    key = _UNSAFE_KEY_CHARS.sub("_", text).strip("_")
    return key or "sample"


def make_item(root: Path, path: Path, key_text: str, label: int, label_name: str, kind: str) -> SourceItem:
    """A sample whose file must lie under `root` (a listed name with '..' or '/' cannot escape it)."""
    # Lexical check, not resolve(): raw trees often hold symlinks to files stored elsewhere.
    try:
        source = Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).as_posix()
    except ValueError:
        raise LayoutError(f"{path}: a listed sample resolves outside the raw root {root}; "
                          "expected names without '..' or '/'") from None
    return SourceItem(key=safe_key(key_text), path=path, source=source,
                      label=label, label_name=label_name, kind=kind)


def deduplicate_keys(items: list[SourceItem]) -> list[SourceItem]:
    """Keys must be unique within OUT: names that collide after sanitising get a suffix derived from
    their source path, so the result does not depend on listing order."""
    seen_sources: set[str] = set()
    for item in items:
        if item.source in seen_sources:
            raise LayoutError(f"{item.path}: listed twice in one split; expected each sample once")
        seen_sources.add(item.source)
    counts: dict[str, int] = {}
    for item in items:
        counts[item.key] = counts.get(item.key, 0) + 1
    if all(count == 1 for count in counts.values()):
        return items
    unique = []
    for item in items:
        if counts[item.key] > 1:
            suffix = hashlib.sha1(item.source.encode()).hexdigest()[:8]
            item = SourceItem(f"{item.key}_{suffix}", item.path, item.source, item.label, item.label_name, item.kind)
        unique.append(item)
    return unique


def select_splits(requested: list[str] | None, official: dict[str, str], dataset: str) -> list[str]:
    """Resolve `--split` values against a source's split names (aliases allowed, e.g. validation->val)."""
    if not requested:
        return sorted(set(official.values()), key=list(official.values()).index)
    chosen = []
    for name in requested:
        if name not in official:
            names = ", ".join(sorted(set(official.values())))
            raise LayoutError(f"--split {name!r} is not a split of {dataset}; expected one of: {names}")
        if official[name] not in chosen:
            chosen.append(official[name])
    return chosen
