"""The `synth` source wiring: generator called once, each part built by its real adapter into OUT/<part>.

The generator is replaced by one that writes the miniature fixture trees, so this checks the builder's
side (part -> adapter, dataset names, splits, arguments passed on) in about a second; the synth
package's own tests cover what it generates.
"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import fixtures_raw as raw
from shards.build import main

EXPECTED_SPLITS = {"synth-ucf": {"train", "test"}, "synth-ssv2": {"train", "val"}, "synth-in": {"train", "val"},
                   "synth-diving": {"train", "test"}}


@pytest.fixture
def fake_generator(monkeypatch):
    return raw.install_fake_synth_generator(monkeypatch)


def test_synth_builds_every_part_with_its_real_adapter(fake_generator, tmp_path):
    code = main(["synth", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "shards"), "--seed", "3",
                 "--workers", "1", "--quiet"])
    assert code == 0
    assert fake_generator == [{"out_root": tmp_path / "raw", "scale": "demo", "seed": 3, "workers": 1}]
    for part, splits in EXPECTED_SPLITS.items():
        index = pq.read_table(tmp_path / "shards" / part / "index.parquet").to_pylist()
        assert {row["dataset"] for row in index} == {part}
        assert {row["split"] for row in index} == splits
    codecs = {row["codec"] for row in pq.read_table(tmp_path / "shards" / "synth-in" / "index.parquet").to_pylist()}
    assert codecs == {"jpeg"}


def test_synth_refuses_split_selection(fake_generator, tmp_path, capsys):
    code = main(["synth", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "shards"), "--split", "train"])
    assert code == 2 and "drop --split" in capsys.readouterr().err
    assert fake_generator == [] and not (tmp_path / "shards").exists()
