"""`python -m shards.verify`: webdataset reads a built shard set back and it agrees with its index and manifest;
a changed byte, a moved offset, a lost shard or a sample the index does not know is one line each, exit 1."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

import fixtures_raw as raw
from shards.build import main as build
from shards.verify import main as verify


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    raw.make_ucf101(root / "raw")
    assert build(["ucf101", "--root", str(root / "raw"), "--out", str(root / "out"), "--ucf-split", "1", "--workers",
                  "1", "--quiet", "--shard-max-samples", "2"]) == 0
    return root / "out"


@pytest.fixture
def copy(built, tmp_path):
    return shutil.copytree(built, tmp_path / "out")


def test_a_built_set_verifies_and_lists_every_sample(built, capsys):
    assert verify([str(built), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    index = pq.read_table(built / "index.parquet").to_pylist()
    assert sorted(line.split("\t")[2] for line in listed) == sorted(row["key"] for row in index)
    assert verify([str(built), "--split", "test"]) == 0


def test_a_changed_byte_is_found(copy, capsys):
    tar = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    row = next(r for r in pq.read_table(copy / "index.parquet").to_pylist() if r["shard"] == tar.name)
    data[row["media_offset"] + 10] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert verify([str(copy)]) == 1
    assert f"{tar}: size or sha256 differs from the manifest's" in capsys.readouterr().err


def test_a_wrong_offset_and_a_missing_shard_are_found(copy, capsys):
    table = pq.read_table(copy / "index.parquet")
    offsets = table.column("media_offset").to_pylist()
    offsets[0] += 512
    pq.write_table(table.set_column(table.schema.get_field_index("media_offset"), "media_offset",
                                    [offsets]), copy / "index.parquet")
    lost = sorted(copy.glob("test-*.tar"))[-1]
    lost.unlink()
    assert verify([str(copy)]) == 1
    err = capsys.readouterr().err
    assert "are not the tar's member" in err and f"{lost}: missing (listed in the manifest)" in err


def test_not_a_shard_folder_exits_2(tmp_path, capsys):
    assert verify([str(tmp_path)]) == 2
    assert "no index.parquet and manifest.json" in capsys.readouterr().err
