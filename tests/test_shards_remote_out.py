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


def test_a_destination_that_cannot_be_written_fails_before_any_work(raw_tree, s3, tmp_path, capsys, monkeypatch):
    staging = tmp_path / "staging"
    assert _build(raw_tree, "s3://bucket-that-does-not-exist/x", "--staging", str(staging)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bucket 'bucket-that-does-not-exist' does not exist" in err, err
    assert not staging.exists()  # nothing planned, transcoded or staged
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials from anywhere, and no waiting for them
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    assert _build(raw_tree, "s3://bucket/x", "--staging", str(staging)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "credentials" in err.lower() and "--out s3://bucket/x" in err, err
    assert not staging.exists()


def test_an_unreachable_endpoint_is_one_line_at_once(raw_tree, tmp_path, capsys, monkeypatch):
    import time

    from remote_servers import S3_ENV, free_port
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    assert _build(raw_tree, "s3://bucket/x", "--staging", str(tmp_path / "st")) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 5, "a refused connection was retried"
    assert len(err.splitlines()) == 1 and "unreachable" in err and "Connection refused" in err, err


def test_the_upload_shows_its_bytes(raw_tree, s3, tmp_path, capsys):
    assert main(["folder", "--root", str(raw_tree), "--out", "s3://bucket/shards/shown", "--shard-max-samples", "2",
                 "--workers", "1", "--staging", str(tmp_path / "staging")]) == 0
    captured = capsys.readouterr()
    sent = sum(p.stat().st_size for p in (tmp_path / "staging").iterdir() if p.is_file() and not p.name.startswith("."))
    bar = [line for line in captured.err.replace("\r", "\n").splitlines() if line.startswith("uploading to s3://")]
    assert bar and "100%" in bar[-1], captured.err[-800:]
    shown = bar[-1].split("|")[2].split()[0]  # "12.3k/12.3k"
    done, total = shown.split("/")
    assert done == total and total.rstrip("kMG") and abs(_kib(total) - sent / 1024) <= max(0.1, sent / 1024 * 0.01)


def _kib(text: str) -> float:
    scale = {"k": 1, "M": 1024, "G": 1024 ** 2}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text) / 1024


def test_verify_reads_an_uploaded_set_and_finds_a_changed_byte(raw_tree, s3, tmp_path, capsys):
    from shards.verify import main as verify

    url = "s3://bucket/shards/checked"
    assert _build(raw_tree, url, "--staging", str(tmp_path / "staging")) == 0
    capsys.readouterr()
    assert verify([url, "--list"]) == 0
    captured = capsys.readouterr()
    import pyarrow.parquet as pq
    keys = sorted(pq.read_table(tmp_path / "staging" / "index.parquet").column("key").to_pylist())
    assert sorted(line.split("\t")[2] for line in captured.out.splitlines()) == keys
    assert "every shard agrees" in captured.err
    tar = sorted(name for name in s3.ls("bucket/shards/checked") if name.endswith(".tar"))[0]
    data = bytearray(s3.cat_file(tar))
    data[-2000] ^= 0xFF
    s3.pipe_file(tar, bytes(data))
    assert verify([url]) == 1
    assert f"s3://{tar}: size or sha256 differs from the manifest's" in capsys.readouterr().err
    assert verify(["s3://bucket/shards/nothing-here"]) == 2
    assert "no index.parquet and manifest.json" in capsys.readouterr().err
