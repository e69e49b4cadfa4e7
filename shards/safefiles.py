"""Writing into a folder someone else may have prepared: never through a symbolic link.

An OUT folder (or a synth raw tree) can hold a link where the builder puts a file of its own, e.g.
`train-000000.tar.tmp -> ~/.bashrc` or `.building-train -> /elsewhere`: opening that name for writing
would overwrite the link's target, wherever it is. So:
- a build refuses, before any work, an OUT folder any of whose entries is a link (`refuse_links`);
- every file is created as a new file (`create_new`: O_CREAT | O_EXCL | O_NOFOLLOW), which fails on any
  name that exists instead of following it; a regular file left by an interrupted run is removed first;
- every final name is put in place by rename, which replaces a link itself, never its target.
Reading follows links (a shard folder may link big tars from another disk): see shards/README.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from shards.errors import LayoutError

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def link_error(path: Path, fix: str = "remove the link") -> LayoutError:
    return LayoutError(f"{path}: a symbolic link where a file of this tool is written (writing would go through "
                       f"it, to wherever it points); fix: {fix}")


def refuse_links(folder: Path) -> None:
    """LayoutError naming the first entry of the output folder `folder` (if it exists) that is a symbolic link."""
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                raise link_error(folder / entry.name, "remove the link (a build writes only real files into "
                                                      "OUT), or build into a new --out")


def create_new(path: Path) -> BinaryIO:
    """A new, empty regular file at `path` opened for writing; never opens an existing file or a link.

    A regular file already there (an interrupted run's leftover) is removed first; a link is refused."""
    try:
        descriptor = os.open(path, _NEW_FILE, 0o666)
    except FileExistsError:
        if path.is_symlink():
            raise link_error(path) from None
        if not path.is_file():
            raise LayoutError(f"{path}: not a regular file, where a file of this tool is written; fix: remove "
                              f"it") from None
        path.unlink()
        descriptor = os.open(path, _NEW_FILE, 0o666)  # a name planted again since fails here, not followed
    return os.fdopen(descriptor, "wb")


def make_folder(path: Path) -> None:
    """mkdir -p that refuses a link standing where the folder should be (mkdir would accept a link to one)."""
    if path.is_symlink():
        raise link_error(path)
    path.mkdir(parents=True, exist_ok=True)


def write_new_then_replace(path: Path, write) -> None:
    """Atomically (re)place `path`: `write(file)` fills `<name>.tmp` created new, which is fsynced and renamed."""
    temporary = path.with_name(path.name + ".tmp")
    with create_new(temporary) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
