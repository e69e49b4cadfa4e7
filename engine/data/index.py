"""Read a shard folder's index.parquet (docs/contracts.md §1) into flat arrays the sampler can index.

Everything a worker needs to fetch and decode a sample (shard, byte offset, size, frames, fps, size) is
held here, so a sample costs one seek and one read, and nothing is scanned at run time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.data import remote
from engine.data.config import DatasetSpec
from shards import storage
from shards.names import check_names

INDEX_COLUMNS = ("key", "split", "shard", "media_ext", "media_offset", "media_size", "json_offset", "json_size",
                 "label", "dataset",
                 "codec", "num_frames", "fps", "width", "height")
IMAGE_EXTS = ("jpg",)
VIDEO_EXTS = ("mp4", "webm")
# Codecs DALI 2.4 decodes on the CPU; everything else needs NVDEC (decode_device="mixed").
CPU_DECODABLE = ("vp9", "vp8", "mjpeg", "jpeg")


@dataclass
class DatasetIndex:
    """One dataset split: parallel arrays, one entry per sample, in index order."""

    name: str
    root: Path | str                # a resolved path, or the URL of a remote root
    shard_paths: list[str]          # absolute paths (or URLs), indexed by `shard_id`
    keys: np.ndarray                # object [N] str
    shard_id: np.ndarray            # int32 [N]
    media_offset: np.ndarray        # int64 [N]
    media_size: np.ndarray          # int64 [N]
    json_offset: np.ndarray         # int64 [N]
    json_size: np.ndarray           # int64 [N]
    is_image: np.ndarray            # bool [N]
    label: np.ndarray               # int64 [N]
    num_frames: np.ndarray          # int32 [N]
    fps: np.ndarray                 # float64 [N]
    width: np.ndarray               # int32 [N]
    height: np.ndarray              # int32 [N]
    codecs: tuple[str, ...]         # distinct codecs in this split
    shard_versions: list[str] = field(default_factory=list)  # remote roots: sha256 per shard (cache keys)

    def __len__(self) -> int:
        return len(self.keys)


# What to do about a shard folder whose tars do not match its index: the build is resumable and writes whole
# tars, so building the same split into the same folder again replaces what is missing or broken.
_REBUILD_FIX = "fix: rebuild the split into that folder (`python -m shards.build ... --out {root}`) or restore the file"


def _check_tar(path: Path, needed_bytes: int, index_path: Path) -> None:
    fix = _REBUILD_FIX.format(root=path.parent)
    if not path.is_file():
        raise FileNotFoundError(f"shard missing: {path} ({index_path} lists it); {fix}")
    with open(path, "rb") as f:
        header = f.read(512)
    # POSIX/GNU tar headers carry "ustar" at byte 257; WebDataset tars always do.
    if len(header) < 512 or header[257:262] != b"ustar":
        raise ValueError(f"shard is not a tar file: {path}; {fix}")
    if path.stat().st_size < needed_bytes:
        raise ValueError(f"shard is truncated (index needs {needed_bytes} bytes, file has "
                         f"{path.stat().st_size}): {path}; {fix}")


def load_dataset_index(spec: DatasetSpec) -> DatasetIndex:
    """Load and check one split; raises a one-line error naming the folder, split or shard at fault.

    `spec.root` may be an fsspec URL (engine.data.remote): then `root` and `shard_paths` are URLs."""
    root = remote.normalise_root(spec.root)
    index_path = storage.join(root, "index.parquet")
    if isinstance(root, str):
        table = remote.read_index_table(root)
    elif not index_path.is_file():
        raise FileNotFoundError(f"no index.parquet in {root} (build it with `python -m shards.build ... --out {root}`)")
    else:
        table = pq.read_table(index_path)
    missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{index_path}: missing columns {missing}")
    columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in INDEX_COLUMNS}
    in_split = columns["split"] == spec.split
    if not in_split.any():
        splits = sorted(set(columns["split"].tolist()))
        raise ValueError(f"{index_path}: no rows for split {spec.split!r} (the folder holds {splits}); fix: use one "
                         f"of those splits, or build {spec.split!r} into the folder (`python -m shards.build ... "
                         f"--split {spec.split} --out {root}`)")
    columns = {c: v[in_split] for c, v in columns.items()}
    # Shard names are joined to the folder here; keys name tar members and reach logs, states and caches.
    # The loader reads members by offset, never by member name: those are checked by shards.names.verify_members.
    check_names(columns["shard"].tolist(), "shard", index_path)
    check_names(columns["key"].tolist(), "index key", index_path)

    exts = columns["media_ext"]
    unknown = sorted(set(exts.tolist()) - set(IMAGE_EXTS) - set(VIDEO_EXTS))
    if unknown:
        raise ValueError(f"{index_path}: unsupported media_ext {unknown}")

    shard_names, shard_id = np.unique(columns["shard"], return_inverse=True)
    shard_paths = []
    ends = columns["media_offset"].astype(np.int64) + columns["media_size"].astype(np.int64)
    needed = [int(ends[shard_id == sid].max()) for sid in range(len(shard_names))]
    versions = remote.shard_versions(root, [str(n) for n in shard_names], needed) if isinstance(root, str) else []
    for sid, shard_name in enumerate(shard_names):
        path = storage.join(root, str(shard_name))
        if not isinstance(root, str):
            _check_tar(path, needed[sid], index_path)
        shard_paths.append(str(path))

    return DatasetIndex(
        name=spec.display_name,
        root=root,
        shard_paths=shard_paths,
        keys=columns["key"].astype(object),
        shard_id=shard_id.astype(np.int32),
        media_offset=columns["media_offset"].astype(np.int64),
        media_size=columns["media_size"].astype(np.int64),
        json_offset=columns["json_offset"].astype(np.int64),
        json_size=columns["json_size"].astype(np.int64),
        is_image=np.isin(exts, IMAGE_EXTS),
        label=columns["label"].astype(np.int64),
        num_frames=np.maximum(columns["num_frames"].astype(np.int32), 1),
        fps=columns["fps"].astype(np.float64),
        width=columns["width"].astype(np.int32),
        height=columns["height"].astype(np.int32),
        codecs=tuple(sorted(set(str(c).lower() for c in columns["codec"].tolist()))),
        shard_versions=versions,
    )


def load_indexes(specs: list[DatasetSpec], decode_device: str) -> list[DatasetIndex]:
    """Every dataset's split, loaded and checked (rows for the split, safe names, each shard present and
    whole, codecs that `decode_device` ('cpu' or 'mixed') decodes): all of the loader's input errors, as
    one-line FileNotFoundError/ValueError, before a pipeline, a process group or a run file exists."""
    indexes = []
    for spec in specs:
        index = load_dataset_index(spec)
        check_decodable(index, decode_device)
        indexes.append(index)
    return indexes


def check_decodable(index: DatasetIndex, decode_device: str) -> None:
    """H.264/HEVC/AV1 shards cannot be decoded by DALI on the CPU: say so before any work starts."""
    if decode_device != "cpu":
        return
    refused = [c for c in index.codecs if c not in CPU_DECODABLE]
    if refused:
        raise ValueError(
            f"{index.root}: codec {'/'.join(refused)} cannot be decoded on the CPU (DALI decodes only "
            f"VP9/VP8/MJPEG there); rebuild the shards as VP9 (`python -m shards.build ... --codec vp9`) "
            f"or run on a GPU (decode_device='mixed')")


def read_member(path: str, offset: int, size: int) -> bytes:
    """The bytes of one tar member, read with one seek (reference and test helper); one ranged GET for a URL."""
    if storage.is_url(path):
        return storage.read_range(path, offset, offset + size)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
