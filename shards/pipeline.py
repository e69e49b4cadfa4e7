"""Build one split of one dataset into OUT: transcode in parallel, write shards in a fixed order, merge the catalog.

Workers transcode; results come back in sample order (`Pool.imap`), so shard contents and the index
do not depend on which worker finished first. Progress is journalled per shard (buildstate), which
makes a killed build resumable.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from shards.buildstate import BuildState
from shards.catalog import merge_index, merge_manifest
from shards.items import SourceItem, SourceListing
from shards.safefiles import refuse_links
from shards.tarwriter import ShardSetWriter
from shards.transcode import Encoded, TranscodeSettings, transcode_job


@dataclass(frozen=True)
class ShardLimits:
    target_bytes: int
    max_samples: int = 0  # 0: no cap


@dataclass
class SplitSummary:
    dataset: str
    split: str
    count: int
    shards: int
    bytes: int
    rejects: list[dict]
    status: str  # fresh | resumed | restarted


def plan_digest(items: list[SourceItem], listing_rejects: list[dict] = ()) -> str:
    """Identifies the sample list, so a journal is only resumed against the very same listing."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.key}\t{item.source}\t{item.label}\t{item.kind}\n".encode())
    # Entries the adapter rejected are part of the listing; without any (the usual case) the digest is
    # the one earlier builds recorded, so their OUT folders stay "already built".
    for reject in listing_rejects:
        digest.update(f"rejected\t{reject['source']}\n".encode())
    return digest.hexdigest()


def split_fingerprint(build_args: dict, split: str, items: list[SourceItem], listing_rejects: list[dict] = ()) -> dict:
    return {**build_args, "split": split, "samples": len(items), "plan_sha256": plan_digest(items, listing_rejects)}


def sample_metadata(item: SourceItem, dataset: str, encoded: Encoded) -> dict:
    """The `<key>.json` member, field order as in the contract."""
    return {"label": item.label, "label_name": item.label_name, "dataset": dataset, "source": item.source,
            "num_frames": encoded.num_frames, "fps": encoded.fps, "width": encoded.width,
            "height": encoded.height, "codec": encoded.codec}


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(parent_pid: int) -> None:
    """Interrupts are the parent's business. Ctrl-C reaches the whole process group: the parent says
    one line and terminates the pool, where each worker would print a KeyboardInterrupt traceback
    (transcode_pool starts workers with SIGINT ignored; this covers one the pool replaces later).
    A parent that is gone (kill -9) takes its workers with it, where each would print a BrokenPipe
    traceback when it hands back its next result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(0)


@contextmanager
def transcode_pool(workers: int):
    """Worker processes for transcoding (spawned: no inherited threads or locks); None for one worker."""
    if workers <= 1:
        yield None
        return
    # Workers start with SIGINT ignored: the disposition survives exec and Python keeps an ignored SIGINT,
    # so a Ctrl-C that lands while a worker is still importing cannot print its traceback either.
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(os.getpid(),))
    finally:
        if in_main_thread:  # None: the previous handler was not set from Python
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _results(jobs: list, pool):
    if pool is None or len(jobs) < 2:
        return map(transcode_job, jobs)
    return pool.imap(transcode_job, jobs, chunksize=1)


def _remove_stale_shards(out: Path, split: str, keep: int) -> None:
    """Shards of an earlier, longer build of this split and temporary leftovers."""
    pattern = re.compile(rf"^{re.escape(split)}-(\d{{6}})\.tar(\.tmp)?$")
    for path in out.iterdir():
        match = pattern.match(path.name)
        if match and (match.group(2) or int(match.group(1)) >= keep):
            path.unlink()


def build_split(out: Path, listing: SourceListing, split: str, settings: TranscodeSettings, limits: ShardLimits,
                build_args: dict, pool=None, progress: bool = True) -> SplitSummary:
    """`pool`: a multiprocessing pool of transcode workers, or None to transcode in this process."""
    items = listing.splits[split]
    listing_rejects = listing.rejects.get(split, [])
    fingerprint = split_fingerprint(build_args, split, items, listing_rejects)
    out.mkdir(parents=True, exist_ok=True)
    refuse_links(out)  # the CLI checked at planning; this covers callers of build_split itself
    state, status = BuildState.open(out, split, fingerprint)
    if status == "restarted":
        print(f"{listing.dataset}/{split}: an interrupted build with other arguments or sources was dropped; "
              "starting this split over")
    elif status == "resumed":
        print(f"{listing.dataset}/{split}: resuming: {len(state.shards)} shards already finished "
              f"({state.next_position}/{len(items)} sources done)")
    writer = ShardSetWriter(out, split, len(state.shards), limits.target_bytes, limits.max_samples)
    jobs = [(str(item.path), item.kind, settings) for item in items[state.next_position:]]
    # Entries the adapter rejected go first; a resumed journal holds them already (in its first commit).
    pending_rejects: list[dict] = [] if status == "resumed" else list(listing_rejects)
    bar = tqdm(total=len(items), initial=state.next_position, desc=f"{listing.dataset}/{split}", unit="clip",
               disable=not progress, dynamic_ncols=True)
    try:
        for position, result in enumerate(_results(jobs, pool), start=state.next_position):
            item = items[position]
            bar.update(1)
            if not isinstance(result, Encoded):
                pending_rejects.append({"source": item.source, "reason": result.reason})
                bar.set_postfix(rejects=len(state.rejects) + len(pending_rejects))
                continue
            meta = json.dumps(sample_metadata(item, listing.dataset, result), ensure_ascii=False).encode()
            if writer.would_overflow(len(result.data), len(meta)):
                state.commit(writer.close(), pending_rejects, position)
                pending_rejects = []
            row = {"key": item.key, "split": split, "label": item.label, "label_name": item.label_name,
                   "dataset": listing.dataset, "codec": result.codec, "num_frames": result.num_frames,
                   "fps": result.fps, "width": result.width, "height": result.height, "duration": result.duration}
            writer.add(item.key, result.ext, result.data, meta, row)
        state.commit(writer.close(), pending_rejects, len(items))
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
    return finalize_split(out, listing, split, state, build_args, status)


@contextmanager
def catalog_lock(out: Path):
    """An exclusive lock on the OUT folder itself (flock on its descriptor), so no lock file is left.

    Builds before this one left a 0-byte `.catalog.lock` in OUT; it is removed under the lock."""
    descriptor = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        (out / ".catalog.lock").unlink(missing_ok=True)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def finalize_split(out: Path, listing: SourceListing, split: str, state: BuildState, build_args: dict,
                   status: str) -> SplitSummary:
    """Index and manifest take the split's rows; then the journal goes. Safe to repeat if killed here.

    The merge holds a lock on OUT, so splits built by parallel processes into one OUT all land."""
    rows = state.rows()
    entry = {"count": len(rows), "shards": state.shards, "rejects": state.rejects, "build": state.fingerprint}
    with catalog_lock(out):
        merge_index(out, split, rows)
        merge_manifest(out, listing.dataset, listing.classes, split, entry, build_args)
    _remove_stale_shards(out, split, keep=len(state.shards))
    state.discard()
    return SplitSummary(listing.dataset, split, len(rows), len(state.shards),
                        sum(shard["size"] for shard in state.shards), state.rejects, status)
