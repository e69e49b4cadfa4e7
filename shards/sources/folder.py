"""Any dataset laid out as class folders: ROOT/<split>/<class>/<file> (videos, images, or both).

Splits are the sub-folders of ROOT (never the build's OUT folder, which may lie inside ROOT). Classes
are the sorted union of class folder names over every split folder (not only the ones being built), so
labels agree between splits built separately.
Keys are `<split>_<class>_<file stem>` (sanitised), unique across splits.
"""
from __future__ import annotations

from pathlib import Path

from shards.errors import LayoutError
from shards.items import SAFE_KEY, SourceListing, deduplicate_keys, make_item, media_kind, select_splits
from shards.sources._layout import AdapterOptions, require_root, sorted_subdirs

DATASET = "folder"


def scan(root: Path, splits: list[str] | None, options: AdapterOptions) -> SourceListing:
    require_root(root, "<split>/<class>/<video or image files>")
    split_dirs = {path.name: path for path in sorted_subdirs(root, options.exclude)}
    if not split_dirs:
        raise LayoutError(f"{root}: no split folders; expected {root}/<split>/<class>/<files>")
    classes = sorted({class_dir.name for split_dir in split_dirs.values()
                      for class_dir in sorted_subdirs(split_dir, options.exclude)})
    if not classes:
        raise LayoutError(f"{root}: no class folders; expected {root}/<split>/<class>/<files>")
    label_of = {name: index for index, name in enumerate(classes)}
    listing = SourceListing(DATASET, classes)
    for split in select_splits(splits, {name: name for name in split_dirs}, f"{root} (its sub-folders)"):
        if not SAFE_KEY.match(split):
            raise LayoutError(f"{split_dirs[split]}: split folder names become shard names; expected letters, "
                              "digits, '_' or '-' only")
        items = []
        for class_dir in sorted_subdirs(split_dirs[split], options.exclude):
            for path in sorted(class_dir.iterdir()):
                kind = media_kind(path) if path.is_file() else None
                if kind is not None:
                    key_text = f"{split}_{class_dir.name}_{path.stem}"
                    items.append(make_item(root, path, key_text, label_of[class_dir.name], class_dir.name, kind))
        listing.splits[split] = deduplicate_keys(items)
    return listing
