"""Whole builds through the CLI: tar members, index offsets, manifest, rejects, merging and determinism."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import fixtures_raw as raw
from shards.build import main
from shards.catalog import INDEX_SCHEMA
from shards.items import SAFE_KEY

BAD_FILES = {"train/cat/cut.webm": "truncated", "train/dog/empty.avi": "empty file",
             "val/cat/none.avi": "zero frames decoded"}


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "pets"
    raw.make_folder(root, clips_per_class=2, frames=20)
    clip = raw.encode_video(raw.moving_frames(24), ".webm")
    (root / "train/cat/cut.webm").write_bytes(clip[: len(clip) // 2])
    (root / "train/dog/empty.avi").write_bytes(b"")
    raw.write_zero_frame_avi(root / "val/cat/none.avi")
    return root


def build(root: Path, out: Path, *extra: str) -> int:
    return main(["folder", "--root", str(root), "--out", str(out), "--quiet", "--shard-max-samples", "2", *extra])


@pytest.fixture(scope="module")
def built(raw_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "pets"
    assert build(raw_tree, out, "--workers", "2") == 0
    return out


def test_index_offsets_give_the_exact_member_bytes(built):
    index = pq.read_table(built / "index.parquet")
    assert index.schema.equals(INDEX_SCHEMA)
    rows = index.to_pylist()
    assert [(r["split"], r["shard"], r["media_offset"]) for r in rows] == sorted(
        (r["split"], r["shard"], r["media_offset"]) for r in rows)
    for row in rows:
        with open(built / row["shard"], "rb") as shard, tarfile.open(built / row["shard"]) as tar:
            shard.seek(row["media_offset"])
            media = shard.read(row["media_size"])
            shard.seek(row["json_offset"])
            meta = json.loads(shard.read(row["json_size"]))
            assert media == tar.extractfile(f"{row['key']}.{row['media_ext']}").read()
        assert meta == {name: row[name] for name in ("label", "label_name", "dataset", "num_frames", "fps",
                                                      "width", "height", "codec")} | {"source": meta["source"]}
        assert row["duration"] == pytest.approx(row["num_frames"] / row["fps"] if row["fps"] else 0.0)
        assert (row["media_ext"], row["codec"]) in {("mp4", "vp9"), ("jpg", "jpeg")}


def test_tar_members_are_key_then_json_with_safe_names(built):
    keys = set()
    for shard in sorted(built.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert len(names) % 2 == 0 and len(names) <= 4  # --shard-max-samples 2
        for media_name, json_name in zip(names[::2], names[1::2]):
            key, ext = media_name.split(".")
            assert SAFE_KEY.match(key) and ext in {"mp4", "jpg"} and json_name == f"{key}.json"
            keys.add(key)
    assert len(keys) == pq.read_table(built / "index.parquet").num_rows
    assert not list(built.glob("*.tmp")) and not list(built.glob(".building-*"))


def test_manifest_counts_checksums_and_rejects(built):
    manifest = json.loads((built / "manifest.json").read_text())
    index = pq.read_table(built / "index.parquet").to_pylist()
    assert manifest["dataset"] == "pets" and manifest["classes"] == ["cat", "dog"] and manifest["format_version"] == 1
    assert set(manifest["splits"]) == {"train", "val"}
    rejected = {}
    for split, entry in manifest["splits"].items():
        assert entry["count"] == sum(row["split"] == split for row in index) == sum(s["count"] for s in entry["shards"])
        for shard in entry["shards"]:
            data = (built / shard["name"]).read_bytes()
            assert shard["size"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
        rejected |= {reject["source"]: reject["reason"] for reject in entry["rejects"]}
    assert rejected.keys() == BAD_FILES.keys()
    assert all(rejected[source].startswith(BAD_FILES[source]) for source in BAD_FILES)
    assert manifest["build"]["codec"] == "vp9" and "workers" not in manifest["build"]


def test_split_by_split_single_worker_build_is_byte_identical(raw_tree, built, tmp_path):
    """Merging splits one at a time, with another worker count, gives the same index and tars."""
    out = tmp_path / "pets"
    assert build(raw_tree, out, "--workers", "1", "--split", "val") == 0
    assert build(raw_tree, out, "--workers", "1", "--split", "train") == 0
    assert (out / "index.parquet").read_bytes() == (built / "index.parquet").read_bytes()
    shards = sorted(path.name for path in built.glob("*.tar"))
    assert shards == sorted(path.name for path in out.glob("*.tar"))
    assert all((out / name).read_bytes() == (built / name).read_bytes() for name in shards)


def test_rebuild_is_a_no_op_and_other_arguments_need_overwrite(raw_tree, built, capsys):
    before = (built / "index.parquet").read_bytes()
    assert build(raw_tree, built, "--workers", "1") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert build(raw_tree, built, "--workers", "1", "--short-side", "16") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (built / "index.parquet").read_bytes() == before


def test_overwrite_with_bigger_shards_removes_stale_ones(raw_tree, tmp_path):
    out = tmp_path / "pets"
    assert build(raw_tree, out, "--workers", "1", "--split", "val") == 0
    assert len(list(out.glob("val-*.tar"))) == 3  # 5 samples, 2 per shard
    assert main(["folder", "--root", str(raw_tree), "--out", str(out), "--quiet", "--workers", "1",
                 "--split", "val", "--overwrite"]) == 0
    assert sorted(path.name for path in out.glob("val-*.tar")) == ["val-000000.tar"]
    assert pq.read_table(out / "index.parquet").column("shard").to_pylist() == ["val-000000.tar"] * 5


def test_shards_close_at_the_target_size(raw_tree, tmp_path):
    out = tmp_path / "pets"
    assert main(["folder", "--root", str(raw_tree), "--out", str(out), "--quiet", "--workers", "1",
                 "--split", "train", "--shard-size-mb", "0.006"]) == 0
    sizes = [path.stat().st_size for path in sorted(out.glob("train-*.tar"))]
    counts = [shard["count"] for shard in json.loads((out / "manifest.json").read_text())["splits"]["train"]["shards"]]
    assert len(sizes) > 1 and all(size <= 6000 + 10240 or count == 1 for size, count in zip(sizes, counts))


def test_dali_cpu_decodes_a_sample_read_at_the_index_offsets(built):
    """The loader's path: bytes at the recorded offsets -> external_source -> decoders.video on CPU."""
    fn = pytest.importorskip("nvidia.dali.fn")
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    rows = [row for row in pq.read_table(built / "index.parquet").to_pylist() if row["codec"] == "vp9"][:2]
    encoded = []
    for row in rows:
        with open(built / row["shard"], "rb") as shard:
            shard.seek(row["media_offset"])
            encoded.append(np.frombuffer(shard.read(row["media_size"]), dtype=np.uint8))

    @pipeline_def(batch_size=len(encoded), num_threads=1, device_id=None)
    def decode_pipeline():
        data = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8, ndim=1)
        return fn.decoders.video(data, device="cpu")

    pipeline = decode_pipeline()
    pipeline.build()
    (videos,) = pipeline.run()
    for sample, row in zip(range(len(rows)), rows):
        assert np.array(videos[sample]).shape == (row["num_frames"], row["height"], row["width"], 3)
