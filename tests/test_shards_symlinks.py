"""Symbolic links in a shard folder (issue 22 §2.3): writing never goes through one, reading follows them.

A build into an existing OUT used to open `train-000000.tar.tmp`, `index.parquet.tmp`, `manifest.json.tmp`
and the journal `.building-train/` by name, so links planted there overwrote their targets outside OUT.
Now the build refuses an OUT holding a link (one line naming it) before any work, and, should a link appear
after that check, every file is still created new (O_EXCL | O_NOFOLLOW), never through the link.
Reading (shards.verify, the loader's index) follows links: a shard folder may link tars from another disk.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fixtures_raw as raw
from shards.build import main as build_main

PLANTED = ["train-000000.tar.tmp", "index.parquet.tmp", "manifest.json.tmp", ".building-train"]
PRECIOUS = b"someone else's file\n"


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "fold"
    raw.write_image(root / "train" / "cat" / "a.jpg")
    raw.write_image(root / "train" / "dog" / "b.jpg", seed=1)
    return root


def build(root: Path, out: Path) -> int:
    return build_main(["folder", "--root", str(root), "--out", str(out), "--dataset-name", "fold", "--workers", "1",
                       "--quiet"])


def plant(out: Path, name: str, outside: Path) -> Path:
    """A link `out/name` to a file (a folder for the journal) outside OUT; returns the target."""
    out.mkdir(parents=True, exist_ok=True)
    target = outside / f"target-of-{name.strip('.')}"
    if name.startswith(".building-"):
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(PRECIOUS)
    (out / name).symlink_to(target)
    return target


def untouched(target: Path) -> bool:
    return list(target.iterdir()) == [] if target.is_dir() else target.read_bytes() == PRECIOUS


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("name", PLANTED)
def test_a_build_refuses_an_out_folder_holding_a_link(image_tree, tmp_path, capsys, name):
    out = tmp_path / "out"
    target = plant(out, name, tmp_path / "outside")
    code = build(image_tree, out)
    assert untouched(target)
    line = one_line(capsys.readouterr().err)
    assert code == 2 and str(out / name) in line and "symbolic link" in line and "fix:" in line, line
    assert [p.name for p in out.iterdir()] == [name]  # nothing written, the link left to its owner


@pytest.mark.parametrize("name", PLANTED)
def test_a_link_appearing_after_the_folder_check_is_not_written_through(image_tree, tmp_path, capsys, monkeypatch,
                                                                        name):
    """Without the up-front check (as if the link were planted while the build runs), each file the build
    creates still fails on the link instead of following it."""
    for module in ("shards.build", "shards.pipeline"):
        monkeypatch.setattr(f"{module}.refuse_links", lambda folder: None, raising=False)
    out = tmp_path / "out"
    target = plant(out, name, tmp_path / "outside")
    code = build(image_tree, out)
    assert untouched(target)
    line = one_line(capsys.readouterr().err)
    assert code == 2 and str(out / name) in line and "symbolic link" in line, line


def test_the_synth_generator_does_not_write_through_a_link(tmp_path):
    from shards.errors import LayoutError
    from shards.synth import media

    target = plant(tmp_path / "raw", "clip.mp4" + media.PARTIAL_SUFFIX, tmp_path / "outside")
    with pytest.raises(LayoutError, match="symbolic link"):
        media.write_atomic(tmp_path / "raw" / "clip.mp4", b"video bytes")
    assert untouched(target) and not (tmp_path / "raw" / "clip.mp4").exists()


def test_a_staged_upload_to_a_local_folder_does_not_write_through_a_link(tmp_path):
    from shards import storage

    source = tmp_path / "index.parquet"
    source.write_bytes(b"index bytes")
    target = plant(tmp_path / "bucket", "index.parquet.tmp", tmp_path / "outside")
    with pytest.raises(storage.StorageError, match="symbolic link"):
        storage.put_file(source, tmp_path / "bucket" / "index.parquet")
    assert untouched(target)


def test_reading_follows_links_to_tars_and_index_elsewhere(image_tree, tmp_path, capsys):
    """The policy for readers: a shard folder whose tars (and index files) are links to another disk verifies
    and loads like a real one; a build into it is refused (a build writes only real files into OUT)."""
    from engine.data import DatasetSpec
    from engine.data.index import load_dataset_index
    from shards.verify import main as verify_main

    out, elsewhere = tmp_path / "out", tmp_path / "other-disk"
    assert build(image_tree, out) == 0
    elsewhere.mkdir()
    for path in sorted(out.iterdir()):
        moved = Path(shutil.move(path, elsewhere / path.name))
        path.symlink_to(moved)
    capsys.readouterr()
    assert verify_main([str(out)]) == 0, capsys.readouterr().err
    index = load_dataset_index(DatasetSpec(root=str(out), split="train"))
    assert len(index.shard_paths) == 1 and Path(index.shard_paths[0]).is_symlink()
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    capsys.readouterr()
    assert build(image_tree, out) == 2
    assert "symbolic link" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
