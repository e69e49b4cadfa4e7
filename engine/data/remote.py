"""Shards in object storage: the loader's byte reads when a dataset root is an fsspec URL.

A dataset root (`data.datasets[i].root`) may be `s3://...`, `gs://...`, `https://...` or `file://...` as
well as a path. The index and manifest are read whole through fsspec (pyarrow reads the parquet from the
bytes); samples are never read by downloading a tar: each batch's members are looked up in the index,
sorted by (shard, offset), merged into runs where members lie close together in one shard (at most
`coalesce_gap_kb` apart and `max_run_mb` long), and each run is one ranged GET, issued concurrently (at
most `max_inflight` at a time). Transient failures (timeouts, dropped connections, 5xx, throttling) are
retried with exponential backoff and jitter; a missing shard or refused permission fails at once.

Read-ahead is DALI's prefetch queue: the loader's worker processes compute batches `data.prefetch` steps
ahead of the one being consumed, each with its batch's requests in flight at once, so the bytes in memory
are bounded by prefetch x batch. With `cache_dir` set, every fetched member is also kept on the local
disk (keyed by the shard's sha256 from manifest.json, the offset and the size, so a rebuilt shard never
serves stale bytes), and the oldest entries go once the folder passes `cache_max_gb`.

None of this changes which sample, frames, crop or flip a step gets: the sampler is the same pure
function of (seed, epoch, rank, step), and the bytes are the same, so a run reads local or remote shards
bit for bit alike and resumes exactly.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.fields import above, at_least, check_fields, field_doc
from shards import storage


@dataclass
class RemoteConfig:
    """How the loader reads shards whose dataset root is a URL (ignored for local paths)."""

    max_inflight: int = field_doc(16, "Ranged requests in flight at once per worker process.", valid=at_least(1))
    coalesce_gap_kb: int = field_doc(64, "Members of one shard at most this far apart (KiB) are fetched by one "
                                         "ranged request.", valid=at_least(0))
    max_run_mb: int = field_doc(16, "Upper bound (MiB) on one coalesced request.", valid=at_least(1))
    retries: int = field_doc(5, "Attempts per request on transient errors (timeouts, 5xx, throttling), with "
                                "exponential backoff.", valid=at_least(1))
    backoff_s: float = field_doc(0.2, "First backoff delay in seconds; doubles per attempt (with jitter), capped "
                                      "at 5 s.", valid=at_least(0))
    cache_dir: str | None = field_doc(None, "Keep fetched members in this local folder (shared by the worker "
                                            "processes); None: no cache.")
    cache_max_gb: float = field_doc(20.0, "Size cap of cache_dir; the least recently used members are deleted "
                                          "past it.", valid=above(0))

    def validate(self) -> "RemoteConfig":
        check_fields(self, "remote.")
        return self


# ------------------------------------------------------------------------------------------- index

def normalise_root(root: str) -> str | Path:
    """A dataset root as the loader keeps it: a resolved Path (plain paths and file:// URLs) or a URL."""
    local = storage.local_path(root)
    if local is not None:
        return local.expanduser().resolve()
    return root.rstrip("/")


def read_index_table(root: str):
    """index.parquet of a remote root, as a pyarrow table (one GET)."""
    import pyarrow.parquet as pq

    index_path = storage.join(root, "index.parquet")
    try:
        data = storage.read_bytes(index_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no index.parquet at {root} (build it with `python -m shards.build ... --out "
                                f"{root}`, or upload the folder it built)") from None
    return pq.read_table(io.BytesIO(data))


def shard_versions(root: str, names: list[str], needed: list[int]) -> list[str]:
    """Check that each remote shard is there and long enough for its index rows; returns a version string per
    shard (its sha256 from manifest.json, else its size) that keys the member cache.

    Sizes come from manifest.json (one GET for the whole folder); a shard it does not list costs one HEAD."""
    manifest = {}
    try:
        manifest = json.loads(storage.read_bytes(storage.join(root, "manifest.json")))
    except FileNotFoundError:
        pass
    listed = {entry["name"]: entry for split in (manifest.get("splits") or {}).values()
              for entry in split.get("shards", []) if isinstance(entry, dict) and "name" in entry}
    versions = []
    for name, need in zip(names, needed):
        entry = listed.get(name)
        try:
            size = int(entry["size"]) if entry and "size" in entry else storage.size(storage.join(root, name))
        except FileNotFoundError:
            raise FileNotFoundError(f"shard missing: {storage.join(root, name)}") from None
        if size < need:
            raise ValueError(f"shard is truncated (index needs {need} bytes, manifest/server says {size}): "
                             f"{storage.join(root, name)}")
        versions.append(entry.get("sha256") if entry and entry.get("sha256") else f"size-{size}")
    return versions


# ------------------------------------------------------------------------------------------- cache

class MemberCache:
    """Members on the local disk, one file each, named by a digest of (shard version, offset, size).

    Safe for several processes: files are written under a temporary name and renamed; a file deleted by
    another process's eviction between lookup and read is simply fetched again."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._added = 0
        self._total: int | None = None
        self.hits = self.misses = 0

    def _path(self, version: str, offset: int, size: int) -> Path:
        digest = hashlib.sha256(f"{version}:{offset}:{size}".encode()).hexdigest()
        return self.folder / digest[:2] / digest[2:]

    def get(self, version: str, offset: int, size: int) -> bytes | None:
        path = self._path(version, offset, size)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        if len(data) != size:  # a torn file from a crash: drop it
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        try:
            os.utime(path)  # most recently used
        except FileNotFoundError:
            pass
        self.hits += 1
        return data

    def put(self, version: str, offset: int, size: int, data: bytes) -> None:
        path = self._path(version, offset, size)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        if self._total is None:
            self._total = self.usage()
        self._total += len(data)
        if self._total > self.max_bytes:
            self.evict()

    def usage(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def _files(self):
        for sub in self.folder.iterdir():
            if sub.is_dir():
                yield from (p for p in sub.iterdir() if not p.name.endswith(".tmp"))

    def evict(self) -> None:
        """Delete the least recently used members until the folder is under 90% of the cap."""
        entries = []
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= 0.9 * self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._total = total


# ------------------------------------------------------------------------------------------- reads

@dataclass(frozen=True)
class Member:
    """One read the loader needs: a byte range of a shard (`version` keys the cache)."""

    url: str
    offset: int
    size: int
    version: str = ""


def coalesce(members: list[Member], gap: int, max_run: int) -> list[tuple[str, int, int, list[int]]]:
    """Runs (url, start, end, indices of the members they serve): members of one shard sorted by offset,
    merged while the hole between them is at most `gap` bytes and the run at most `max_run` bytes."""
    order = sorted(range(len(members)), key=lambda i: (members[i].url, members[i].offset))
    runs: list[tuple[str, int, int, list[int]]] = []
    for i in order:
        m = members[i]
        end = m.offset + m.size
        if runs:
            url, start, run_end, served = runs[-1]
            if url == m.url and m.offset - run_end <= gap and max(end, run_end) - start <= max_run:
                runs[-1] = (url, start, max(end, run_end), served + [i])
                continue
        runs.append((m.url, m.offset, end, [i]))
    return runs


class RangeReader:
    """Fetches a batch's members from remote shards: cache, coalescing, concurrent ranged GETs, retries.

    One per worker process (a forked or unpickled copy starts without connections and makes its own)."""

    def __init__(self, cfg: RemoteConfig | None = None):
        self.cfg = (cfg or RemoteConfig()).validate()
        self.retry = storage.Retry(attempts=self.cfg.retries, base_delay=self.cfg.backoff_s)
        self._cache: MemberCache | None = None
        self._pid = None
        self.requests = 0          # ranged requests issued (retries included)
        self.bytes_fetched = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"], state["_pid"] = None, None
        return state

    @property
    def cache(self) -> MemberCache | None:
        if self.cfg.cache_dir and (self._cache is None or self._pid != os.getpid()):
            self._cache = MemberCache(self.cfg.cache_dir, int(self.cfg.cache_max_gb * 1e9))
            self._pid = os.getpid()
        return self._cache

    def read(self, members: list[Member]) -> list[bytes]:
        """The bytes of every member, in the order given."""
        out: list[bytes | None] = [None] * len(members)
        cache = self.cache
        missing = []
        for i, m in enumerate(members):
            data = cache.get(m.version, m.offset, m.size) if cache is not None else None
            if data is None:
                missing.append(i)
            else:
                out[i] = data
        if missing:
            wanted = [members[i] for i in missing]
            runs = coalesce(wanted, self.cfg.coalesce_gap_kb * 1024, self.cfg.max_run_mb * 1024 * 1024)
            blobs = self._fetch_runs([(url, start, end) for url, start, end, _ in runs])
            for (url, start, _, served), blob in zip(runs, blobs):
                for j in served:
                    m = wanted[j]
                    data = blob[m.offset - start:m.offset - start + m.size]
                    out[missing[j]] = data
                    if cache is not None:
                        cache.put(m.version, m.offset, m.size, data)
        return out  # type: ignore[return-value]

    def _fetch_runs(self, runs: list[tuple[str, int, int]]) -> list[bytes]:
        """One ranged GET per run, up to max_inflight concurrently; transient failures retried with backoff."""
        results: list[bytes | BaseException | None] = [None] * len(runs)
        by_fs: dict[int, tuple[object, list[int], list[str]]] = {}
        for i, (url, _, _) in enumerate(runs):
            fs, inner = storage.filesystem(url)
            by_fs.setdefault(id(fs), (fs, [], []))[1].append(i)
            by_fs[id(fs)][2].append(inner)
        for fs, indices, inner_paths in by_fs.values():
            pending = list(range(len(indices)))
            for attempt in range(1, self.cfg.retries + 1):
                starts = [runs[indices[k]][1] for k in pending]
                ends = [runs[indices[k]][2] for k in pending]
                self.requests += len(pending)
                answers = fs.cat_ranges([inner_paths[k] for k in pending], starts, ends, on_error="return",
                                        **({"batch_size": self.cfg.max_inflight} if _is_async(fs) else {}))
                retry_next = []
                for k, answer in zip(pending, answers):
                    url, start, end = runs[indices[k]]
                    if isinstance(answer, BaseException):
                        if not storage.is_transient(answer):
                            raise _one_line(answer, url, start, end)
                        results[indices[k]] = answer
                        retry_next.append(k)
                    elif len(answer) != end - start:
                        raise storage.StorageError(f"{url}: asked for bytes {start}-{end - 1}, got {len(answer)} "
                                                   f"bytes (does the server honour Range requests? is the shard "
                                                   f"shorter than its index says?)")
                    else:
                        results[indices[k]] = answer
                        self.bytes_fetched += len(answer)
                if not retry_next:
                    break
                pending = retry_next
                if attempt < self.cfg.retries:
                    self.retry.retries += len(pending)
                    self.retry.sleep(min(5.0, self.cfg.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
            else:
                k = pending[0]
                url, start, end = runs[indices[k]]
                error = results[indices[k]]
                raise storage.StorageError(f"{url}: bytes {start}-{end - 1} failed {self.cfg.retries} times, last "
                                           f"with {type(error).__name__}: {error}") from error  # type: ignore[misc]
        return results  # type: ignore[return-value]


def read_plan_members(reader: RangeReader, indexes, plan, read_local) -> list:
    """The media bytes (uint8 arrays) of one batch plan's samples: members of remote datasets in one batched
    read, members of local ones (a mix of both) with `read_local(path, offset, size)`."""
    import numpy as np

    members, remote = [], []
    for i, (d, r) in enumerate(zip(plan.dataset_id.tolist(), plan.row.tolist())):
        ix = indexes[d]
        sid = int(ix.shard_id[r])
        members.append(Member(ix.shard_paths[sid], int(ix.media_offset[r]), int(ix.media_size[r]),
                              ix.shard_versions[sid] if ix.shard_versions else ""))
        if isinstance(ix.root, str):
            remote.append(i)
    fetched = dict(zip(remote, reader.read([members[i] for i in remote])))
    return [np.frombuffer(fetched[i], np.uint8) if i in fetched else read_local(m.url, m.offset, m.size)
            for i, m in enumerate(members)]


def _is_async(fs) -> bool:
    from fsspec.asyn import AsyncFileSystem
    return isinstance(fs, AsyncFileSystem)


def _one_line(error: BaseException, url: str, start: int, end: int) -> BaseException:
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"shard missing: {url} (reading bytes {start}-{end - 1})")
    if isinstance(error, PermissionError):
        return PermissionError(f"{url}: access refused ({error}); check the credentials in the environment")
    return error
