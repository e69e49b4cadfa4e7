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

Before either, the URL is checked with one tiny write (`.vjepa-write-check`, deleted again): a bucket that
does not exist, missing credentials, a refused write or an unreachable endpoint is one line before any
transcoding. The upload shows a progress bar in bytes (none with --quiet).

A killed build resumes from the staging folder's journal as a local build does; a killed upload is
finished by rerunning the same command (the build itself is then "already built").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from shards import storage
from shards.catalog import INDEX_NAME, MANIFEST_NAME

SYNTH_PARTS = ("synth-ucf", "synth-ssv2", "synth-in", "synth-diving")
WRITE_CHECK = ".vjepa-write-check"


def check_destination(url: str) -> None:
    """One small write and delete at the URL, so that a destination the upload could not reach or write fails
    now, in one line, and not after the build."""
    where = f"--out {url}"
    fs, inner = storage.filesystem(url)  # a missing backend or an unreachable endpoint: its own line
    probe = f"{inner.rstrip('/')}/{WRITE_CHECK}"
    try:
        storage.DEFAULT_RETRY(f"{url}: write check", fs.pipe_file, probe, b"")
    except storage.StorageError:
        raise
    except FileNotFoundError as error:
        bucket = inner.split("/", 1)[0]
        raise storage.StorageError(f"{where}: the bucket {bucket!r} does not exist ({error}); fix: create it (e.g. "
                                   f"`aws s3 mb {storage.scheme(url)}://{bucket}`) or correct --out") from None
    except PermissionError as error:
        raise storage.StorageError(f"{where}: writing there is refused ({error}); fix: check the credentials in "
                                   f"the environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the "
                                   f"bucket's policy") from None
    except NotImplementedError:
        raise storage.StorageError(f"{where}: {storage.scheme(url)}:// cannot be written to; fix: build into an "
                                   f"object store (s3://, gs://) or a folder, and serve that") from None
    except Exception as error:  # noqa: BLE001 - e.g. botocore's NoCredentialsError: one line, not a traceback
        raise storage.StorageError(f"{where}: cannot write there ({type(error).__name__}: {error}); fix: check "
                                   f"the URL and the credentials in the environment (for S3: AWS_ACCESS_KEY_ID, "
                                   f"AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)") from None
    try:
        fs.rm_file(probe)
    except Exception:  # noqa: BLE001 - a store that lets us write but not delete keeps an empty object
        pass


def out_location(text: str) -> Path | str:
    """argparse type of --out: a Path, or a URL kept as text (file:// becomes its path)."""
    if storage.is_url(text):
        local = storage.local_path(text)
        return local if local is not None else text.rstrip("/")
    return Path(text)


class StagedOut:
    def __init__(self, url: str, staging: Path, folders: list[str], quiet: bool = False):
        self.url, self.staging, self.folders, self.quiet = url, staging, folders, quiet

    def fetch_catalogs(self) -> None:
        for folder in self.folders:
            for name in (INDEX_NAME, MANIFEST_NAME):
                remote = storage.join(self.url, *([folder] if folder else []), name)
                local = self.staging.joinpath(*([folder] if folder else []), name)
                if not local.exists() and storage.exists(remote):  # a staging copy is newer (unpublished work)
                    storage.get_file(remote, local)

    def publish(self) -> list[str]:
        """Upload what the URL lacks; returns the names uploaded (relative to the URL)."""
        plan = []  # (local file, remote location, name reported)
        for folder in self.folders:
            local = self.staging / folder if folder else self.staging
            if not (local / MANIFEST_NAME).is_file():
                continue
            remote = storage.join(self.url, folder) if folder else self.url
            present = storage.list_names(remote)
            tars = sorted(p for p in local.iterdir() if p.is_file() and p.name.endswith(".tar"))
            names = [p.name for p in tars if present.get(p.name) != p.stat().st_size]
            names += [INDEX_NAME, MANIFEST_NAME]  # the manifest last
            plan += [(local / name, storage.join(remote, name), f"{folder}/{name}" if folder else name)
                     for name in names]
        from tqdm import tqdm

        total = sum(path.stat().st_size for path, _, _ in plan)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"uploading to {self.url}",
                  disable=self.quiet, dynamic_ncols=True, mininterval=0.5) as bar:
            for path, location, _ in plan:
                storage.put_file(path, location, progress=bar.update)
        return [name for _, _, name in plan]


def stage(args: argparse.Namespace) -> StagedOut | None:
    """For an --out URL: point args.out at the staging folder, fetch the URL's catalogs; None for a path."""
    if not isinstance(args.out, str):
        return None
    url = args.out
    check_destination(url)
    staging = (Path(args.staging).expanduser() if getattr(args, "staging", None)
               else storage.cache_folder(url, "staging"))
    staging.mkdir(parents=True, exist_ok=True)
    staged = StagedOut(url, staging, list(SYNTH_PARTS) if args.source == "synth" else [""],
                       quiet=bool(getattr(args, "quiet", False)))
    staged.fetch_catalogs()
    args.out, args.staged_url = staging, url  # the URL's tars are not in staging (shards.catalog.split_missing_parts)
    print(f"building into {staging}, then uploading to {url}")
    return staged
