"""UCF-101 in its published layout.

    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ROOT/ucfTrainTestlist/classInd.txt        "1 ApplyEyeMakeup"   (1-based)
    ROOT/ucfTrainTestlist/trainlist0{1,2,3}.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ROOT/ucfTrainTestlist/testlist0{1,2,3}.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Splits `train` and `test` of the official split chosen by `--ucf-split 1|2|3`. Labels are the
classInd index minus one; test entries take their label from the class folder. Keys are the file stems
(`v_ApplyEyeMakeup_g08_c01`), unique across the dataset.
"""
from __future__ import annotations

from pathlib import Path

from shards.errors import LayoutError
from shards.items import SourceItem, SourceListing, deduplicate_keys, make_item, select_splits
from shards.sources._layout import AdapterOptions, read_lines, require_dir, require_root

DATASET = "ucf101"
SPLITS = {"train": "train", "test": "test"}
LIST_PREFIX = {"train": "trainlist", "test": "testlist"}


def _read_class_index(path: Path) -> list[str]:
    expected = 'lines "<index> <ClassName>" numbered 1..N (e.g. "1 ApplyEyeMakeup")'
    classes: list[str] = []
    for number, line in read_lines(path, expected):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            raise LayoutError(f"{path}:{number}: {line!r} is not line {len(classes) + 1} of {expected}")
        classes.append(parts[1])
    if not classes:
        raise LayoutError(f"{path}: no classes; expected {expected}")
    return classes


def _read_split_list(list_path: Path, video_root: Path, root: Path,
                     classes: list[str]) -> tuple[list[SourceItem], list[dict]]:
    """The samples of a split list, and the entries rejected with a reason (a space inside a name)."""
    by_lower_name = {name.lower(): index for index, name in enumerate(classes)}
    expected = '"<Class>/<file>.avi" optionally followed by a 1-based label'
    items, rejects = [], []
    for number, line in read_lines(list_path, expected):
        parts = line.split()
        # "<name> <label>" or "<name>": any other whitespace lies inside the name. The official lists
        # hold none; a renamed or hand-edited entry rejects that entry only, as a broken file would.
        has_label = len(parts) >= 2 and parts[-1].isdigit()
        name_parts = parts[:-1] if has_label else parts
        if len(name_parts) > 1:
            rejects.append({"source": f"{list_path.relative_to(root).as_posix()}:{number}",
                            "reason": f"entry {line!r}: a space inside the file name (or a label that is not a "
                                      f"number); expected {expected}"})
            continue
        relative = parts[0].replace("\\", "/")
        folder, _, filename = relative.rpartition("/")
        if not folder or not filename or ".." in relative.split("/"):
            raise LayoutError(f"{list_path}:{number}: {line!r} is not {expected}")
        if folder.lower() not in by_lower_name:
            raise LayoutError(f"{list_path}:{number}: class folder {folder!r} is not in classInd.txt")
        label = by_lower_name[folder.lower()]
        if has_label:
            if not 1 <= int(parts[1]) <= len(classes):
                raise LayoutError(f"{list_path}:{number}: label {parts[1]!r} is not in classInd.txt (1..{len(classes)})")
            if int(parts[1]) - 1 != label:
                raise LayoutError(f"{list_path}:{number}: label {parts[1]} names {classes[int(parts[1]) - 1]!r} "
                                  f"but the file is in folder {folder!r}")
        path = video_root / folder / filename
        items.append(make_item(root, path, Path(filename).stem, label, classes[label], "video"))
    return items, rejects


def scan(root: Path, splits: list[str] | None, options: AdapterOptions) -> SourceListing:
    require_root(root, "UCF-101/ and ucfTrainTestlist/")
    if options.ucf_split not in (1, 2, 3):
        raise LayoutError(f"--ucf-split {options.ucf_split}: expected 1, 2 or 3")
    video_root = require_dir(root / "UCF-101", "the 101 class folders of .avi files")
    list_dir = require_dir(root / "ucfTrainTestlist", "classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt")
    classes = _read_class_index(list_dir / "classInd.txt")
    listing = SourceListing(DATASET, classes)
    for split in select_splits(splits, SPLITS, DATASET):
        list_path = list_dir / f"{LIST_PREFIX[split]}0{options.ucf_split}.txt"
        if not list_path.is_file():
            raise LayoutError(f"{list_path}: file not found; expected the official {split} list of split "
                              f"{options.ucf_split} (pick another with --ucf-split)")
        items, rejects = _read_split_list(list_path, video_root, root, classes)
        listing.splits[split] = deduplicate_keys(items)
        listing.rejects[split] = rejects
    return listing
