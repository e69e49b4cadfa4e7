"""index.parquet and manifest.json of one OUT folder (docs/contracts.md section 1), merged one split at a time.

Both files are replaced atomically (written beside as new files, never through a link, then renamed:
shards.safefiles). Merging a split drops that split's
old rows and entry and keeps every other split. Neither file holds timestamps or worker counts, so the
same inputs and arguments give byte-identical files.

An OUT that already holds files may come from anywhere: every key and shard name read from its index or
manifest, and every one merged into them, must stay inside OUT (shards.names), else a LayoutError names it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.errors import LayoutError
from shards.names import UnsafeName, check_name, check_names
from shards.safefiles import write_new_then_replace

FORMAT_VERSION = 1
INDEX_NAME, MANIFEST_NAME = "index.parquet", "manifest.json"

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("split", pa.string()),
    ("shard", pa.string()),
    ("media_ext", pa.string()),
    ("media_offset", pa.int64()),
    ("media_size", pa.int64()),
    ("json_offset", pa.int64()),
    ("json_size", pa.int64()),
    ("label", pa.int64()),
    ("label_name", pa.string()),
    ("dataset", pa.string()),
    ("codec", pa.string()),
    ("num_frames", pa.int32()),
    ("fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("duration", pa.float64()),
])


def _check_rows(keys: list, shards: list, where: Path) -> None:
    try:
        check_names(shards, "shard", where)
        check_names(keys, "index key", where)
    except UnsafeName as error:
        raise LayoutError(str(error)) from None


def read_index(out: Path) -> pa.Table | None:
    path = out / INDEX_NAME
    if not path.is_file():
        return None
    table = pq.read_table(path, schema=INDEX_SCHEMA)
    _check_rows(table.column("key").to_pylist(), table.column("shard").to_pylist(), path)
    return table


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LayoutError(f"{path}: not valid JSON ({error}); delete it or build into a new --out") from None
    splits = manifest.get("splits", {}) if isinstance(manifest, dict) else None
    if not isinstance(splits, dict):
        raise LayoutError(f"{path}: not a manifest of this builder (no splits mapping); build into a new --out")
    try:
        for split, entry in splits.items():
            for shard in (entry or {}).get("shards", []) if isinstance(entry, dict) else []:
                check_name(shard.get("name") if isinstance(shard, dict) else shard, f"split {split!r} shard", path)
    except UnsafeName as error:
        raise LayoutError(str(error)) from None
    return manifest


def merge_index(out: Path, split: str, rows: list[dict]) -> pa.Table:
    """Replace `split`'s rows; rows are sorted by (split, shard, media_offset) as the contract says."""
    kept = []
    existing = read_index(out)
    if existing is not None:
        kept = [row for row in existing.to_pylist() if row["split"] != split]
    _check_rows([row["key"] for row in rows], [row["shard"] for row in rows], out / INDEX_NAME)  # e.g. a journal's
    merged = sorted(kept + rows, key=lambda row: (row["split"], row["shard"], row["media_offset"]))
    table = pa.Table.from_pylist([{name: row[name] for name in INDEX_SCHEMA.names} for row in merged],
                                 schema=INDEX_SCHEMA)
    write_new_then_replace(out / INDEX_NAME, lambda handle: pq.write_table(table, handle))
    return table


def merge_manifest(out: Path, dataset: str, classes: list[str], split: str, split_entry: dict,
                   build_args: dict) -> dict:
    manifest = read_manifest(out) or {}
    splits = dict(manifest.get("splits", {}))
    splits[split] = split_entry
    merged = {
        "dataset": dataset,
        "classes": classes,
        "splits": {name: splits[name] for name in sorted(splits)},
        "build": build_args,
        "format_version": FORMAT_VERSION,
    }
    text = json.dumps(merged, indent=2, ensure_ascii=False) + "\n"
    write_new_then_replace(out / MANIFEST_NAME, lambda handle: handle.write(text.encode("utf-8")))
    return merged


def check_out_compatible(out: Path, dataset: str, classes: list[str]) -> dict | None:
    """An OUT that already holds another dataset (or other classes) cannot take this build."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LayoutError(f"{out / MANIFEST_NAME}: format_version {manifest.get('format_version')!r}, "
                          f"this builder writes {FORMAT_VERSION}; build into a new --out")
    if manifest.get("dataset") != dataset or manifest.get("classes") != classes:
        raise LayoutError(f"{out / MANIFEST_NAME}: holds dataset {manifest.get('dataset')!r} with "
                          f"{len(manifest.get('classes', []))} classes, not {dataset!r} with {len(classes)}; "
                          "build into a new --out")
    return manifest


def split_missing_parts(out: Path, split: str, entry: dict, tars_here: bool = True) -> str | None:
    """Why the manifest's `entry` for `split` is not whole in OUT (a tar gone or resized, index rows gone), as one
    clause naming the file; None when every listed tar and every counted index row is there. `tars_here`
    False: a staging folder of an --out URL, which holds the URL's index and manifest but not its tars."""
    for shard in entry.get("shards", []) if tars_here else []:
        if not isinstance(shard, dict):
            return f"{out / MANIFEST_NAME} lists shard {shard!r} without its size"
        path = out / shard["name"]
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != shard.get("size"):
            return f"{path} is not the size the manifest records"
    index = read_index(out)
    rows = 0 if index is None else index.column("split").to_pylist().count(split)
    if rows != entry.get("count"):
        return f"{out / INDEX_NAME} holds {rows} rows of it, the manifest counts {entry.get('count')}"
    return None


def keys_of_other_splits(out: Path, split: str) -> set[str]:
    existing = read_index(out)
    if existing is None:
        return set()
    keys = existing.column("key").to_pylist()
    splits = existing.column("split").to_pylist()
    return {key for key, other in zip(keys, splits) if other != split}
