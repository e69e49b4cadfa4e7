"""What a build does with bad input and how it ends: classes left empty (warning, --strict), videos too
short to carry motion, an OUT folder inside ROOT, a malformed split-file entry, no litter, and a
killed build that says one line instead of the pool workers' tracebacks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import subprocess
import sys
from pathlib import Path

import pytest

import fixtures_raw as raw
from proc_helpers import wait_until
from shards.build import main
from shards.transcode import MIN_VIDEO_FRAMES, Encoded, Rejected, TranscodeSettings, transcode_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "ucf"
    raw.make_ucf101(root)
    return root


def build(source: str, root: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main([source, "--root", str(root), "--out", str(out), "--workers", "1", "--quiet", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rejects(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {r["source"]: r["reason"] for entry in manifest["splits"].values() for r in entry["rejects"]}


def test_class_absent_on_disk_warns_per_split_and_strict_fails(ucf_tree, tmp_path, capsys):
    """classInd.txt and both split lists name Basketball, but its folder is gone."""
    root = Path(shutil.copytree(ucf_tree, tmp_path / "ucf"))
    shutil.rmtree(root / "UCF-101" / "Basketball")

    code, _, err = build("ucf101", root, tmp_path / "strict", capsys, "--strict")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--strict" in err and "'Basketball'" in err
    assert not (tmp_path / "strict").exists(), "--strict must refuse before any work"

    code, _, err = build("ucf101", root, tmp_path / "out", capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("class 'Basketball' has no samples" in line for line in warnings), err
    assert {line.split(":")[1].strip() for line in warnings} == {"ucf101/train", "ucf101/test"}

    # The same OUT rerun with --strict: nothing to build, and the empty class still fails it.
    code, _, err = build("ucf101", root, tmp_path / "out", capsys, "--strict")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --strict: 2 class(es) have no samples"), err


def test_rejects_that_empty_a_class_fail_strict_after_the_build(ucf_tree, tmp_path, capsys):
    root = Path(shutil.copytree(ucf_tree, tmp_path / "ucf"))
    for clip in (root / "UCF-101" / "Basketball").iterdir():
        clip.write_bytes(b"")  # on disk, so only the build finds out
    code, _, err = build("ucf101", root, tmp_path / "out", capsys, "--strict", "--split", "train")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "ucf101/train 'Basketball'" in err, err
    assert all(reason.startswith("empty file") for reason in rejects(tmp_path / "out").values())


@pytest.mark.parametrize("frames", [1, MIN_VIDEO_FRAMES - 1])
def test_video_shorter_than_two_tubelets_is_rejected(tmp_path, frames):
    path = tmp_path / "short.avi"
    raw.write_video(path, frames)
    result = transcode_job((str(path), "video", TranscodeSettings()))
    assert isinstance(result, Rejected) and result.reason.startswith(f"too short: {frames} frame"), result
    raw.write_video(path, MIN_VIDEO_FRAMES)
    assert isinstance(transcode_job((str(path), "video", TranscodeSettings())), Encoded)
    raw.write_image(tmp_path / "still.jpg")
    assert isinstance(transcode_job((str(tmp_path / "still.jpg"), "image", TranscodeSettings())), Encoded)


def test_out_inside_root_is_never_read_as_input(tmp_path, capsys):
    root = tmp_path / "pets"
    for split in ("train", "val"):
        raw.write_video(root / split / "cat" / "a.avi", 8)
        raw.write_image(root / split / "dog" / "b.jpg")
    out = root / "shards"
    assert build("folder", root, out, capsys)[0] == 0
    code, stdout, _ = build("folder", root, out, capsys)
    assert code == 0 and stdout.count("nothing to do") == 2, stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"} and manifest["classes"] == ["cat", "dog"]


def test_space_in_a_split_file_entry_rejects_that_entry_only(ucf_tree, tmp_path, capsys):
    root = Path(shutil.copytree(ucf_tree, tmp_path / "ucf"))
    lists = root / "ucfTrainTestlist"
    train = lists / "trainlist01.txt"
    train.write_bytes(train.read_bytes().replace(b"v_Basketball_g03_c01.avi 2", b"v_Basketball g03_c01.avi 2"))
    test = lists / "testlist01.txt"
    test.write_bytes(test.read_bytes() + b"ApplyEyeMakeup/v_Apply EyeMakeup_g02_c01.avi\r\n")
    code, _, err = build("ucf101", root, tmp_path / "out", capsys)
    assert code == 0, err
    found = rejects(tmp_path / "out")
    assert set(found) == {"ucfTrainTestlist/trainlist01.txt:3", "ucfTrainTestlist/testlist01.txt:4"}, found
    assert all("a space inside the file name" in reason for reason in found.values())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["test"]["count"]) == (5, 3)


def test_a_build_leaves_no_lock_file(tmp_path, capsys):
    root = tmp_path / "pets"
    raw.write_image(root / "train" / "cat" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".catalog.lock").write_bytes(b"")  # left by an earlier version of the builder
    assert build("folder", root, out, capsys)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["index.parquet", "manifest.json", "train-000000.tar"]


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "many"
    for class_name in ("left", "right"):
        for n in range(10):
            raw.write_video(root / "train" / class_name / f"c{n:02d}.avi", 24, seed=n, height=48, width=64)
    return root


def _as_from_a_terminal() -> None:
    """SIGINT at its default in the build, as a command typed in a terminal has it. A suite started in the
    background (`make test &`, some CI runners) passes SIGINT down ignored, and Python then leaves it
    ignored (as it should: a background job is not the terminal's to interrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how, signum, code", [
    ("group", signal.SIGINT, 130),     # Ctrl-C in a terminal: the whole process group gets SIGINT
    ("parent", signal.SIGTERM, 143),   # kill <pid>
    ("parent", signal.SIGKILL, -9),    # kill -9 <pid>: nothing to say, but the workers must not speak either
])
def test_killed_build_says_one_line_and_workers_no_traceback(many_clips, tmp_path, how, signum, code):
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        process = subprocess.Popen(
            [sys.executable, "-m", "shards.build", "folder", "--root", str(many_clips), "--out", str(out),
             "--workers", "2", "--quiet", "--shard-max-samples", "2"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_as_from_a_terminal)
        try:
            # Seconds on an idle machine; 300 s only bounds a hang, and an early exit is reported as such.
            wait_until((out / ".building-train" / "state.json").is_file, process, 300, "the build journalled a shard")
            (os.killpg if how == "group" else os.kill)(process.pid, signum)
            signalled_at = time.time()
            _, err = process.communicate(timeout=120)  # returns once every worker has closed stderr too
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        # On a loaded machine this process can be descheduled between seeing the journal and signalling for
        # longer than the rest of the build takes: a build whose index (its last write) is older than the
        # signal says nothing about signals. Try again, up to three builds. A build that ignores the signal
        # writes its index seconds after it, and fails below.
        index = out / "index.parquet"
        done_before_signal = index.is_file() and index.stat().st_mtime <= signalled_at
        if not done_before_signal:
            break
    else:
        pytest.fail("three builds finished before the signal was sent (a machine too busy to interrupt a "
                    "3-second build mid-way)")
    assert process.returncode == code, err
    assert "Traceback" not in err and "Error" not in err, err
    if code > 0:
        assert len(err.strip().splitlines()) == 1 and "rerun the same command" in err, err
