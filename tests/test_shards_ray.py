"""`shards.build --executor ray` (shards/executors.py) on a local Ray cluster of 2 CPUs started here:

- the synth source (its real adapters on the miniature part trees) gives byte-identical tars, index and
  manifest to the local executor, rejects included; so does --ray-ship-inputs on a folder with bad files;
- a Ray build whose driver is SIGKILLed mid-way resumes (rerun of the same command) to the clean result.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures_raw as raw
from shards.build import main

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # one local Ray cluster for the module: ~10 s to start on 2 cores


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only test cluster
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "/raw/" not in f"/{p.relative_to(folder)}"}


def test_synth_parts_are_byte_identical_to_the_local_executor(cluster, tmp_path, monkeypatch):
    raw.install_fake_synth_generator(monkeypatch)
    common = ["synth", "--root", str(tmp_path / "raw"), "--quiet", "--workers", "2", "--shard-max-samples", "3"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert sorted(local) == sorted(remote)
    assert {name.split("/")[0] for name in local} == {"synth-ucf", "synth-ssv2", "synth-in", "synth-diving"}
    assert sum(name.endswith(".tar") for name in local) >= 8
    assert all(local[name] == remote[name] for name in local)


def test_shipped_inputs_give_the_same_rejects(cluster, tmp_path):
    root = tmp_path / "pets"
    raw.make_folder(root, clips_per_class=2, frames=12)
    clip = raw.encode_video(raw.moving_frames(24), ".webm")
    (root / "train/cat/cut.webm").write_bytes(clip[: len(clip) // 2])
    (root / "train/dog/empty.avi").write_bytes(b"")
    (root / "train/dog/garbage.avi").write_bytes(b"not a video at all" * 20)
    raw.write_zero_frame_avi(root / "val/cat/none.avi")
    common = ["folder", "--root", str(root), "--quiet", "--workers", "2", "--shard-max-samples", "2"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-ship-inputs"]) == 0
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and all(local[name] == remote[name] for name in local)
    assert b"garbage.avi" in local["manifest.json"] and b"cut.webm" in local["manifest.json"]
    assert b"vjepa-shard-" not in remote["manifest.json"]  # no temporary path in a reject reason


def test_killed_ray_build_resumes_to_the_clean_result(cluster, tmp_path, capsys):
    root = tmp_path / "many"
    for class_name in ("left", "right"):
        for n in range(10):
            raw.write_video(root / "train" / class_name / f"c{n:02d}.avi", 24, seed=n, height=48, width=64)
    (root / "train" / "left" / "c03.avi").write_bytes(b"")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    arguments = ["folder", "--root", str(root), "--workers", "2", "--quiet", "--shard-max-samples", "3"]
    assert main([*arguments, "--out", str(clean)]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "shards.build", *arguments, "--out", str(killed), "--executor",
                                "ray", "--ray-address", cluster], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    state = killed / ".building-train" / "state.json"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if state.is_file() and len(list(killed.glob("train-*.tar"))) >= 2:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the build finished (or failed) before it could be killed"
    assert not (killed / "index.parquet").exists()
    finished_before = {path.name: path.read_bytes() for path in killed.glob("train-*.tar")}
    capsys.readouterr()
    assert main([*arguments, "--out", str(killed), "--executor", "ray"]) == 0
    assert "resumed an interrupted build" in capsys.readouterr().out
    assert (killed / "index.parquet").read_bytes() == (clean / "index.parquet").read_bytes()
    assert (killed / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    tars = sorted(path.name for path in clean.glob("*.tar"))
    assert tars == sorted(path.name for path in killed.glob("*.tar"))
    assert all((killed / name).read_bytes() == (clean / name).read_bytes() for name in tars)
    assert all(finished_before[name] == (killed / name).read_bytes() for name in finished_before)
    assert not (killed / ".building-train").exists()


def test_an_explicit_address_uses_an_available_auth_token(tmp_path, monkeypatch, capsys):
    """`ray start --head` enables token auth when ~/.ray/auth_token exists, but Ray's driver only picks the
    token up for address "auto": an explicit HOST:PORT used to be refused after ~20 s (InvalidAuthToken).
    No cluster here: ray.init is replaced by one that records the mode it was called with and refuses."""
    from shards.errors import LayoutError
    from shards.executors import RayPool
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a" * 64)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    from ray._raylet import AuthenticationTokenLoader, Config
    AuthenticationTokenLoader.instance().reset_cache()
    seen = []

    def refusing_init(**kwargs):
        seen.append((kwargs.get("address"), os.environ.get("RAY_AUTH_MODE")))
        raise ray.exceptions.AuthenticationError("Authentication failed: InvalidAuthToken")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refusing_init)
    try:
        with pytest.raises(LayoutError) as caught:
            RayPool("10.0.0.1:6379", max_inflight=2, ship_inputs=False)
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    assert seen == [("10.0.0.1:6379", "token")]
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "RAY_AUTH_MODE=token" in message and "10.0.0.1:6379" in message
    assert "auth token" in capsys.readouterr().err
