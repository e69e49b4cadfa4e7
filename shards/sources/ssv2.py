"""Something-Something V2 in its published layout.

    ROOT/20bn-something-something-v2/<id>.webm
    ROOT/labels/labels.json        {"Holding something next to something": "42", ...}
    ROOT/labels/train.json         [{"id": "78687", "label": "...", "template": "Holding [something]
    ROOT/labels/validation.json      next to [something]", "placeholders": [...]}, ...]

Splits: `train` (train.json) and `val` (validation.json; `--split validation` is accepted too).
test.json carries no labels and is not a split here. A template maps to its class by dropping the
square brackets. Keys are the numeric video ids.
"""
from __future__ import annotations

from pathlib import Path

from shards.errors import LayoutError
from shards.items import SourceListing, deduplicate_keys, make_item, select_splits
from shards.sources._layout import AdapterOptions, read_entry_list, read_json, require_dir, require_root

DATASET = "ssv2"
SPLITS = {"train": "train", "val": "val", "validation": "val"}
SPLIT_FILES = {"train": "train.json", "val": "validation.json"}


def template_to_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def _read_classes(path: Path) -> list[str]:
    expected = 'a JSON object {"<template without brackets>": "<index>"} with indices 0..N-1'
    table = read_json(path, expected)
    if not isinstance(table, dict) or not table:
        raise LayoutError(f"{path}: expected {expected}")
    try:
        by_index = {int(index): name for name, index in table.items()}
    except (TypeError, ValueError):
        raise LayoutError(f"{path}: a class index is not an integer; expected {expected}") from None
    if sorted(by_index) != list(range(len(table))):
        raise LayoutError(f"{path}: class indices are not 0..{len(table) - 1}; expected {expected}")
    return [by_index[index] for index in range(len(table))]


def scan(root: Path, splits: list[str] | None, options: AdapterOptions) -> SourceListing:
    require_root(root, "20bn-something-something-v2/ and labels/")
    video_root = require_dir(root / "20bn-something-something-v2", "the <id>.webm videos")
    labels_dir = require_dir(root / "labels", "labels.json, train.json, validation.json")
    classes = _read_classes(labels_dir / "labels.json")
    label_of = {name: index for index, name in enumerate(classes)}
    listing = SourceListing(DATASET, classes)
    expected = 'a JSON list of {"id", "label", "template", "placeholders"}'
    for split in select_splits(splits, SPLITS, DATASET):
        split_path = labels_dir / SPLIT_FILES[split]
        items = []
        for entry in read_entry_list(split_path, ("id", "template"), expected):
            name = template_to_class(str(entry["template"]))
            if name not in label_of:
                raise LayoutError(f"{split_path}: entry id {entry['id']}: template {entry['template']!r} "
                                  f"has no class {name!r} in labels.json")
            video_id = str(entry["id"])
            path = video_root / f"{video_id}.webm"
            items.append(make_item(root, path, video_id, label_of[name], name, "video"))
        listing.splits[split] = deduplicate_keys(items)
    return listing
