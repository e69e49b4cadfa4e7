"""Where a shard build's transcoding runs: the local process pool (default) or a Ray cluster.

    python -m shards.build ucf101 --root /data/UCF101 --out s3://lab/shards/ucf101 --executor ray \
        --ray-address auto                 # a running cluster (`ray start --head` / a RayCluster), or
                                           # nothing: a local Ray cluster on this machine's cores

Both executors only transcode; the driver (this process) still walks the samples in their fixed order,
writes the shards, journals every finished shard and merges index and manifest. An executor hands the
results back in sample order (`imap`), so the output bytes do not depend on which worker, node or
executor did the work: a Ray build is byte-identical to a local one, a killed Ray build resumes from the
same journal, and a source that fails to decode is rejected with the same reason.

Ray tasks read each source at the path the driver lists, so on a cluster the raw tree must be mounted at
the same path on every node (the usual shared /data). Without a shared file system, `--ray-ship-inputs`
makes the driver read each source and send its bytes with the task; the worker transcodes a temporary
copy and names the original path in any reject reason. Twice the cluster's CPUs (at least twice
`--workers`) tasks are in flight, so every CPU is busy and the driver's memory stays bounded.

Token authentication (Ray >= 2.5x): `ray start --head` turns it on when a token exists (~/.ray/auth_token,
written by any earlier local `ray.init()` too), but Ray enables it on a driver only for `--ray-address auto`;
with an explicit HOST:PORT the driver is refused after ~20 s. So for an explicit address with RAY_AUTH_MODE
unset and a token available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), the driver uses it,
as Ray does for `auto`; RAY_AUTH_MODE=disabled opts out. A cluster that still refuses is one line.

Ray is an optional extra: `pip install -e ".[ray]"`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from shards.errors import LayoutError
from shards.transcode import transcode_job

EXECUTORS = ("local", "ray")


def use_token_if_available() -> bool:
    """RAY_AUTH_MODE=token for this driver when it is unset and a Ray auth token is available (what Ray does
    itself for address "auto" only); True when switched on here."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return False
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    enabled = bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    if enabled:
        print("ray: connecting with the auth token found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); "
              "RAY_AUTH_MODE=disabled connects without one", file=sys.stderr)
    return enabled


def _connect_error(address: str | None, error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = f"--ray-address {address}" if address else "--executor ray (a local Ray cluster)"
    if "auth" in f"{type(error).__name__} {error}".lower():
        return (f"{where}: the cluster refused this driver's authentication ({type(error).__name__}: {text[:200]}); "
                f"fix: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the output of `ray get-auth-token` on the head "
                f"node> (or RAY_AUTH_TOKEN_PATH), then rerun")
    return (f"{where}: cannot start or join Ray ({type(error).__name__}: {text[:200]}); fix: check the address "
            f"(`ray status` on the head node) or use --executor local")


def _transcode_shipped(job, data: bytes | None):
    """Ray task body for --ray-ship-inputs: transcode the sent bytes from a temporary file of the same suffix."""
    path, kind, settings = job
    if data is None:  # the driver could not read it: let transcode_job say why, from the original path
        return transcode_job(job)
    with tempfile.TemporaryDirectory(prefix="vjepa-shard-") as folder:
        local = Path(folder) / f"source{Path(path).suffix}"
        local.write_bytes(data)
        result = transcode_job((str(local), kind, settings))
    reason = getattr(result, "reason", None)
    if reason is not None and str(local) in reason:
        result = type(result)(reason.replace(str(local), path))
    return result


class RayPool:
    """The part of multiprocessing.Pool the builder uses (`imap`), on Ray tasks, results in order."""

    def __init__(self, address: str | None, max_inflight: int, ship_inputs: bool, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise LayoutError("--executor ray: the ray package is not installed; fix: pip install -e \".[ray]\" "
                              "(or use the default --executor local)") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kwargs = {"address": address} if address else {"num_cpus": num_cpus}
            if address and address != "auto":
                use_token_if_available()
            # The workers import this repository's packages: ship its path with the job (no install on the nodes
            # needed when it lives on a shared file system; else install vjepa-engine on every node).
            repo = str(Path(__file__).resolve().parents[1])
            try:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                             p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}}, **kwargs)
            except Exception as error:  # noqa: BLE001 - Ray's connection and auth errors: one line, not a traceback
                raise LayoutError(_connect_error(address, error)) from None
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_inflight = max(1, max_inflight, 2 * cluster_cpus)  # every CPU of the cluster busy, and no more
        self.ship_inputs = ship_inputs
        self._task = ray.remote(num_cpus=1, max_retries=3)(transcode_job)
        self._shipped = ray.remote(num_cpus=1, max_retries=3)(_transcode_shipped)

    def _submit(self, job):
        if not self.ship_inputs:
            return self._task.remote(job)
        try:
            data = Path(job[0]).read_bytes()
        except OSError:
            data = None
        return self._shipped.remote(job, data)

    def imap(self, function, jobs, chunksize: int = 1):
        if function is not transcode_job:
            raise ValueError("RayPool runs transcode_job only")
        pending: deque = deque()
        jobs = iter(jobs)
        for job in jobs:
            pending.append(self._submit(job))
            if len(pending) >= self.max_inflight:
                break
        while pending:
            result = self.ray.get(pending.popleft())
            for job in jobs:  # keep the window full: one new task per result taken
                pending.append(self._submit(job))
                break
            yield result

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


@contextmanager
def executor_pool(args):
    """The transcoding pool of a build: shards.pipeline.transcode_pool, or a RayPool for --executor ray."""
    executor = getattr(args, "executor", "local")
    if executor == "local":
        from shards.pipeline import transcode_pool
        with transcode_pool(args.workers) as pool:
            yield pool
        return
    if executor != "ray":
        raise LayoutError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    address = getattr(args, "ray_address", None) or os.environ.get("RAY_ADDRESS") or None
    pool = RayPool(address, max_inflight=2 * args.workers, ship_inputs=getattr(args, "ray_ship_inputs", False),
                   num_cpus=None if address else args.workers)
    try:
        yield pool
    finally:
        pool.close()
