"""Helpers for tests that start processes: a free TCP port per launch, a line from a child with a timeout,
and waiting for processes that are not our children to exit, woken by the kernel rather than a poll loop.

Two test suites may run at once on one machine (two clones, two `make test`): nothing here uses a fixed
port or a fixed path.
"""
from __future__ import annotations

import os
import random
import select
import socket
import time

# Below Linux's ephemeral range (32768-60999), so an outgoing connection of another process cannot take the
# port between the check and the launcher's bind; above the well-known and registered-service ports.
_PORT_RANGE = (20000, 32000)
_random = random.SystemRandom()  # not the test's seeded `random`: two suites must not draw the same ports


def free_port() -> int:
    """A TCP port nothing listens on now (for --master_port / MASTER_PORT), different in every call."""
    for _ in range(200):
        port = _random.randrange(*_PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {_PORT_RANGE} after 200 tries")


def read_line(stream, timeout: float, what: str) -> str:
    """The next line a child process prints on `stream` (a text pipe), or an AssertionError saying that
    nothing came within `timeout` seconds (rather than blocking forever in readline())."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"{what}: no line within {timeout:.0f} s")
    line = stream.readline()
    if not line:
        raise AssertionError(f"{what}: the process closed its output without printing a line")
    return line


def _pid_state(pid: int) -> str | None:
    """The process's state letter from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie waiting to be reaped."""
    return _pid_state(pid) not in (None, "Z")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited (or is a zombie); returns those still alive after `timeout` seconds.

    Uses pidfds, which the kernel makes readable when the process exits, so the wait ends at the exit itself
    and a loaded machine only delays it; `timeout` bounds a real failure, it is not the expected duration."""
    end = time.monotonic() + timeout
    fds = {}
    try:
        for pid in pids:
            try:
                fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # already gone
            except (AttributeError, OSError):  # no pidfd on this kernel/Python: poll instead
                fds[pid] = None
        while True:
            left = [pid for pid in fds if alive(pid)]
            remaining = end - time.monotonic()
            if not left or remaining <= 0:
                return left
            waitable = [fds[pid] for pid in left if fds[pid] is not None]
            if waitable and len(waitable) == len(left):
                select.select(waitable, [], [], remaining)
            else:
                time.sleep(min(0.1, remaining))
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


def wait_until(condition, process, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll `condition()` while `process` (a Popen) runs. Returns as soon as it holds; an AssertionError that
    says which happened otherwise: the process exited first (with its exit code), or `timeout` seconds
    passed with the process still running (a bound for a hang on a loaded machine, not a duration)."""
    start = time.monotonic()
    while True:
        if condition():
            return
        code = process.poll()
        if code is not None:
            raise AssertionError(f"the process exited with code {code} before {what}")
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s, the process still running")
        time.sleep(interval)
