"""Diving-48 V2 in its published layout.

    ROOT/rgb/<vid_name>.mp4
    ROOT/Diving48_V2_train.json   [{"vid_name": "-mmq0PT-u8k_00155", "label": 12,
    ROOT/Diving48_V2_test.json      "start_frame": 0, "end_frame": 63}, ...]
    ROOT/Diving48_vocab.json      48 lists [takeoff, somersault, twist, flight]

Splits `train` and `test`. `label_name` is the four vocabulary words joined by '_'
(e.g. "Back_15som_05Twis_FREE"). The V2 rgb clips are already trimmed to the dive, so the whole clip
is kept (start_frame/end_frame refer to the untrimmed source video). Keys are the vid_names.
"""
from __future__ import annotations

from pathlib import Path

from shards.errors import LayoutError
from shards.items import SourceListing, deduplicate_keys, make_item, select_splits
from shards.sources._layout import AdapterOptions, read_entry_list, read_json, require_dir, require_root

DATASET = "diving48"
SPLITS = {"train": "train", "test": "test"}
SPLIT_FILES = {"train": "Diving48_V2_train.json", "test": "Diving48_V2_test.json"}


def _read_vocab(path: Path) -> list[str]:
    expected = "a JSON list of [takeoff, somersault, twist, flight] lists of 4 strings"
    vocab = read_json(path, expected)
    if not isinstance(vocab, list) or not vocab:
        raise LayoutError(f"{path}: expected {expected}")
    for index, words in enumerate(vocab):
        if not (isinstance(words, list) and len(words) == 4 and all(isinstance(word, str) for word in words)):
            raise LayoutError(f"{path}: entry {index} is {words!r}; expected {expected}")
    return ["_".join(words) for words in vocab]


def scan(root: Path, splits: list[str] | None, options: AdapterOptions) -> SourceListing:
    require_root(root, "rgb/, Diving48_V2_train.json, Diving48_V2_test.json, Diving48_vocab.json")
    video_root = require_dir(root / "rgb", "the <vid_name>.mp4 clips")
    classes = _read_vocab(root / "Diving48_vocab.json")
    listing = SourceListing(DATASET, classes)
    expected = 'a JSON list of {"vid_name", "label", "start_frame", "end_frame"}'
    for split in select_splits(splits, SPLITS, DATASET):
        split_path = root / SPLIT_FILES[split]
        items = []
        for entry in read_entry_list(split_path, ("vid_name", "label"), expected):
            label = entry["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(classes):
                raise LayoutError(f"{split_path}: entry {entry['vid_name']!r}: label {label!r} is not an index "
                                  f"into Diving48_vocab.json (0..{len(classes) - 1})")
            name = str(entry["vid_name"])
            items.append(make_item(root, video_root / f"{name}.mp4", name, label, classes[label], "video"))
        listing.splits[split] = deduplicate_keys(items)
    return listing
