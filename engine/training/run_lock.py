"""One live run per run folder: rank 0 holds a lock on runs/<name>/run.lock for the whole run.

Two runs writing one folder (a `--resume auto` started while the first still trains, say after its
launcher exited but its ranks did not) interleave checkpoints, metrics and the recipe copy. The lock is a
POSIX record lock (fcntl.lockf), chosen for two properties:
- the kernel drops it when the holding process ends, however it ends (SIGKILL included), so a killed run
  never leaves the folder locked;
- unlike flock(), forked children do not share it, so DALI's reader workers (forked on the CPU path), which
  can outlive a killed rank for a while, do not keep the folder locked after it.
The file stays after the run (removing a lock file races with a process that has just opened it). It holds
the pid of its last holder, which the refusal names.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "run.lock"


class RunInUse(RuntimeError):
    """The run folder is locked by a live process, or its lock file cannot be used: one line with the fix."""


class RunLock:
    """`with RunLock(run_dir).acquire():` holds the folder's lock until the block ends or the process dies."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting; RunInUse names the folder and the holder's pid when it is taken."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:  # never through a planted link; O_CLOEXEC: a spawned process does not inherit the descriptor
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunInUse(f"{self.path}: cannot open the run's lock file ({err.strerror}); fix: make it a plain "
                           f"file this user can write, or choose another run.name") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise RunInUse(f"{self.path}: cannot lock the run folder ({err.strerror}); fix: put run.out_dir "
                               f"on a file system with POSIX locks") from None
            stop = f"stop it (kill -TERM {holder}: it checkpoints first)" if holder.isdigit() else "stop it"
            raise RunInUse(f"{folder}: another run of this folder is still alive (pid {holder or 'unknown'} holds "
                           f"{self.path}); fix: wait for it to end or {stop}, then --resume auto; or choose "
                           f"another run.name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Closing the only descriptor drops the lock (a POSIX lock ends with any close of the file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
