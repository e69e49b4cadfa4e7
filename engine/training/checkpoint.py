"""Atomic training checkpoints with keep-last-K and `--resume auto`.

Layout under `<run>/checkpoints/`:

    step_00000100/            a complete checkpoint (has COMPLETE)
      ds/                     DeepSpeed engine: module, ZeRO optimizer shards (one file per rank); pickles
      ds.seal                 sha256 of every file in ds/, HMAC'd with this machine's key (engine.training.seal)
      latest                  DeepSpeed's tag file ("ds"), which its zero_to_fp32.py looks for
      zero_to_fp32.py         DeepSpeed's converter: online encoder + predictor + heads (not the EMA target)
      recipe.yaml             the resolved recipe this checkpoint was trained with (export reads it)
      trainer.pt              rank 0: EMA target (fp32) and any other tensors of the trainer's state
      trainer.json            rank 0: the rest of it: step, NaN counters, collapse alarm, which encoder, run
      rank_00000.pt           per rank: RNG states (python, numpy, torch, cuda) as tensors and lists
      rank_00000.json         per rank: loader state, step
      COMPLETE                JSON written last: step, world size, time
    step_00000200.partial/    being written; never read; removed by the next writer
    latest                    name of the newest complete checkpoint (replaced atomically)

The engine's own files are plain data: the `.pt` files hold only tensors, numbers, strings, lists and
dicts and are read with `torch.load(weights_only=True)`, which cannot run code; anything needing more is
refused in one line naming the file. DeepSpeed's `ds/` files are pickles that DeepSpeed loads with
`weights_only=False`: resume hands them to it only when `ds.seal` shows this machine wrote them. Checkpoints
written before this layout (`trainer.pt`/`rank_*.pt` pickles with numpy RNG states, no `.json`, no seal)
are refused until converted once, explicitly: `python -m engine.training.checkpoint <folder>
--trust-legacy-pickle`.

Every rank writes into the `.partial` folder; after a barrier rank 0 seals ds/, writes COMPLETE, fsyncs and
renames the folder into place, so a kill at any moment leaves the previous checkpoint whole. The checkpoint
folder must be on a file system all ranks share (as DeepSpeed's own checkpoints require).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from engine.training.seal import CheckpointRefused, verify_seal, write_seal

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"
DS_TAG = "ds"
RECIPE = "recipe.yaml"
TRAINER_PT, TRAINER_JSON = "trainer.pt", "trainer.json"
# 2: the engine's state as weights-only torch files plus JSON (1, unnumbered: pickles with numpy objects).
FORMAT = 2


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
    """Every RNG the step may draw from, so a resumed run draws the same numbers. Tensors and lists only:
    the file must load with weights_only=True (numpy's own state object would need pickle)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"python": [version, list(internal), gauss],
             "numpy": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(numpy["key"], dtype=np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _legacy_rng(state: dict[str, Any]) -> dict[str, Any]:
    """The RNG states of a format-1 rank file (python tuple, numpy's get_state() tuple) in today's form."""
    version, internal, gauss = state["python"]
    _, key, pos, has_gauss, cached = state["numpy"]
    new = {"python": [version, list(internal), gauss],
           "numpy": {"key": np.asarray(key).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                     "gauss": float(cached)},
           "torch": state["torch"]}
    if "cuda" in state:
        new["cuda"] = list(state["cuda"])
    return new


# -- the engine's own files: tensors in weights-only torch files, the rest in JSON ----------------------

def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensor(v) for v in value.values())
    return isinstance(value, (list, tuple)) and any(_holds_tensor(v) for v in value)


def _plain(value: Any) -> Any:
    """json.dumps fallback for numpy and 0-d torch scalars; anything else is a bug to see at save time."""
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"checkpoint state: {type(value).__name__} is not JSON data; keep tensors in tensor entries")


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, default=_plain, indent=1) + "\n"
    _write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_state(folder: Path, stem: str, state: Mapping[str, Any]) -> None:
    """Entries holding a tensor (the EMA weights, the RNG states) into <stem>.pt, everything else into
    <stem>.json. JSON first: a .pt of today's format then always has its .json beside it."""
    tensors = {k: v for k, v in state.items() if _holds_tensor(v)}
    _write_json(folder / f"{stem}.json", {"format": FORMAT, **{k: v for k, v in state.items() if k not in tensors}})
    _write_atomically(folder / f"{stem}.pt", lambda tmp: torch.save({"format": FORMAT, **tensors}, tmp))


