"""The resume journal of one split's build: `OUT/.building-<split>/`.

The builder walks the split's samples in a fixed order and fills shards in that order, so the
completed shards always cover a prefix of the sample list. After each shard is renamed into place the
journal records it (its index rows in `rows-NNNNNN.json`, then `state.json` with the shard list, the
rejects so far and the position of the first sample not yet in a completed shard). A rerun with the
same arguments starts from that position with the next shard number; a shard that was being written
when the build died is simply written again. Any other arguments (or a changed source listing) make
the journal stale and the split starts over.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from shards.errors import LayoutError
from shards.names import UnsafeName, check_name
from shards.safefiles import make_folder, write_new_then_replace
from shards.tarwriter import ClosedShard


def _write_json_atomically(path: Path, payload) -> None:
    text = json.dumps(payload, ensure_ascii=False)
    write_new_then_replace(path, lambda handle: handle.write(text.encode("utf-8")))


def _well_formed(saved) -> bool:
    """state.json as commit() writes it (anything else is a stale or foreign journal, dropped)."""
    return (isinstance(saved, dict) and {"fingerprint", "shards", "rejects", "next_position"} <= set(saved)
            and isinstance(saved["shards"], list) and isinstance(saved["rejects"], list)
            and isinstance(saved["next_position"], int)
            and all(isinstance(shard, dict) and isinstance(shard.get("name"), str)
                    and isinstance(shard.get("size"), int) and isinstance(shard.get("count"), int)
                    for shard in saved["shards"]))


class BuildState:
    def __init__(self, folder: Path, fingerprint: dict):
        self.folder, self.fingerprint = folder, fingerprint
        self.shards: list[dict] = []       # {"name", "size", "sha256", "count"}
        self.rejects: list[dict] = []      # {"source", "reason"}
        self.next_position = 0

    @classmethod
    def open(cls, out: Path, split: str, fingerprint: dict) -> tuple[BuildState, str]:
        """The journal to continue, and 'fresh', 'resumed' or 'restarted' (stale journal dropped)."""
        folder = out / f".building-{split}"
        state = cls(folder, fingerprint)
        state_path = folder / "state.json"
        if not state_path.is_file():
            return state, "fresh"
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            saved = {}
        if not isinstance(saved, dict):
            saved = {}
        try:  # a journal in an OUT from elsewhere: its shard names are stat'ed, then land in the manifest
            for shard in saved.get("shards", []) if isinstance(saved.get("shards"), list) else []:
                check_name(shard.get("name") if isinstance(shard, dict) else shard, "journal shard", state_path)
        except UnsafeName as error:
            raise LayoutError(str(error)) from None
        if (not _well_formed(saved) or saved["fingerprint"] != fingerprint
                or not state._shards_intact(out, saved["shards"]) or not state._rows_match(saved["shards"])):
            shutil.rmtree(folder)
            return cls(folder, fingerprint), "restarted"
        state.shards, state.rejects = saved["shards"], saved["rejects"]
        state.next_position = saved["next_position"]
        return state, "resumed"

    @staticmethod
    def _shards_intact(out: Path, shards: list[dict]) -> bool:
        return all((out / shard["name"]).is_file() and (out / shard["name"]).stat().st_size == shard["size"]
                   for shard in shards)

    def _rows_match(self, shards: list[dict]) -> bool:
        """The rows files of a journal about to be resumed: each a list of rows of its own shard. Their keys and
        shard names end up in the index after the build, so an unsafe one is refused now, before any
        transcoding (LayoutError); a missing or malformed file makes the journal stale (False)."""
        for number, shard in enumerate(shards):
            path = self.folder / f"rows-{number:06d}.json"
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return False
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                return False
            try:
                for row in rows:
                    check_name(row.get("shard"), "journal row shard", path)
                    check_name(row.get("key"), "journal row key", path)
            except UnsafeName as error:
                raise LayoutError(str(error)) from None
            if len(rows) != shard["count"] or any(row["shard"] != shard["name"] for row in rows):
                return False
        return True

    def commit(self, closed: ClosedShard | None, rejects: list[dict], next_position: int) -> None:
        """Record a shard that is already renamed into place, plus the rejects before `next_position`."""
        make_folder(self.folder)
        if closed is not None:
            _write_json_atomically(self.folder / f"rows-{len(self.shards):06d}.json", closed.rows)
            self.shards.append({"name": closed.name, "size": closed.size, "sha256": closed.sha256,
                                "count": closed.count})
        self.rejects.extend(rejects)
        self.next_position = next_position
        _write_json_atomically(self.folder / "state.json", {
            "fingerprint": self.fingerprint, "shards": self.shards, "rejects": self.rejects,
            "next_position": next_position})

    def rows(self) -> list[dict]:
        rows: list[dict] = []
        for number in range(len(self.shards)):
            rows.extend(json.loads((self.folder / f"rows-{number:06d}.json").read_text(encoding="utf-8")))
        return rows

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
