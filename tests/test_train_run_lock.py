"""One live run per run folder, and ranks that stop with their launcher (issue 22 §3.1), without DeepSpeed:

- the run folder's lock names its live holder in one line, and a SIGKILLed holder leaves it free at once,
  even while a child it forked (as DALI forks its reader workers) lives on;
- a rank whose `deepspeed` runner gets SIGTERM stops as for SIGTERM itself, although the per-node launcher
  between them lives on (the runner passes no signal on). Stand-ins for the two launcher processes carry the
  module names DeepSpeed's carry in their command lines.

tests/test_train_reliability.py::test_sigterm_to_the_deepspeed_runner_stops_the_rank_and_a_second_run_is_refused
does both with a real `deepspeed` launch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from proc_helpers import alive, read_line, wait_gone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Takes the lock, forks a child that outlives it, prints the child's pid, then waits to be killed.
HOLDER = textwrap.dedent("""
    import os, sys, time
    from engine.training.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
    time.sleep(600)
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_lock_names_its_live_holder_and_a_killed_holder_leaves_it_free(tmp_path):
    from engine.training.run_lock import RunInUse, RunLock

    run = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=_env(), stdout=subprocess.PIPE, text=True)
    forked = None
    try:
        forked = int(read_line(holder.stdout, 60, "the lock holder's forked child"))
        with pytest.raises(RunInUse) as refused:
            RunLock(run).acquire()
        line = str(refused.value)
        assert "\n" not in line and line.startswith(
            f"{run}: another run of this folder is still alive (pid {holder.pid} holds {run / 'run.lock'}); fix: "), line
        assert f"kill -TERM {holder.pid}" in line and "--resume auto" in line, line

        holder.kill()
        holder.wait()
        assert alive(forked)  # a forked child does not hold a POSIX lock: flock() would still be held here
        with RunLock(run).acquire():
            assert (run / "run.lock").read_text() == f"{os.getpid()}\n"
    finally:
        holder.kill()
        holder.wait()
        _kill([forked] if forked else [])


def test_the_lock_file_is_never_followed_through_a_link(tmp_path):
    from engine.training.run_lock import RunInUse, RunLock

    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (run / "run.lock").symlink_to(outside)
    with pytest.raises(RunInUse, match=r"run\.lock: cannot open the run's lock file .*fix: "):
        RunLock(run).acquire()
    assert outside.read_text() == "keep me\n"


# A launcher stand-in: argv [launcher.py, MODULE, *next]: runs `python *next` and waits.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, *sys.argv[2:]])
    time.sleep(600)
""")

# A rank stand-in: the trainer's two pieces, StopSignal inside stop_with_launcher; reports how it stopped.
RANK = textwrap.dedent("""
    import signal, sys, time
    from engine.training.faults import StopSignal
    from engine.training.launcher import stop_with_launcher
    with open(sys.argv[1], "w", buffering=1) as out:
        with stop_with_launcher(announce=False), StopSignal() as stop:
            out.write("ready\\n")
            while stop.received is None:
                time.sleep(0.05)
        out.write(f"stopped by {signal.Signals(stop.received).name}\\n")
        sys.exit(128 + stop.received)
""")


def test_a_rank_stops_as_for_sigterm_when_the_runner_above_its_launcher_gets_sigterm(tmp_path):
    import psutil

    from engine.training import launcher

    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "rank.py").write_text(RANK)
    report = tmp_path / "rank.out"
    launcher_py = str(tmp_path / "launcher.py")
    runner = subprocess.Popen([sys.executable, launcher_py, "deepspeed.launcher.runner",
                               launcher_py, "deepspeed.launcher.launch", str(tmp_path / "rank.py"), str(report)],
                              env=_env(), start_new_session=True)
    try:
        end = time.monotonic() + 60
        while not (report.exists() and "ready" in report.read_text()):
            assert time.monotonic() < end and runner.poll() is None, "the rank stand-in did not start"
            time.sleep(0.05)
        per_node = psutil.Process(runner.pid).children()
        assert len(per_node) == 1
        rank = per_node[0].children()
        assert len(rank) == 1 and launcher.launcher_links(rank[0].pid) == [(rank[0].pid, per_node[0].pid),
                                                                           (per_node[0].pid, runner.pid)]
        time.sleep(3 * launcher.POLL_SECONDS)
        assert report.read_text() == "ready\n"  # launchers alive: the watch does not fire

        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == -signal.SIGTERM
        assert wait_gone([rank[0].pid], 60) == [], "the rank still runs after its runner got SIGTERM"
        assert report.read_text() == "ready\nstopped by SIGTERM\n"
        assert per_node[0].is_running()  # the stop came from the watch, not from the per-node launcher
    finally:
        try:
            os.killpg(runner.pid, signal.SIGKILL)  # the stand-ins left in the group (a failed test's rank too)
        except ProcessLookupError:
            pass
        runner.wait()


def test_a_process_without_a_deepspeed_launcher_above_it_watches_nothing():
    from engine.training.launcher import is_deepspeed_launcher, launcher_links

    assert launcher_links() == []
    assert is_deepspeed_launcher(["/venv/bin/python3", "/venv/bin/deepspeed", "--num_gpus", "1", "train.py"])
    assert is_deepspeed_launcher(["/venv/bin/python3", "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30="])
    assert not is_deepspeed_launcher(["/bin/bash", "-c", "deepspeed train.py"])
    assert not is_deepspeed_launcher(["/venv/bin/python3", "-m", "pytest", "tests/test_deepspeed.py"])
