"""Evaluation on benchmarks whose shards root is an fsspec URL (`--shards s3://bucket/shards`).

Evaluation reads every sample of a benchmark's train and test splits, in order, and checks every tar
member first (engine.eval.eval_sets.check_benchmark): a sequential scan of whole tars, which the design
leaves to whole-file reads. So a remote benchmark folder is copied once into the local cache
(`$VJEPA_CACHE` or ~/.cache/vjepa-engine, `benchmarks/<folder>-<hash>`): its index and manifest, then each
tar the index names, checked against the manifest's size and sha256 where it lists them. A copy that is
already complete is reused without a request per tar; the evaluation then runs on the local copy exactly
as on a local folder (results and feature caches are keyed by the weights and the folder's contents).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from shards import storage



def stage_folder(url: str, local: Path) -> Path:
    """A complete local copy of one remote shard folder (index, manifest, every tar its index names)."""
    import pyarrow.parquet as pq

    from shards.names import check_names

    local.mkdir(parents=True, exist_ok=True)
    index_bytes = storage.read_bytes(storage.join(url, "index.parquet"))
    manifest_bytes = storage.read_bytes(storage.join(url, "manifest.json"))
    shards = sorted(set(pq.read_table(io.BytesIO(index_bytes), columns=["shard"]).column("shard").to_pylist()))
    check_names(shards, "shard", storage.join(url, "index.parquet"))
    listed = {entry["name"]: entry for split in (json.loads(manifest_bytes).get("splits") or {}).values()
              for entry in split.get("shards", []) if isinstance(entry, dict) and "name" in entry}
    unchanged = (local / "index.parquet").is_file() and (local / "index.parquet").read_bytes() == index_bytes
    for name in shards:
        target, entry = local / name, listed.get(name, {})
        if unchanged and target.is_file() and ("size" not in entry or target.stat().st_size == entry["size"]):
            continue
        storage.get_file(storage.join(url, name), target)
        if entry.get("sha256") and storage.sha256_file(target) != entry["sha256"]:
            target.unlink()
            raise ValueError(f"{storage.join(url, name)}: sha256 differs from its manifest.json entry; the remote "
                             f"folder is being rewritten or is damaged: rebuild or re-upload it")
    # the catalog last: a copy interrupted above is never taken for a complete one
    (local / "manifest.json").write_bytes(manifest_bytes)
    (local / "index.parquet").write_bytes(index_bytes)
    return local


def local_shards_root(shards_root: str | Path, folders: list[str], cache_dir: str | Path | None = None) -> str | Path:
    """`shards_root` itself for a path; for a URL, a local folder holding copies of the named benchmark folders."""
    if not storage.is_url(shards_root) or storage.local_path(shards_root) is not None:
        return storage.local_path(shards_root) if storage.is_url(shards_root) else shards_root
    root = storage.cache_folder(str(shards_root), "benchmarks", cache_dir)
    for folder in folders:
        url = storage.join(str(shards_root), folder)
        if storage.exists(storage.join(url, "index.parquet")):  # a missing one is reported by check_benchmark
            stage_folder(url, root / folder)
    return root
