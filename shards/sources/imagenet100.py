"""ImageNet-100 in its common published layouts.

    ROOT/train/<wnid>/*.JPEG
    ROOT/val/<wnid>/*.JPEG
    ROOT/<class list>     either Labels.json {"n01440764": "tench, Tinca tinca", ...}
                          or a text file with one wnid per line, optionally followed by a name
                          (imagenet100.txt, classes.txt, ...), or any such file given by --class-list

Splits `train` and `val`. Labels follow the wnids in sorted order (the ImageNet convention, and the
same whichever form the class list takes); `label_name` is the wnid. A class folder absent from the
class list is a structural error. Keys are the file stems (`n01440764_10026`, `ILSVRC2012_val_00000293`).
"""
from __future__ import annotations

from pathlib import Path

from shards.errors import LayoutError
from shards.items import SourceListing, deduplicate_keys, make_item, media_kind, select_splits
from shards.sources._layout import AdapterOptions, read_json, read_lines, require_dir, require_root, sorted_subdirs

DATASET = "imagenet100"
SPLITS = {"train": "train", "val": "val"}
CLASS_LIST_NAMES = ("Labels.json", "labels.json", "imagenet100.txt", "classes.txt", "class_list.txt",
                    "wnids.txt", "labels.txt")
CLASS_LIST_FORMS = ('Labels.json ({"<wnid>": "<name>"}) or a text file with one wnid per line '
                    "(imagenet100.txt, classes.txt, ...)")


def _find_class_list(root: Path, given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise LayoutError(f"--class-list {given}: file not found; expected {CLASS_LIST_FORMS}")
        return given
    for name in CLASS_LIST_NAMES:
        if (root / name).is_file():
            return root / name
    raise LayoutError(f"{root}: no class list found; expected {CLASS_LIST_FORMS}, or pass --class-list FILE")


def read_class_list(path: Path) -> list[str]:
    """The wnids of a class list file, sorted."""
    if path.suffix.lower() == ".json":
        table = read_json(path, CLASS_LIST_FORMS)
        wnids = list(table) if isinstance(table, (dict, list)) else []
        if not wnids or not all(isinstance(wnid, str) for wnid in wnids):
            raise LayoutError(f"{path}: expected {CLASS_LIST_FORMS}")
    else:
        wnids = [line.split()[0] for _, line in read_lines(path, CLASS_LIST_FORMS)]
        if not wnids:
            raise LayoutError(f"{path}: no classes; expected {CLASS_LIST_FORMS}")
    if len(set(wnids)) != len(wnids):
        raise LayoutError(f"{path}: a class is listed twice; expected each wnid once")
    return sorted(wnids)


def scan(root: Path, splits: list[str] | None, options: AdapterOptions) -> SourceListing:
    require_root(root, "train/<wnid>/*.JPEG, val/<wnid>/*.JPEG and a class list")
    class_list = _find_class_list(root, options.class_list)
    classes = read_class_list(class_list)
    label_of = {wnid: index for index, wnid in enumerate(classes)}
    listing = SourceListing(DATASET, classes)
    for split in select_splits(splits, SPLITS, DATASET):
        split_dir = require_dir(root / split, f"class folders {split}/<wnid>/*.JPEG")
        loose = [child.name for child in split_dir.iterdir() if child.is_file() and media_kind(child) == "image"]
        if loose:
            raise LayoutError(f"{split_dir}: holds images directly ({loose[0]}, ...); "
                              f"expected class folders {split}/<wnid>/*.JPEG")
        items = []
        for class_dir in sorted_subdirs(split_dir, options.exclude):
            if class_dir.name not in label_of:
                raise LayoutError(f"{class_dir}: class folder {class_dir.name!r} is not in {class_list}")
            for path in sorted(class_dir.iterdir()):
                if path.is_file() and media_kind(path) == "image":
                    items.append(make_item(root, path, path.stem, label_of[class_dir.name], class_dir.name, "image"))
        listing.splits[split] = deduplicate_keys(items)
    return listing
