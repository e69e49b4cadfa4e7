"""`shards.build --out s3://bucket/shards/...`: build into a local staging folder, then publish to the URL.

A shard build appends to tars, journals its progress and takes a lock on OUT, none of which object stores
offer, so a build whose OUT is a URL runs exactly as a local one into a staging folder (`--staging`, default
`~/.cache/vjepa-engine/staging/<name>-<hash of the URL>`) and then uploads what it wrote:

1. before planning, the URL's existing `index.parquet` and `manifest.json` (of OUT, or of each synth part
   under it) are copied into a staging folder that has none, so a split already built there is recognised
   and another split merges into the same index (a staging folder's own copies, which may hold work not yet
   published, are kept);
2. after the build, every tar the staging folder holds that the URL lacks (or holds with another size) is
   uploaded, then `index.parquet`, then `manifest.json` last: a reader that finds the manifest finds every
   shard it names. Journals (`.building-*`) and temporary files are never uploaded.

A killed build resumes from the staging folder's journal as a local build does; a killed upload is
finished by rerunning the same command (the build itself is then "already built").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from shards import storage
from shards.catalog import INDEX_NAME, MANIFEST_NAME

SYNTH_PARTS = ("synth-ucf", "synth-ssv2", "synth-in", "synth-diving")


def out_location(text: str) -> Path | str:
    """argparse type of --out: a Path, or a URL kept as text (file:// becomes its path)."""
    if storage.is_url(text):
        local = storage.local_path(text)
        return local if local is not None else text.rstrip("/")
    return Path(text)


class StagedOut:
    def __init__(self, url: str, staging: Path, folders: list[str]):
        self.url, self.staging, self.folders = url, staging, folders

    def fetch_catalogs(self) -> None:
        for folder in self.folders:
            for name in (INDEX_NAME, MANIFEST_NAME):
                remote = storage.join(self.url, *([folder] if folder else []), name)
                local = self.staging.joinpath(*([folder] if folder else []), name)
                if not local.exists() and storage.exists(remote):  # a staging copy is newer (unpublished work)
                    storage.get_file(remote, local)

    def publish(self) -> list[str]:
        """Upload what the URL lacks; returns the names uploaded (relative to the URL)."""
        uploaded = []
        for folder in self.folders:
            local = self.staging / folder if folder else self.staging
            if not (local / MANIFEST_NAME).is_file():
                continue
            remote = storage.join(self.url, folder) if folder else self.url
            present = storage.list_names(remote)
            tars = sorted(p for p in local.iterdir() if p.is_file() and p.name.endswith(".tar"))
            for path in tars:
                if present.get(path.name) != path.stat().st_size:
                    storage.put_file(path, storage.join(remote, path.name))
                    uploaded.append(f"{folder}/{path.name}" if folder else path.name)
            for name in (INDEX_NAME, MANIFEST_NAME):  # the manifest last
                storage.put_file(local / name, storage.join(remote, name))
                uploaded.append(f"{folder}/{name}" if folder else name)
        return uploaded


def stage(args: argparse.Namespace) -> StagedOut | None:
    """For an --out URL: point args.out at the staging folder, fetch the URL's catalogs; None for a path."""
    if not isinstance(args.out, str):
        return None
    url = args.out
    staging = (Path(args.staging).expanduser() if getattr(args, "staging", None)
               else storage.cache_folder(url, "staging"))
    staging.mkdir(parents=True, exist_ok=True)
    staged = StagedOut(url, staging, list(SYNTH_PARTS) if args.source == "synth" else [""])
    staged.fetch_catalogs()
    args.out, args.staged_url = staging, url  # the URL's tars are not in staging (shards.catalog.split_missing_parts)
    print(f"building into {staging}, then uploading to {url}")
    return staged
