"""Source adapters on miniature trees in the published layouts, and the one-line structural errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fixtures_raw as raw
from shards.build import main
from shards.errors import LayoutError
from shards.items import SAFE_KEY
from shards.sources import ADAPTERS, AdapterOptions


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("raw")
    return {
        "ucf101": (base / "ucf", raw.make_ucf101(base / "ucf", frames=4)),
        "ssv2": (base / "ssv2", raw.make_ssv2(base / "ssv2", frames=4)),
        "imagenet100": (base / "in", raw.make_imagenet100(base / "in")),
        "diving48": (base / "div", raw.make_diving48(base / "div", frames=4)),
        "folder": (base / "fold", raw.make_folder(base / "fold", frames=4)),
    }


def scan(source: str, root: Path, splits=None, **options):
    return ADAPTERS[source].scan(root, splits, AdapterOptions(**options))


def test_ucf101_lists_official_split_with_class_index_labels(trees):
    root, expected = trees["ucf101"]
    listing = scan("ucf101", root)
    assert listing.classes == raw.UCF_CLASSES
    assert set(listing.splits) == {"train", "test"}
    for split in ("train", "test"):
        got = [(item.source, item.label) for item in listing.splits[split]]
        assert got == [(f"UCF-101/{path}", label - 1) for path, label in expected[split]]
    handstand = [item for item in listing.splits["test"] if item.label == 2]
    assert handstand[0].key == "v_HandStandPushups_g01_c01" and handstand[0].label_name == "HandstandPushups"


def test_ssv2_maps_templates_through_labels_json_and_names_validation_val(trees):
    root, expected = trees["ssv2"]
    listing = scan("ssv2", root)
    assert list(listing.splits) == ["train", "val"]
    assert listing.classes == [template.replace("[", "").replace("]", "") for template in raw.SSV2_TEMPLATES]
    for item, entry in zip(listing.splits["val"], expected["validation"]):
        assert item.key == entry["id"] and item.source == f"20bn-something-something-v2/{entry['id']}.webm"
        assert listing.classes[item.label] == entry["template"].replace("[", "").replace("]", "")
    assert list(scan("ssv2", root, ["validation"]).splits) == ["val"]


@pytest.mark.parametrize("class_list", ["json", "txt"])
def test_imagenet100_reads_both_class_list_forms_with_sorted_wnid_labels(tmp_path, class_list):
    raw.make_imagenet100(tmp_path, class_list=class_list)
    listing = scan("imagenet100", tmp_path)
    assert listing.classes == sorted(raw.IN_WNIDS)
    assert [item.key for item in listing.splits["val"]] == ["ILSVRC2012_val_00000002", "ILSVRC2012_val_00000005",
                                                            "ILSVRC2012_val_00000008"]
    assert all(item.label_name == listing.classes[item.label] and item.kind == "image"
               for items in listing.splits.values() for item in items)


def test_diving48_joins_vocabulary_words_into_label_names(trees):
    root, expected = trees["diving48"]
    listing = scan("diving48", root)
    assert listing.classes == ["_".join(words) for words in raw.DIVING_VOCAB]
    got = [(item.key, item.label, item.source) for item in listing.splits["test"]]
    assert got == [(entry["vid_name"], entry["label"], f"rgb/{entry['vid_name']}.mp4") for entry in expected["test"]]


def test_folder_adapter_shares_classes_between_splits_and_prefixes_keys(trees):
    root, _ = trees["folder"]
    listing = scan("folder", root, ["val"])
    assert listing.classes == ["cat", "dog"] and list(listing.splits) == ["val"]
    kinds = {item.key: item.kind for item in listing.splits["val"]}
    assert kinds == {"val_cat_clip_0": "video", "val_cat_clip_1": "video", "val_dog_clip_0": "video",
                     "val_dog_clip_1": "video", "val_dog_still": "image"}
    assert all(SAFE_KEY.match(key) for key in kinds)


def run_cli(source: str, root: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main([source, "--root", str(root), "--out", str(out), "--workers", "1", "--quiet", *extra])
    return code, capsys.readouterr().err


def expect_layout_error(source, root, tmp_path, capsys, *fragments, extra=()):
    out = tmp_path / "out"
    code, err = run_cli(source, root, out, capsys, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists(), "a structural error must stop the build before anything is written"


def copy_tree(trees, source: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trees[source][0], tmp_path / source))


def test_missing_root_is_one_line_exit_2(tmp_path, capsys):
    expect_layout_error("ucf101", tmp_path / "nowhere", tmp_path, capsys, "nowhere", "raw root not found")


def test_ucf101_missing_split_file(trees, tmp_path, capsys):
    root = copy_tree(trees, "ucf101", tmp_path)
    (root / "ucfTrainTestlist" / "testlist01.txt").unlink()
    expect_layout_error("ucf101", root, tmp_path, capsys, "testlist01.txt", "file not found")
    expect_layout_error("ucf101", root, tmp_path, capsys, "trainlist02.txt", extra=("--split", "train", "--ucf-split", "2"))


def test_ucf101_label_absent_from_class_index(trees, tmp_path, capsys):
    root = copy_tree(trees, "ucf101", tmp_path)
    train_list = root / "ucfTrainTestlist" / "trainlist01.txt"
    train_list.write_bytes(train_list.read_bytes().replace(b" 2\r\n", b" 9\r\n", 1))
    expect_layout_error("ucf101", root, tmp_path, capsys, "trainlist01.txt:", "label '9' is not in classInd.txt")
    test_list = root / "ucfTrainTestlist" / "testlist01.txt"
    test_list.write_text("Skydiving/v_Skydiving_g01_c01.avi\r\n")
    expect_layout_error("ucf101", root, tmp_path, capsys, "testlist01.txt:1", "'Skydiving'", extra=("--split", "test"))


def test_ssv2_template_absent_from_labels_json(trees, tmp_path, capsys):
    root = copy_tree(trees, "ssv2", tmp_path)
    train = root / "labels" / "train.json"
    entries = json.loads(train.read_text())
    entries[1]["template"] = "Juggling [something]"
    train.write_text(json.dumps(entries))
    expect_layout_error("ssv2", root, tmp_path, capsys, "train.json", "'Juggling something'", "labels.json")


def test_imagenet100_class_folder_absent_from_class_list(trees, tmp_path, capsys):
    root = copy_tree(trees, "imagenet100", tmp_path)
    raw.write_image(root / "train" / "n09999999" / "n09999999_0.JPEG")
    expect_layout_error("imagenet100", root, tmp_path, capsys, "n09999999", "Labels.json")
    (root / "Labels.json").unlink()
    expect_layout_error("imagenet100", root, tmp_path, capsys, "no class list found", "--class-list")


def test_diving48_label_outside_vocabulary(trees, tmp_path, capsys):
    root = copy_tree(trees, "diving48", tmp_path)
    test_file = root / "Diving48_V2_test.json"
    entries = json.loads(test_file.read_text())
    entries[0]["label"] = 48
    test_file.write_text(json.dumps(entries))
    expect_layout_error("diving48", root, tmp_path, capsys, "Diving48_V2_test.json", "label 48", "Diving48_vocab.json")


def test_unknown_split_and_bad_arguments(trees, tmp_path, capsys):
    root = trees["diving48"][0]
    expect_layout_error("diving48", root, tmp_path, capsys, "--split 'val'", "test, train", extra=("--split", "val"))
    expect_layout_error("diving48", root, tmp_path, capsys, "--gop 32", extra=("--gop", "32"))
    expect_layout_error("diving48", root, tmp_path, capsys, "WebM holds VP9 only",
                        extra=("--codec", "h264", "--container", "webm"))


def test_listed_name_cannot_escape_the_root(trees, tmp_path):
    root = copy_tree(trees, "ssv2", tmp_path)
    train = root / "labels" / "train.json"
    entries = json.loads(train.read_text())
    entries[0]["id"] = "../../etc/passwd"
    train.write_text(json.dumps(entries))
    with pytest.raises(LayoutError, match="outside the raw root"):
        scan("ssv2", root)


def test_duplicate_entries_and_colliding_names(trees, tmp_path):
    root = copy_tree(trees, "diving48", tmp_path)
    train = root / "Diving48_V2_train.json"
    entries = json.loads(train.read_text())
    train.write_text(json.dumps(entries + entries[:1]))
    with pytest.raises(LayoutError, match="listed twice"):
        scan("diving48", root, ["train"])
    folder = tmp_path / "fold"
    raw.write_image(folder / "train" / "cat" / "a.b.jpg")
    raw.write_image(folder / "train" / "cat" / "a_b.jpg", seed=1)
    keys = [item.key for item in scan("folder", folder).splits["train"]]
    assert len(set(keys)) == 2 and all(SAFE_KEY.match(key) and key.startswith("train_cat_a_b") for key in keys)
