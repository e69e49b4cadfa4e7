"""Names inside a shard folder: index keys, shard file names, manifest entries and tar member names.

A shard set is data someone can hand you. Every name in it names a file in that folder or a member of one
of its tars, so a name that is absolute or has a `..` component (the only ways a relative name can point
outside the folder) is refused wherever it is read, with the name in the message: the loader's index
(`engine.data.index`), the evaluation's check of a benchmark folder (`verify_members`), and a build into an
existing OUT (`shards.catalog`, `shards.buildstate`). Tools that join or extract such names would otherwise
read or write elsewhere on the disk. The checks are lexical: a symlink inside the folder is its owner's
choice, as for raw trees (`shards.items.make_item`).
"""
from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeName(ValueError):
    """A name in a shard folder that points outside it; one line naming it, where it was read, and the fix."""


def unsafe_reason(name: object) -> str | None:
    """Why `name` cannot name something inside a shard folder (read after "is"), or None when it can."""
    if not isinstance(name, str) or not name:
        return "empty or not text"
    if "\0" in name:
        return "text with a NUL byte"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute"
    if ".." in _SEPARATORS.split(name):
        return "a path through '..'"
    return None


def check_name(name: object, what: str, where: str | Path) -> None:
    """Raise UnsafeName for a `what` (e.g. 'shard', 'index key') read from `where` that escapes the folder."""
    reason = unsafe_reason(name)
    if reason is not None:
        raise UnsafeName(f"{where}: {what} {name!r} is {reason}, pointing outside the shard folder; fix: do not use "
                         f"this shard set, or rebuild it with `python -m shards.build`")


def check_names(names: Iterable[object], what: str, where: str | Path) -> None:
    """check_name for each distinct name (index columns repeat shard names thousands of times)."""
    for name in dict.fromkeys(names):
        check_name(name, what, where)


def verify_members(folder: Path, rows: Iterable[dict]) -> int:
    """Walk every tar the rows name (headers only; PAX and GNU long names included, as an extractor would
    see them): each member must be a regular file with a safe name, and each row's media and json member
    must be `<key>.<media_ext>` / `<key>.json` at the offsets and sizes the index records.

    `rows` are index rows (key, shard, media_ext, media_offset, media_size, json_offset, json_size).
    Returns the number of members checked; raises UnsafeName or ValueError naming the shard and member."""
    by_shard: dict[str, list[dict]] = {}
    for row in rows:
        check_name(row["shard"], "shard", folder / "index.parquet")
        check_name(row["key"], "index key", folder / "index.parquet")
        by_shard.setdefault(row["shard"], []).append(row)
    checked = 0
    for shard, shard_rows in sorted(by_shard.items()):
        path = folder / shard
        members: dict[int, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    check_name(member.name, "tar member", path)
                    if not member.isfile():
                        raise UnsafeName(f"{path}: tar member {member.name!r} is a link or special file, not a "
                                         f"sample; fix: do not use this shard set, or rebuild it with "
                                         f"`python -m shards.build`")
                    members[member.offset_data] = member
                    checked += 1
        except tarfile.TarError as err:
            raise ValueError(f"{path}: not a readable tar ({err}); fix: rebuild the shard set") from None
        for row in shard_rows:
            for ext, offset, size in ((row["media_ext"], row["media_offset"], row["media_size"]),
                                      ("json", row["json_offset"], row["json_size"])):
                member = members.get(int(offset))
                expected = f"{row['key']}.{ext}"
                if member is None or member.name != expected or member.size != int(size):
                    found = f"member {member.name!r} of {member.size} bytes" if member else "no member"
                    raise ValueError(f"{path}: index row {row['key']!r} expects member {expected!r} of {size} bytes "
                                     f"at offset {offset}, the tar has {found} there; fix: rebuild the shard set")
    return checked
