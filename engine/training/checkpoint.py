"""Atomic training checkpoints with keep-last-K and `--resume auto`.

Layout under `<run>/checkpoints/`:

    step_00000100/            a complete checkpoint (has COMPLETE)
      ds/                     DeepSpeed engine: module, ZeRO optimizer shards (one file per rank)
      latest                  DeepSpeed's tag file ("ds"), which its zero_to_fp32.py looks for
      zero_to_fp32.py         DeepSpeed's converter: online encoder + predictor + heads (not the EMA target)
      recipe.yaml             the resolved recipe this checkpoint was trained with (export reads it)
      trainer.pt              rank 0: EMA target (fp32), step, counters
      rank_00000.pt           per rank: loader state, RNG states (python, numpy, torch, cuda)
      COMPLETE                JSON written last: step, world size, time
    step_00000200.partial/    being written; never read; removed by the next writer
    latest                    name of the newest complete checkpoint (replaced atomically)

Every rank writes into the `.partial` folder; after a barrier rank 0 writes COMPLETE, fsyncs and renames
the folder into place, so a kill at any moment leaves the previous checkpoint whole. The checkpoint
folder must be on a file system all ranks share (as DeepSpeed's own checkpoints require).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"
DS_TAG = "ds"
RECIPE = "recipe.yaml"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """Every RNG the step may draw from, so a resumed run draws the same numbers."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    if ckpt_root.is_dir():
        for child in ckpt_root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / COMPLETE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_recipe(folder: Path) -> Path:
    """The recipe a checkpoint was trained with: its own copy. Checkpoints written before they carried one
    fall back to their run folder's recipe.yaml, which is what the run had until a resume rewrote it."""
    own = Path(folder) / RECIPE
    return own if own.is_file() else Path(folder).parent.parent / RECIPE


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint. The `latest` pointer is a hint; COMPLETE markers decide."""
    complete = complete_checkpoints(ckpt_root)
    return complete[-1][1] if complete else None


class CheckpointManager:
    """Writes and reads the trainer's checkpoints for one run folder."""

    def __init__(self, run_dir: str | Path, keep_last: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    # -- writing -------------------------------------------------------------------------------------

    def save(self, step: int, engine, trainer_state: dict[str, Any], rank_state: dict[str, Any],
             files: dict[str, str] | None = None) -> Path:
        """Collective: every rank calls it with its own rank_state; rank 0's trainer_state and `files` (name ->
        text, e.g. the resolved recipe) are kept."""
        rank = _rank()
        final = self.root / step_dir_name(step)
        partial = self.root / (step_dir_name(step) + ".partial")
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
        _barrier()
        # DeepSpeed writes the module (rank 0) and each rank's ZeRO optimizer partition, its zero_to_fp32.py,
        # and the `latest` tag file that script needs to run without `-t ds`.
        engine.save_checkpoint(str(partial), tag=DS_TAG, save_latest=True)
        torch.save({**rank_state, "rng": capture_rng()}, partial / f"rank_{rank:05d}.pt")
        if rank == 0:
            torch.save(trainer_state, partial / "trainer.pt")
            for name, text in (files or {}).items():
                (partial / name).write_text(text, encoding="utf-8")
        _barrier()
        if rank == 0:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            marker = partial / COMPLETE
            with open(marker, "w", encoding="utf-8") as fh:
                json.dump({"step": step, "world_size": world, "time": time.time()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(partial)
            if final.exists():  # a step re-saved after a resume: replace the old folder
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_dir(self.root)
            pointer = self.root / "latest.tmp"
            pointer.write_text(final.name, encoding="utf-8")
            os.replace(pointer, self.root / "latest")
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        complete = complete_checkpoints(self.root)
        for _, folder in complete[:-self.keep_last]:
            shutil.rmtree(folder, ignore_errors=True)
        newest = complete[-1][0] if complete else -1
        for child in self.root.iterdir():  # leftovers of killed writers, older than the newest checkpoint
            if child.name.endswith(".partial") and STEP_DIR.match(child.name[:-len(".partial")]):
                if int(child.name[5:13]) <= newest:
                    shutil.rmtree(child, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------------

    def resolve(self, resume: str | None) -> Path | None:
        """`auto`: the newest complete checkpoint or None; a path: that checkpoint (must be complete)."""
        if resume is None or resume == "none":
            return None
        if resume == "auto":
            return latest_checkpoint(self.root)
        folder = Path(resume)
        if not (folder / COMPLETE).is_file():
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no {COMPLETE} file); fix: "
                                    f"pass a step_XXXXXXXX folder under {self.root} or --resume auto")
        return folder

    def load(self, folder: Path, engine) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the engine in place; return (trainer_state, this rank's state). RNG is restored too."""
        rank = _rank()
        meta = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank_file = folder / f"rank_{rank:05d}.pt"
        if meta["world_size"] != world:
            raise RuntimeError(f"{folder}: written by {meta['world_size']} ranks, resumed with {world}; exact "
                               f"resume needs the same number of processes; fix: relaunch with "
                               f"{meta['world_size']} processes")
        load_path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load its checkpoint from {folder / DS_TAG}")
        trainer_state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
        restore_rng(rank_state["rng"])
        return trainer_state, rank_state
