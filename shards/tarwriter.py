"""Rolling WebDataset tars for one split, with the byte offset of every member's data.

Shards are `<split>-%06d.tar`, written as `<name>.tar.tmp` (created new, never through a link:
shards.safefiles), fsynced and renamed only when complete, so a file with the final name is always a
whole shard. Members are `<key>.<ext>` then `<key>.json`
with fixed owner, mode and mtime: the same samples give the same bytes. A shard is closed before a
sample that would push it past the target size (or the sample cap); a single sample larger than the
target gets a shard of its own.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from shards.items import SAFE_KEY
from shards.safefiles import create_new

BLOCK = tarfile.BLOCKSIZE


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def member_footprint(size: int) -> int:
    """Bytes a member of `size` data bytes takes in a tar: one header block plus padded data."""
    return BLOCK + -(-size // BLOCK) * BLOCK


@dataclass
class ClosedShard:
    name: str
    size: int
    sha256: str
    rows: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.rows)


class _HashingFile:
    """The file object tarfile writes through: hashes and counts every byte on the way to disk."""

    def __init__(self, path: Path):
        self.file = create_new(path)
        self.digest = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.position += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


class ShardSetWriter:
    def __init__(self, out_dir: Path, split: str, first_shard: int, target_bytes: int, max_samples: int = 0):
        self.out_dir, self.split = out_dir, split
        self.next_number = first_shard
        self.target_bytes, self.max_samples = target_bytes, max_samples
        self._tar: tarfile.TarFile | None = None
        self._file: _HashingFile | None = None
        self._name = ""
        self._rows: list[dict] = []

    def would_overflow(self, media_size: int, json_size: int) -> bool:
        """True when the open shard has samples and this one should start the next shard."""
        if self._tar is None or not self._rows:
            return False
        if self.max_samples and len(self._rows) >= self.max_samples:
            return True
        incoming = member_footprint(media_size) + member_footprint(json_size)
        return self._tar.offset + incoming > self.target_bytes

    def add(self, key: str, media_ext: str, media: bytes, meta: bytes, row: dict) -> None:
        """Append one sample; `row` gets the shard name and the four offset/size columns."""
        if not SAFE_KEY.match(key):
            raise ValueError(f"sample key {key!r} does not match [A-Za-z0-9_-]+")
        if self._tar is None:
            self._open()
        media_offset = self._add_member(f"{key}.{media_ext}", media)
        json_offset = self._add_member(f"{key}.json", meta)
        self._rows.append({**row, "shard": self._name, "media_ext": media_ext,
                           "media_offset": media_offset, "media_size": len(media),
                           "json_offset": json_offset, "json_size": len(meta)})

    def close(self) -> ClosedShard | None:
        """Finish the open shard and rename it into place; None when no shard is open."""
        if self._tar is None:
            return None
        self._tar.close()
        self._file.close()
        temporary = self.out_dir / f"{self._name}.tmp"
        os.replace(temporary, self.out_dir / self._name)
        closed = ClosedShard(self._name, self._file.position, self._file.digest.hexdigest(), self._rows)
        self._tar, self._file, self._rows = None, None, []
        return closed

    def abandon(self) -> None:
        """Drop the open shard's temporary file (used when a build fails half-way through a shard)."""
        if self._tar is not None:
            self._file.file.close()
            (self.out_dir / f"{self._name}.tmp").unlink(missing_ok=True)
            self._tar, self._file, self._rows = None, None, []

    def _open(self) -> None:
        self._name = shard_name(self.split, self.next_number)
        self.next_number += 1
        self._file = _HashingFile(self.out_dir / f"{self._name}.tmp")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def _add_member(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        # addfile leaves tar.offset at the end of the padded data, so the data starts here:
        return self._tar.offset - -(-len(data) // BLOCK) * BLOCK
