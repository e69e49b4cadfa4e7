"""Shards read from object storage (engine.data.remote): against a real HTTP server that honours Range
requests and moto's standalone S3 server, both started here on free loopback ports.

- the loader yields the same batches (keys and pixels) from http://, s3:// and file:// roots as from the path;
- every shard read is one ranged GET per member or per coalesced run, never a whole tar;
- transient 503s are retried with backoff; a missing shard is a one-line error; the member cache serves a
  second pass with no request and stays under its cap;
- resume from a loader state gives the same batches remotely;
- a demo training run reads its shards from S3 and from HTTP and its loss curve equals the local run's
  bit for bit (slow: three short training processes).
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from data_fixtures import FixtureSpec, sample_key, write_dataset  # noqa: E402
from engine.data import DatasetSpec, LoaderConfig  # noqa: E402
from engine.data.remote import Member, MemberCache, RemoteConfig, coalesce  # noqa: E402
from remote_servers import S3_MISSING, RangeHTTPServer, has_module, has_s3, moto_s3, upload_folder  # noqa: E402
from shards import storage  # noqa: E402

pytest.importorskip("aiohttp", reason="the cloud extra is not installed (pip install -e '.[cloud]')")


needs_s3 = pytest.mark.skipif(not has_s3(), reason=S3_MISSING)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    write_dataset(root / "vid", FixtureSpec("vid", 12, num_frames=16, height=32, width=32, samples_per_shard=4))
    write_dataset(root / "img", FixtureSpec("img", 6, images=True, height=24, width=24, samples_per_shard=3))
    write_dataset(root / "bad", FixtureSpec("bad", 6, num_frames=12, samples_per_shard=3,
                                            corrupt_keys=(sample_key("bad", 2),)))
    return root


@pytest.fixture(scope="module")
def http(shards):
    with RangeHTTPServer(shards) as server:
        yield server


def _config(*roots, **overrides) -> LoaderConfig:
    base = {"batch_size": 4, "num_frames": 4, "crop_size": 16, "decode_device": "cpu", "num_workers": 1,
            "num_threads": 1, "samples_per_epoch": 24, "seed": 3, "infinite": True}
    weights = [0.7, 0.3]
    specs = [DatasetSpec(root, weight=weights[i % 2]) for i, root in enumerate(roots)]
    return LoaderConfig(specs, **{**base, **overrides})


def _batches(cfg: LoaderConfig, count: int, state: dict | None = None) -> tuple[list[dict], dict]:
    from engine.data import VideoLoader

    loader = VideoLoader(cfg)
    try:
        if state is not None:
            loader.load_state_dict(state)
        stream = iter(loader)
        got = [next(stream) for _ in range(count)]
        return got, loader.state_dict()
    finally:
        loader.close()


def _same(a: list[dict], b: list[dict]) -> None:
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["dataset_id"], y["dataset_id"])


_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


# ------------------------------------------------------------------------------------------ unit level

def test_coalesce_merges_close_members_of_one_shard_only():
    members = [Member("u/a.tar", 5000, 100), Member("u/a.tar", 1000, 100), Member("u/b.tar", 1100, 50),
               Member("u/a.tar", 1200, 100), Member("u/a.tar", 90_000, 10)]
    runs = coalesce(members, gap=512, max_run=10_000)
    assert [(u, s, e, sorted(i)) for u, s, e, i in runs] == [
        ("u/a.tar", 1000, 1300, [1, 3]), ("u/a.tar", 5000, 5100, [0]), ("u/a.tar", 90_000, 90_010, [4]),
        ("u/b.tar", 1100, 1150, [2])]
    assert len(coalesce(members, gap=0, max_run=10_000)) == 5
    assert len(coalesce(members, gap=100_000, max_run=1_000_000)) == 2


def test_transient_errors_are_told_apart_from_permanent_ones():
    assert storage.is_transient(TimeoutError()) and storage.is_transient(ConnectionResetError())
    assert not storage.is_transient(FileNotFoundError("x")) and not storage.is_transient(PermissionError("x"))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return b"ok"

    retry = storage.Retry(attempts=5, base_delay=0.0)
    assert retry("flaky", flaky) == b"ok" and retry.retries == 2
    with pytest.raises(storage.StorageError, match="failed 2 times"):
        storage.Retry(attempts=2, base_delay=0.0)("down", lambda: (_ for _ in ()).throw(TimeoutError("slow")))


def test_a_refused_connection_is_not_transient():
    assert not storage.is_transient(ConnectionRefusedError(111, "Connection refused"))
    wrapped = OSError("Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]")
    assert not storage.is_transient(wrapped)
    try:
        raise RuntimeError("Could not connect to the endpoint URL") from ConnectionRefusedError(111, "refused")
    except RuntimeError as error:  # botocore-style: the refusal is the cause
        assert not storage.is_transient(error)
    assert storage.is_transient(ConnectionResetError()) and storage.is_transient(TimeoutError())


def test_an_unreachable_http_root_is_one_line_naming_it(tmp_path):
    from remote_servers import free_port

    from engine.data.index import load_dataset_index
    from engine.recipe import ConfigError, load_recipe
    root = f"http://127.0.0.1:{free_port()}/shards/synth-ucf"  # nothing listens there
    with pytest.raises(storage.StorageError, match=re.escape(f"{root}/index.parquet: unreachable: cannot connect to "
                                                             f"127.0.0.1") + ".*Connection refused"):
        load_dataset_index(DatasetSpec(root))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "ucf_fwm.yaml"
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe, [f"data.datasets=[{{root: '{root}'}}]"])
    assert "unreachable" in str(caught.value) and root in str(caught.value)
    assert "no index.parquet" not in str(caught.value) and len(str(caught.value).splitlines()) == 1


@needs_s3
def test_an_unreachable_s3_endpoint_is_one_line_at_once(monkeypatch):
    import time

    import s3fs
    from remote_servers import S3_ENV, free_port

    from engine.data.index import load_dataset_index
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match=f"unreachable.*{re.escape(endpoint)}.*Connection refused"):
        load_dataset_index(DatasetSpec("s3://lab-shards/synth-ucf"))
    assert time.monotonic() - start < 5, "a refused connection was retried"
    s3fs.S3FileSystem.clear_instance_cache()


def test_member_cache_keeps_under_its_cap(tmp_path):
    cache = MemberCache(tmp_path / "cache", max_bytes=10_000)
    for i in range(30):
        cache.put("v1", i * 1000, 1000, bytes([i]) * 1000)
    assert cache.usage() <= 10_000
    assert cache.get("v1", 29_000, 1000) == bytes([29]) * 1000       # the newest stay
    assert cache.get("v1", 0, 1000) is None                          # the oldest went
    assert cache.get("v2", 29_000, 1000) is None                     # another shard version never matches


# ------------------------------------------------------------------------------------------ HTTP server

def test_http_loader_matches_local_with_ranged_reads_only(shards, http):
    local, _ = _batches(_config(str(shards / "vid"), str(shards / "img")), 6)
    http.log.clear()
    cfg = _config(f"{http.url}/vid", f"{http.url}/img/", remote=RemoteConfig(coalesce_gap_kb=0))
    remote, _ = _batches(cfg, 6)
    _same(local, remote)
    tar_gets = http.log.gets(".tar")
    assert tar_gets, "no shard was read from the server"
    for _, path, header in tar_gets:                                   # one member per GET, never a whole tar
        match = _RANGE.match(header)
        assert match, f"GET {path} without a byte range"
        assert int(match.group(2)) - int(match.group(1)) + 1 < (shards / path.lstrip("/")).stat().st_size
    fetched_batches = 6 + 2 + 1                                        # + DALI's prefetch queue, + one in flight
    assert len(tar_gets) <= 4 * fetched_batches
    assert not [r for r in http.log.requests if r[0] == "HEAD"]        # sizes came from the manifests


def test_http_coalesced_runs_and_resume(shards, http):
    cfg = _config(f"{http.url}/vid", f"{http.url}/img")
    http.log.clear()
    straight, _ = _batches(cfg, 8)
    assert len(http.log.gets(".tar")) < 4 * (8 + 3)                    # members close together share a GET
    first, state = _batches(cfg, 3)
    resumed, _ = _batches(cfg, 5, state)
    _same(straight, first + resumed)


def test_http_transient_failures_are_retried(shards, http):
    local, _ = _batches(_config(str(shards / "vid")), 3)
    http.log.clear()
    http.log.fail_next = 3
    remote, _ = _batches(_config(f"{http.url}/vid", remote=RemoteConfig(backoff_s=0.01)), 3)
    _same(local, remote)
    assert http.log.failed == 3


def test_http_missing_shard_is_one_line(shards, http, tmp_path):
    import shutil

    copy = shards / "gone"
    shutil.copytree(shards / "vid", copy, dirs_exist_ok=True)
    (copy / "manifest.json").unlink()
    (copy / "train-000001.tar").unlink()
    from engine.data.index import load_dataset_index
    with pytest.raises(FileNotFoundError, match=r"shard missing: http://.*/gone/train-000001\.tar"):
        load_dataset_index(DatasetSpec(f"{http.url}/gone"))


def test_http_cache_serves_the_second_pass(shards, http, tmp_path):
    cfg = _config(f"{http.url}/vid", remote=RemoteConfig(cache_dir=str(tmp_path / "cache")))
    first, _ = _batches(cfg, 4)
    http.log.clear()
    second, _ = _batches(cfg, 4)
    _same(first, second)
    assert http.log.gets(".tar") == []


def test_http_bad_sample_is_skipped_as_locally(shards, http):
    cfg = dict(samples_per_epoch=12, num_frames=3, crop_size=8)
    local, state_local = _batches(_config(str(shards / "bad"), **cfg), 3)
    remote, state_remote = _batches(_config(f"{http.url}/bad", **cfg), 3)
    _same(local, remote)
    assert [s[2] for s in state_remote["skipped"]] == [s[2] for s in state_local["skipped"]] == [sample_key("bad", 2)]


def test_file_url_root_is_the_local_path(shards):
    local, _ = _batches(_config(str(shards / "vid")), 2)
    url, _ = _batches(_config(f"file://{shards / 'vid'}"), 2)
    _same(local, url)


# ------------------------------------------------------------------------------------------ S3 (moto)

@pytest.fixture(scope="module")
def s3(shards):
    if not has_s3():
        pytest.skip("s3fs and moto are not installed (pip install -r requirements-extras.txt)")
    import s3fs

    with moto_s3() as endpoint:
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("shards")
        for name in ("vid", "img"):
            upload_folder(shards / name, f"s3://shards/demo/{name}")
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()


@needs_s3
def test_s3_loader_matches_local(shards, s3):
    local, _ = _batches(_config(str(shards / "vid"), str(shards / "img")), 4)
    remote, _ = _batches(_config("s3://shards/demo/vid", "s3://shards/demo/img"), 4)
    _same(local, remote)


@needs_s3
def test_s3_missing_root_is_one_line(s3):
    from engine.data.index import load_dataset_index
    with pytest.raises(FileNotFoundError, match="no index.parquet at s3://shards/nothing"):
        load_dataset_index(DatasetSpec("s3://shards/nothing"))


# ------------------------------------------------------------------------------------------ training

def _losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_training_from_s3_and_http_matches_local_bit_for_bit(shards, http, tmp_path, monkeypatch):
    if not has_s3():
        pytest.skip("s3fs and moto are not installed (pip install -r requirements-extras.txt)")
    import s3fs
    import yaml

    from test_train import _run

    recipe = {
        "run": {"name": "local", "out_dir": str(tmp_path / "runs"), "seed": 3},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2},
        "predictor": {"preset": "tiny"},
        "objective": {"variant": "fwm"},
        "data": {"datasets": [{"root": str(shards / "vid"), "frame_step": 1}], "num_workers": 1, "num_threads": 1},
        "train": {"steps": 6, "global_batch": 4, "micro_batch": 2, "checkpoint_every": 100, "progress_bar": False,
                  "export_at_end": False},
        "optim": {"lr": 3.0e-3, "start_lr": 1.0e-3, "final_lr": 3.0e-3, "warmup_steps": 2},
        "ema": {"momentum": 0.99, "final_momentum": 0.99},
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with moto_s3():
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("train")
        upload_folder(shards / "vid", "s3://train/shards/vid")
        roots = {"local": str(shards / "vid"), "s3": "s3://train/shards/vid", "http": f"{http.url}/vid"}
        http.log.clear()
        tracked = has_module("mlflow")
        for name, root in roots.items():
            # the local run also exports (folder + model card) and tracks to MLflow's file store
            extra = ["--set", "train.export_at_end=true"] + (["--set", "log.mlflow.enabled=true"] if tracked else [])
            result = _run([sys.executable, "-m", "engine.train", "--recipe", str(path), "--set", f"run.name={name}",
                           "--set", f"data.datasets=[{{root: '{root}', frame_step: 1}}]",
                           *(extra if name == "local" else [])], timeout=300)
            assert result.returncode == 0, result.stderr[-2000:]
            resolved = yaml.safe_load((tmp_path / "runs" / name / "recipe.yaml").read_text())
            assert resolved["data"]["datasets"][0]["root"] == root           # the run really read from there
    assert http.log.gets("/vid/train-000000.tar") or http.log.gets("/vid/train-000001.tar")
    curves = {name: _losses(tmp_path / "runs" / name) for name in roots}
    assert len(curves["local"]) == 6
    assert curves["s3"] == curves["local"] and curves["http"] == curves["local"]
    # the trained encoder's export folder loads back as the same module as encoder.safetensors
    from engine.export import load_encoder
    folder = load_encoder(tmp_path / "runs/local/export")
    single = load_encoder(tmp_path / "runs/local/encoder.safetensors")
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(folder.forward_eval(video), single.forward_eval(video))
    card = (tmp_path / "runs/local/export/README.md").read_text()
    assert "fwm" in card and "6 steps" in card and str(shards / "vid") in card
    if tracked:
        import json

        from mlflow.tracking import MlflowClient
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store on request only
        run_id = json.loads((tmp_path / "runs/local/tracking.json").read_text())["mlflow"]
        client = MlflowClient((tmp_path / "runs/local/mlruns").resolve().as_uri())
        history = sorted((m.step, repr(m.value)) for m in client.get_metric_history(run_id, "loss"))
        assert [(str(step), value) for step, value in history] == curves["local"]   # the csv's values exactly
        assert "local-encoder" in {a.path for a in client.list_artifacts(run_id)}


# ------------------------------------------------------------------------------------------ evaluation

def test_evaluation_copies_a_remote_benchmark_folder_once(shards, http, tmp_path):
    from data_fixtures import write_benchmark_folder
    from engine.eval.remote import local_shards_root

    bench = write_benchmark_folder(shards / "evalroot" / "bench", train_clips=4, test_clips=2)
    root = local_shards_root(f"{http.url}/evalroot", ["bench", "absent"], cache_dir=tmp_path / "cache")
    copied = {p.name: p.read_bytes() for p in (Path(root) / "bench").iterdir()}
    assert copied == {p.name: p.read_bytes() for p in bench.iterdir()}
    http.log.clear()
    assert local_shards_root(f"{http.url}/evalroot/", ["bench"], cache_dir=tmp_path / "cache") == root
    assert http.log.gets(".tar") == []                                 # complete copies are reused
    assert local_shards_root(str(bench.parent), ["bench"]) == str(bench.parent)


@needs_s3
@pytest.mark.slow
def test_remote_loader_benchmark_takes_an_s3_url(shards, s3, tmp_path):
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.remote_loader import main as benchmark
    for name, source in (("synth-ucf", "vid"), ("synth-ssv2", "vid"), ("synth-in", "img")):
        upload_folder(shards / source, f"s3://shards/bench/{name}")
    out = tmp_path / "remote"
    assert benchmark(["--shards", "s3://shards/bench", "--batches", "2", "--rounds", "1", "--batch-size", "2",
                      "--frames", "4", "--crop", "16", "--frame-step", "1", "--workers", "1", "--threads", "1",
                      "--prefetch", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["shards"] == "s3://shards/bench" and set(report["rows"]) == {"s3", "s3 cached"}
    assert all(row["clips_per_s"] > 0 for row in report["rows"].values())