def load_weights_only(path: Path, fix: str) -> Any:
    """torch.load that cannot run code: tensors and plain data, or one CheckpointRefused line naming the file.

    torch warns (two lines) about a raw pickle's protocol before the weights-only load refuses it; the refusal
    is the one line a user needs, on resume and on export alike."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+)", str(err))
        what = needs.group(1).replace("Unsupported global: GLOBAL ", "") if needs else "more than tensors and data"
        raise CheckpointRefused(f"{path}: refused: loading it needs pickle ({what}), which can run code; "
                                f"fix: {fix}") from None


def _read_json(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise CheckpointRefused(f"{path}: missing (a checkpoint written before checkpoints kept their state "
                                f"pickle-free, or an incomplete copy); fix: {fix}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointRefused(f"{path}: not valid JSON ({err}); fix: {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointRefused(f"{path}: format {payload.get('format') if isinstance(payload, dict) else None!r}, "
                                f"this engine reads {FORMAT}; fix: {fix}")
    return payload


ALTERED_FIX = ("do not use this checkpoint: its .json says the engine wrote this file as plain tensors and data, so "
               "it was altered since (or a conversion was killed while writing it)")


def _read_state(folder: Path, stem: str, fix: str) -> dict[str, Any]:
    """<stem>.json + <stem>.pt. Without the .json it is a legacy checkpoint (`fix` says what to do); with it,
    a .pt that needs pickle was altered, and no conversion will unpickle it."""
    plain = _read_json(folder / f"{stem}.json", fix)
    tensors = load_weights_only(folder / f"{stem}.pt", ALTERED_FIX)
    if not isinstance(tensors, dict) or tensors.get("format") != FORMAT:
        raise CheckpointRefused(f"{folder / f'{stem}.pt'}: not a format-{FORMAT} state of this engine; fix: "
                                f"{ALTERED_FIX}")
    return {**{k: v for k, v in plain.items() if k != "format"}, **{k: v for k, v in tensors.items() if k != "format"}}


def convert_fix(folder: Path) -> str:
    """What to do with a checkpoint the engine will not resume: convert it once if trusted, else export."""
    return (f"if it was written by you or someone you trust, convert it once: `python -m engine.training.checkpoint "
            f"{folder} --trust-legacy-pickle`; otherwise take only its weights: `python -m engine.export {folder} "
            f"--out encoder.safetensors`")


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """Rank 0's state of a checkpoint (trainer.json + trainer.pt), read without pickle."""
    return _read_state(Path(folder), "trainer", convert_fix(Path(folder)))


def read_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    """One rank's state (rank_NNNNN.json + rank_NNNNN.pt: loader, step, RNG), read without pickle."""
    return _read_state(Path(folder), f"rank_{rank:05d}", convert_fix(Path(folder)))


