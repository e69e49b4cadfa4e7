"""A build killed mid-way (SIGKILL of a real subprocess), rerun with the same arguments, equals a clean build."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fixtures_raw as raw
from proc_helpers import wait_until
from shards.build import main

REPO = Path(__file__).resolve().parents[1]
CLIPS_PER_CLASS = 16


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "many"
    for class_name in ("left", "right"):
        for n in range(CLIPS_PER_CLASS):
            raw.write_video(root / "train" / class_name / f"c{n:02d}.avi", 24, seed=n, height=48, width=64)
    (root / "train" / "left" / "c05.avi").write_bytes(b"")  # a reject inside an already finished shard
    return root


def arguments(root: Path, out: Path) -> list[str]:
    return ["folder", "--root", str(root), "--out", str(out), "--workers", "1", "--quiet", "--shard-max-samples", "3"]


def test_killed_build_resumes_to_the_clean_result(raw_tree, tmp_path, capsys):
    clean = tmp_path / "clean"
    assert main(arguments(raw_tree, clean)) == 0

    for attempt in range(3):
        killed = tmp_path / f"killed{attempt}"
        process = subprocess.Popen([sys.executable, "-m", "shards.build", *arguments(raw_tree, killed)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = killed / ".building-train" / "state.json"
        try:
            # Wait until at least two shards are journalled (the reject is then behind us), then kill at once.
            # The build writes 11 shards of 3 transcoded clips: seconds between the second and the end.
            wait_until(lambda: state.is_file() and len(list(killed.glob("train-*.tar"))) >= 2, process, 300,
                       "two shards were journalled")
            done_before_kill = (killed / "index.parquet").is_file()  # the build's last write
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        # This process descheduled (a loaded machine) for longer than the rest of the build: it finished
        # before the kill, which tests nothing. Try again, up to three builds.
        if not done_before_kill:
            break
    else:
        pytest.fail("three builds finished before they could be killed (a machine too busy to interrupt a "
                    "build mid-way)")
    assert process.returncode == -signal.SIGKILL, f"the build exited with {process.returncode}, not killed"
    assert not (killed / "index.parquet").exists()
    finished_before = {path.name: path.read_bytes() for path in killed.glob("train-*.tar")}

    assert main(arguments(raw_tree, killed)) == 0
    assert "resumed an interrupted build" in capsys.readouterr().out
    assert (killed / "index.parquet").read_bytes() == (clean / "index.parquet").read_bytes()
    assert (killed / "manifest.json").read_text() == (clean / "manifest.json").read_text().replace(
        str(clean), str(killed))
    tars = sorted(path.name for path in clean.glob("*.tar"))
    assert tars == sorted(path.name for path in killed.glob("*.tar"))
    assert not list(killed.glob("*.tmp")) and not (killed / ".building-train").exists()
    assert all((killed / name).read_bytes() == (clean / name).read_bytes() for name in tars)
    assert all(finished_before[name] == (killed / name).read_bytes() for name in finished_before)
    keys = pq.read_table(killed / "index.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 2 * CLIPS_PER_CLASS - 1
