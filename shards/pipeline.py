"""Build one split of one dataset into OUT: transcode in parallel, write shards in a fixed order, merge the catalog.

Workers transcode; results come back in sample order (`Pool.imap`), so shard contents and the index
do not depend on which worker finished first. Progress is journalled per shard (buildstate), which
makes a killed build resumable.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
from contextlib import contextmanager
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from shards.buildstate import BuildState
from shards.catalog import merge_index, merge_manifest
from shards.items import SourceItem, SourceListing
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


def plan_digest(items: list[SourceItem]) -> str:
    """Identifies the sample list, so a journal is only resumed against the very same listing."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.key}\t{item.source}\t{item.label}\t{item.kind}\n".encode())
    return digest.hexdigest()


def split_fingerprint(build_args: dict, split: str, items: list[SourceItem]) -> dict:
    return {**build_args, "split": split, "samples": len(items), "plan_sha256": plan_digest(items)}


def sample_metadata(item: SourceItem, dataset: str, encoded: Encoded) -> dict:
    """The `<key>.json` member, field order as in the contract."""
    return {"label": item.label, "label_name": item.label_name, "dataset": dataset, "source": item.source,
            "num_frames": encoded.num_frames, "fps": encoded.fps, "width": encoded.width,
            "height": encoded.height, "codec": encoded.codec}


@contextmanager
def transcode_pool(workers: int):
    """Worker processes for transcoding (spawned: no inherited threads or locks); None for one worker."""
    if workers <= 1:
        yield None
        return
    pool = multiprocessing.get_context("spawn").Pool(workers)
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
    fingerprint = split_fingerprint(build_args, split, items)
    out.mkdir(parents=True, exist_ok=True)
    state, status = BuildState.open(out, split, fingerprint)
    if status == "restarted":
        print(f"{listing.dataset}/{split}: an interrupted build with other arguments or sources was dropped; "
              "starting this split over")
    elif status == "resumed":
        print(f"{listing.dataset}/{split}: resuming: {len(state.shards)} shards already finished "
              f"({state.next_position}/{len(items)} sources done)")
    writer = ShardSetWriter(out, split, len(state.shards), limits.target_bytes, limits.max_samples)
    jobs = [(str(item.path), item.kind, settings) for item in items[state.next_position:]]
    pending_rejects: list[dict] = []
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


def finalize_split(out: Path, listing: SourceListing, split: str, state: BuildState, build_args: dict,
                   status: str) -> SplitSummary:
    """Index and manifest take the split's rows; then the journal goes. Safe to repeat if killed here.

    The merge holds a lock on OUT, so splits built by parallel processes into one OUT all land."""
    rows = state.rows()
    entry = {"count": len(rows), "shards": state.shards, "rejects": state.rejects, "build": state.fingerprint}
    with open(out / ".catalog.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merge_index(out, split, rows)
        merge_manifest(out, listing.dataset, listing.classes, split, entry, build_args)
    _remove_stale_shards(out, split, keep=len(state.shards))
    state.discard()
    return SplitSummary(listing.dataset, split, len(rows), len(state.shards),
                        sum(shard["size"] for shard in state.shards), state.rejects, status)
