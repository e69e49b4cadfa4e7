"""`python -m shards.verify OUT [--split S ...] [--list]`: read a shard set as any WebDataset consumer would and
check it against its own index.parquet and manifest.json.

For whoever receives a shard set, or wants to know what a build left: without the engine, it checks that
  - every tar the manifest lists is there, with the manifest's size and sha256, and no index row names
    another one;
  - webdataset's own reader yields, shard by shard, exactly the index's samples in index order, each with
    its `<key>.<media_ext>` and `<key>.json` members and nothing else, the json's label being the index's;
  - the bytes at each row's recorded offset and size are that media member (the loader reads them there);
  - each split holds the number of samples the manifest says.
`--list` also prints one line per sample: split, shard, key, media ext, label and label name.
OUT may be a URL (s3://, gs://, https://): its index and manifest are read from there and each tar is
downloaded to a temporary folder in turn (one at a time), checked, and deleted.
Exit status 0 when all agrees, 1 with one line per problem found, 2 when OUT is not a shard folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import webdataset as wds

from shards import storage
from shards.catalog import INDEX_NAME, MANIFEST_NAME, read_index, read_manifest
from shards.errors import LayoutError
from shards.storage import sha256_file


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def check_shard(path: Path, rows: list[dict], listing: list[str] | None = None, shown: str | None = None) -> list[str]:
    """Problems of one tar against its index rows (ordered by media_offset); appends --list lines. `shown`
    names the tar in the problems (its URL, when `path` is a downloaded copy)."""
    problems = check_shard_bytes(path, rows, listing)
    return [problem.replace(str(path), shown) for problem in problems] if shown else problems


def check_shard_bytes(path: Path, rows: list[dict], listing: list[str] | None) -> list[str]:
    problems = []
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    keys = [sample["__key__"] for sample in samples]
    expected = [row["key"] for row in rows]
    if keys != expected:
        missing, extra = sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected))
        problems.append(f"{path}: the tar's samples differ from the index's (missing {missing[:3]}, not indexed "
                        f"{extra[:3]}, or out of order)")
    for sample, row in zip(samples, rows):
        where = f"{path}: sample {row['key']!r}"
        members = {name for name in sample if not name.startswith("__")}
        if members != {row["media_ext"], "json"}:
            problems.append(f"{where}: members {sorted(members)}, the index expects {row['media_ext']!r} and 'json'")
            continue
        media = sample[row["media_ext"]]
        if len(media) != row["media_size"] or _read_at(path, row["media_offset"], row["media_size"]) != media:
            problems.append(f"{where}: the media bytes at index offset {row['media_offset']} ({row['media_size']} "
                            f"bytes) are not the tar's member")
        label = json.loads(sample["json"]).get("label")
        if label != row["label"]:
            problems.append(f"{where}: label {label!r} in its json, {row['label']!r} in the index")
        if listing is not None:
            listing.append(f"{row['split']}\t{path.name}\t{row['key']}\t{row['media_ext']}\t{row['label']}\t"
                           f"{row['label_name']}")
    return problems


@contextmanager
def opened(out: Path | str):
    """(folder holding index.parquet and manifest.json, fetch) for a local folder or a URL: fetch(name) is a
    context manager giving a local path of that file (None when missing) and the name to report it by."""
    if not storage.is_url(out) or storage.local_path(out) is not None:
        folder = Path(storage.local_path(out))

        @contextmanager
        def local(name):
            yield (folder / name if (folder / name).is_file() else None), str(folder / name)

        yield folder, local
        return
    url = str(out).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="vjepa-verify-") as temporary:
        folder = Path(temporary)
        for name in (INDEX_NAME, MANIFEST_NAME):
            try:
                storage.get_file(storage.join(url, name), folder / name)
            except FileNotFoundError:
                pass

        @contextmanager
        def remote(name):
            copy = folder / "shards" / name
            try:
                storage.get_file(storage.join(url, name), copy)
            except FileNotFoundError:
                copy = None
            try:
                yield copy, storage.join(url, name)
            finally:
                if copy is not None:
                    copy.unlink(missing_ok=True)  # one tar on the local disk at a time

        yield folder, remote


def verify(out: Path | str, splits: list[str] | None = None, listing: list[str] | None = None) -> list[str]:
    """Every problem of the shard set in `out` (a folder or a URL; all splits, or `splits`), one line each;
    [] when it is whole."""
    with opened(out) as (folder, fetch):
        index, manifest = read_index(folder), read_manifest(folder)
        if index is None or manifest is None:
            raise LayoutError(f"{out}: no index.parquet and manifest.json; fix: pass the --out folder (or URL) of "
                              f"`python -m shards.build`")
        return _verify(out, index.to_pylist(), manifest, fetch, splits, listing)


def _verify(out, rows: list[dict], manifest: dict, fetch, splits: list[str] | None,
            listing: list[str] | None) -> list[str]:
    problems = []
    if not splits:  # rows of a split the manifest does not list are no split a build finished
        for split in sorted({row["split"] for row in rows} - set(manifest["splits"])):
            problems.append(f"{out / INDEX_NAME}: holds rows of split {split!r}, which the manifest does not list")
    for split in splits or sorted(manifest["splits"]):
        entry = manifest["splits"].get(split)
        if entry is None:
            problems.append(f"{out}: split {split!r} is not in the manifest (it has {sorted(manifest['splits'])})")
            continue
        split_rows = [row for row in rows if row["split"] == split]
        listed = {shard["name"]: shard for shard in entry["shards"]}
        for name in sorted({row["shard"] for row in split_rows} - set(listed)):
            problems.append(f"{storage.join(out, INDEX_NAME)}: rows of split {split!r} name shard {name!r}, which "
                            f"the manifest does not list")
        for name, shard in listed.items():
            with fetch(name) as (path, shown):
                if path is None:
                    problems.append(f"{shown}: missing (listed in the manifest)")
                    continue
                if path.stat().st_size != shard["size"] or sha256_file(path) != shard["sha256"]:
                    problems.append(f"{shown}: size or sha256 differs from the manifest's")
                shard_rows = sorted((row for row in split_rows if row["shard"] == name),
                                    key=lambda r: r["media_offset"])
                problems += check_shard(path, shard_rows, listing, shown=shown)
        if len(split_rows) != entry["count"]:
            problems.append(f"{out}: split {split!r} has {len(split_rows)} index rows, the manifest counts "
                            f"{entry['count']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.verify", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=lambda text: text if storage.is_url(text) else Path(text),
                        help="a shard folder or URL (s3://, gs://, https://) written by `python -m shards.build --out`")
    parser.add_argument("--split", action="append", help="check only this split (repeatable; default: all)")
    parser.add_argument("--list", action="store_true", help="print one line per sample")
    args = parser.parse_args(argv)
    listing: list[str] | None = [] if args.list else None
    try:
        problems = verify(args.out, args.split, listing)
    except (LayoutError, storage.StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in listing or ():
        print(line)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.out}: every shard agrees with index.parquet and manifest.json", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
