"""A rank stops as for SIGTERM when the `deepspeed` launcher above it goes away.

`deepspeed engine/train.py` puts two processes above each rank: the runner (`deepspeed`, the PID a user or a
scheduler sees) and the per-node launcher (`python -m deepspeed.launcher.launch`) it starts. The per-node
launcher passes SIGTERM/SIGINT on to the ranks, but on one node the runner passes nothing on (it installs
handlers only for multi-node pdsh runs): `kill <runner>` ended the runner alone, while the per-node launcher
and the ranks trained on unseen. So each rank watches the launcher processes above it and, once one of them
has exited, sends itself SIGTERM: engine.training.faults.StopSignal then checkpoints and the rank exits 143,
as for a SIGTERM to the rank itself. A Ctrl-C in a terminal reaches every process of the foreground group
directly, so there the rank is already stopping for SIGINT (exit 130) and the extra SIGTERM is ignored.

The watch is a poll of the parent links once a second, not a wait on pidfds: a link that changed (a process
exited and its child was re-parented) cannot be mistaken for a reused PID, and one /proc read a second is
nothing next to a training step. Linux only (/proc); elsewhere nothing is watched.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

# How the runner and the per-node launcher appear in /proc/<pid>/cmdline.
_LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner")
_LAUNCHER_SCRIPTS = ("deepspeed", "ds")
POLL_SECONDS = 1.0


def parent_of(pid: int) -> int | None:
    """The parent pid from /proc (None once the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_deepspeed_launcher(argv: list[str]) -> bool:
    """The runner (`deepspeed ...`, `python .../deepspeed ...`, `python -m deepspeed.launcher.runner`) or the
    per-node launcher (`python -u -m deepspeed.launcher.launch ...`)."""
    return (any(arg in _LAUNCHER_MODULES for arg in argv[:4])
            or any(os.path.basename(arg) in _LAUNCHER_SCRIPTS for arg in argv[:2]))


def launcher_links(pid: int | None = None) -> list[tuple[int, int]]:
    """(child, parent) pairs from `pid` (default: this process) up through the deepspeed launcher processes
    above it; empty when its parent is no launcher (`python -m engine.train` from a shell)."""
    links = []
    child = os.getpid() if pid is None else pid
    parent = parent_of(child)
    while parent is not None and parent > 1 and is_deepspeed_launcher(command_line(parent)):
        links.append((child, parent))
        child, parent = parent, parent_of(parent)
    return links


def broken_link(links: list[tuple[int, int]]) -> int | None:
    """The launcher pid of the first link whose child is gone or has another parent now, or None."""
    return next((parent for child, parent in links if parent_of(child) != parent), None)


@contextlib.contextmanager
def stop_with_launcher(announce: bool = True):
    """While the block runs, a daemon thread sends this process SIGTERM once a launcher above it has exited
    (`announce`: say so on stderr; rank 0 only, one line for the run)."""
    links = launcher_links()
    if not links:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            gone = broken_link(links)
            if gone is not None:
                if announce:
                    print(f"the deepspeed launcher (pid {gone}) has exited: stopping as for SIGTERM", file=sys.stderr,
                          flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
