"""`shards.build --out s3://...` (shards/remote_out.py) against moto's S3 server: the uploaded folder holds
the same bytes as a local build, a rerun uploads nothing new, a second split merges into the remote index,
and the loader reads the uploaded folder."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fixtures_raw as raw  # noqa: E402
from remote_servers import S3_MISSING, has_s3  # noqa: E402
from shards.build import main  # noqa: E402


pytestmark = pytest.mark.skipif(not has_s3(), reason=S3_MISSING)


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "pets"
    raw.make_folder(root, clips_per_class=2, frames=12)
    (root / "train/dog/empty.avi").write_bytes(b"")  # a reject travels to the remote manifest too
    return root


@pytest.fixture()
def s3():
    import s3fs

    from remote_servers import moto_s3

    with moto_s3():
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        if not fs.exists("bucket"):  # moto keeps its state per process, across servers
            fs.mkdir("bucket")
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()


def _build(root: Path, out: str, *extra: str) -> int:
    return main(["folder", "--root", str(root), "--out", out, "--quiet", "--shard-max-samples", "2", "--workers", "1",
                 *extra])


def test_remote_out_matches_local_and_reruns_are_no_ops(raw_tree, s3, tmp_path, capsys):
    assert _build(raw_tree, str(tmp_path / "local" / "pets")) == 0
    url = "s3://bucket/shards/pets"
    assert _build(raw_tree, url, "--split", "train", "--staging", str(tmp_path / "staging")) == 0
    assert _build(raw_tree, url, "--split", "val", "--staging", str(tmp_path / "staging2")) == 0  # another machine
    local = {p.name: p.read_bytes() for p in (tmp_path / "local" / "pets").iterdir() if p.is_file()}
    remote = {Path(p).name: s3.cat_file(p) for p in s3.find("bucket/shards/pets")}
    assert sorted(remote) == sorted(local)
    tars = [name for name in local if name.endswith(".tar")]
    assert tars and all(remote[name] == local[name] for name in tars)
    # index and manifest: same rows and entries (the split-by-split build merges in another order of work)
    import io
    import json

    import pyarrow.parquet as pq
    assert pq.read_table(io.BytesIO(remote["index.parquet"])).equals(pq.read_table(io.BytesIO(local["index.parquet"])))
    assert json.loads(remote["manifest.json"]) == json.loads(local["manifest.json"])
    assert "empty.avi" in remote["manifest.json"].decode()
    capsys.readouterr()
    assert _build(raw_tree, url, "--staging", str(tmp_path / "staging3")) == 0
    out = capsys.readouterr().out
    assert "already built" in out and "uploaded 2 files" in out  # index and manifest only, no tar again


def test_loader_reads_the_uploaded_folder(raw_tree, s3, tmp_path):
    from engine.data import DatasetSpec
    from engine.data.index import load_dataset_index, read_member

    url = "s3://bucket/shards/pets2"
    assert _build(raw_tree, url, "--staging", str(tmp_path / "staging")) == 0
    index = load_dataset_index(DatasetSpec(url, split="val"))
    local = load_dataset_index(DatasetSpec(str(tmp_path / "staging"), split="val"))
    assert list(index.keys) == list(local.keys) and index.shard_paths[0].startswith("s3://")
    for r in range(len(index)):
        args = (int(index.media_offset[r]), int(index.media_size[r]))
        assert read_member(index.shard_paths[index.shard_id[r]], *args) == \
            read_member(local.shard_paths[local.shard_id[r]], *args)


def test_missing_backend_or_bad_url_is_one_line(raw_tree, tmp_path, capsys):
    assert _build(raw_tree, "nosuchscheme://bucket/x", "--staging", str(tmp_path / "st")) == 2
    assert "nosuchscheme" in capsys.readouterr().err