def check_resumable(folder: Path) -> None:
    """Everything resume will load, checked before anything is written or DeepSpeed starts: the seal over
    DeepSpeed's files and the engine's own files of every rank."""
    folder = Path(folder)
    verify_seal(folder, DS_TAG, convert_fix(folder))
    read_trainer_state(folder)
    world = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))["world_size"]
    for rank in range(int(world)):
        read_rank_state(folder, rank)


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
    """Writes and reads the trainer's checkpoints for one run folder, and says when the loop must write one:
    every `every` steps, at `last_step`, and whenever the run stops early."""

    def __init__(self, run_dir: str | Path, keep_last: int, every: int = 0, last_step: int = 0):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.every = every
        self.last_step = last_step

    def due(self, step: int, stopping: bool = False) -> bool:
        """Whether the state after `step` finished steps is to be saved."""
        return stopping or step == self.last_step or (self.every > 0 and step % self.every == 0)

    # -- writing -------------------------------------------------------------------------------------

    def save(self, step: int, engine, trainer_state: dict[str, Any], rank_state: dict[str, Any],
             files: dict[str, str] | None = None) -> Path:
        """Collective: every rank calls it with its own rank_state; rank 0's trainer_state and `files` (name ->
        text, e.g. the resolved recipe) are kept. A state's entries that hold tensors go to its .pt file (tensors,
        numbers, strings, lists, dicts: weights-only loadable), the others to the .json file beside it."""
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
        _write_state(partial, f"rank_{rank:05d}", {**rank_state, "rng": capture_rng()})
        if rank == 0:
            _write_state(partial, "trainer", trainer_state)
            for name, text in (files or {}).items():
                (partial / name).write_text(text, encoding="utf-8")
        _barrier()
        if rank == 0:
            write_seal(partial, DS_TAG)  # every rank's ds/ files are in place after the barrier
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
        """Restore the engine in place; return (trainer_state, this rank's state). RNG is restored too.
        Nothing is unpickled unless ds.seal shows this machine wrote DeepSpeed's files."""
        rank = _rank()
        meta = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if meta["world_size"] != world:
            raise RuntimeError(f"{folder}: written by {meta['world_size']} ranks, resumed with {world}; exact "
                               f"resume needs the same number of processes; fix: relaunch with "
                               f"{meta['world_size']} processes")
        trainer_state = read_trainer_state(folder)
        rank_state = read_rank_state(folder, rank)
        # DeepSpeed's checkpoint engine loads every ds/ file with weights_only=False: only sealed ones reach it.
        verify_seal(folder, DS_TAG, convert_fix(folder))
        load_path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load its checkpoint from {folder / DS_TAG}")
        restore_rng(rank_state["rng"])
        return trainer_state, rank_state


# -- one-time conversion of checkpoints written before the engine's state was pickle-free ---------------

def convert_legacy(folder: Path) -> list[str]:
    """Rewrite a checkpoint's engine files in today's format and seal its ds/ files for this machine.

    The one place the engine unpickles its own old files (torch.load(weights_only=False)): only behind the
    explicit --trust-legacy-pickle of `main`, and only for files without a .json beside them (a .pt with one
    was written pickle-free, so one that needs pickle was altered). Safe to rerun: files already in today's
    format are left as they are. Returns what was done, one line per file."""
    folder = Path(folder)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder}: not a complete checkpoint (no {COMPLETE} file); fix: pass a "
                                f"runs/<run>/checkpoints/step_XXXXXXXX folder")
    done = []
    world = int(json.loads((folder / COMPLETE).read_text(encoding="utf-8"))["world_size"])
    for stem in ["trainer", *(f"rank_{rank:05d}" for rank in range(world))]:
        if (folder / f"{stem}.json").is_file():
            _read_state(folder, stem, "")  # today's format: read weights-only, or refused as altered, never unpickled
            continue
        old = torch.load(folder / f"{stem}.pt", map_location="cpu", weights_only=False)  # trusted by the caller
        if not isinstance(old, dict):
            raise CheckpointRefused(f"{folder / f'{stem}.pt'}: not a state this engine wrote (a "
                                    f"{type(old).__name__}); fix: do not use this checkpoint")
        if stem != "trainer":
            old = {**old, "rng": _legacy_rng(old["rng"])}
        _write_state(folder, stem, old)
        done.append(f"{folder / stem}.pt: converted to {stem}.pt (tensors) + {stem}.json")
    write_seal(folder, DS_TAG)
    done.append(f"{folder / 'ds.seal'}: ds/ sealed as trusted by this machine")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.training.checkpoint",
        description="Convert checkpoints written before the engine's state was pickle-free, or copied from "
                    "another machine, so that --resume accepts them. Their pickles are loaded once, here: "
                    "run it only on checkpoints written by you or someone you trust.")
    parser.add_argument("checkpoints", nargs="+", help="runs/<run>/checkpoints/step_XXXXXXXX folders")
    parser.add_argument("--trust-legacy-pickle", action="store_true",
                        help="required: you trust these files' pickles (they can run code when loaded)")
    args = parser.parse_args(argv)
    if not args.trust_legacy_pickle:
        print("error: converting loads the checkpoints' pickles, which can run code; fix: pass "
              "--trust-legacy-pickle if you trust whoever wrote them", file=sys.stderr)
        return 2
    try:
        for folder in args.checkpoints:
            for line in convert_legacy(Path(folder)):
                print(line)
    except (CheckpointRefused, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
