"""Running the generation: parts, resumption, completion markers, and the worker pool.

`generate_suite` writes each requested part into `out_root/<part>`. Every media file is written under a
temporary name and renamed, so an existing file is complete; a killed run, rerun with the same
arguments, keeps those files and renders the rest (every file is a pure function of seed, scale and its
job, so the result is byte-identical to an uninterrupted run). Split lists and label files come after
the media, and `.synth-complete.json` comes last; a part that has it, with the same arguments, is
skipped. A part folder made with other arguments is refused, never overwritten.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from . import diving, imagenet, media, ssv2, ucf
from .scales import SuiteScale, resolve_scale

PART_MODULES = {module.NAME: module for module in (ucf, ssv2, imagenet, diving)}
PART_NAMES = tuple(PART_MODULES)
COMPLETE_MARKER = ".synth-complete.json"
PROGRESS_MARKER = ".synth-progress.json"
GENERATOR_VERSION = 4  # bump when a change to the generator changes its output bytes
JOBS_PER_TASK = 8      # samples per worker task: amortises pickling without starving the progress bar


def generate_suite(out_root, scale: str | SuiteScale = "demo", seed: int = 0, parts=None,
                   workers: int | None = None) -> dict[str, Path]:
    """Write the raw trees of the synth suite under `out_root`; return {part name: its folder}.

    scale: "demo", "gpu", "test" or a SuiteScale. parts: names from PART_NAMES (None = all four).
    workers: processes rendering in parallel (None = the CPUs this process may use; 1 = in-process).
    """
    suite_scale = resolve_scale(scale)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: pass a non-negative integer")
    selected = list(PART_NAMES) if parts is None else list(parts)
    unknown = [name for name in selected if name not in PART_MODULES]
    if unknown or not selected:
        raise ValueError(f"parts={parts!r}: choose from {', '.join(PART_NAMES)}")
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: pass a positive integer (1 renders in this process)")

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    roots = {}
    pool = None
    try:
        for name in PART_NAMES:  # fixed order, whatever order the caller listed
            if name not in selected:
                continue
            root = out_root / name
            roots[name] = root
            arguments = _arguments(name, suite_scale, seed)
            if _is_complete(root, arguments):
                print(f"synth: {root} is complete, skipped")
                continue
            if pool is None and workers > 1:
                pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            _generate_part(name, root, arguments, suite_scale, seed, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    return roots


def _arguments(name: str, scale: SuiteScale, seed: int) -> dict:
    return {"part": name, "seed": seed, "scale": scale.as_dict(), "generator_version": GENERATOR_VERSION}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_complete(root: Path, arguments: dict) -> bool:
    marker = _read_marker(root / COMPLETE_MARKER)
    if marker is None:
        return False
    if marker.get("arguments") != arguments:
        raise ValueError(_mismatch(root, marker.get("arguments")))
    return True


def _mismatch(root: Path, found: dict | None) -> str:
    brief = f"seed={found.get('seed')}, scale={found.get('scale', {}).get('name')}" if found else "unknown arguments"
    return (f"{root} holds a synth part generated with other arguments ({brief}); "
            f"delete that folder or pass another out_root")


def _claim(root: Path, arguments: dict) -> None:
    """Record which generation owns `root`, refusing a folder that holds anything else."""
    progress = root / PROGRESS_MARKER
    if progress.exists():
        found = _read_marker(progress)
        if found != arguments:
            raise ValueError(_mismatch(root, found))
    elif root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not a synth part in progress; delete it or pass another out_root")
    media.write_json(progress, arguments)


def _generate_part(name: str, root: Path, arguments: dict, scale: SuiteScale, seed: int,
                   pool: ProcessPoolExecutor | None) -> None:
    module = PART_MODULES[name]
    root.mkdir(parents=True, exist_ok=True)
    _claim(root, arguments)
    for leftover in root.rglob(f"*{media.PARTIAL_SUFFIX}"):
        leftover.unlink()  # a file a killed run was writing; it is rendered again below
    jobs = module.plan(scale, seed)
    missing = [job for job in jobs if not (root / job.relpath).exists()]
    tasks = [(name, missing[i:i + JOBS_PER_TASK], scale, seed, str(root))
             for i in range(0, len(missing), JOBS_PER_TASK)]
    with tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc=name, unit="file") as progress:
        results = pool.map(_render_batch, tasks) if pool is not None else map(_render_batch, tasks)
        for count in results:
            progress.update(count)
    module.write_metadata(root, jobs, scale, seed)
    counts = {}
    for job in jobs:
        counts[job.split] = counts.get(job.split, 0) + 1
    media.write_json(root / COMPLETE_MARKER, {
        "arguments": arguments, "files": len(jobs), "counts": counts,
        "classes": len(module.class_names(scale))})
    (root / PROGRESS_MARKER).unlink()


def _render_batch(task: tuple) -> int:
    """Worker entry: render and write a list of jobs of one part; returns how many were written."""
    name, jobs, scale, seed, root = task
    module = PART_MODULES[name]
    for job in jobs:
        media.write_atomic(Path(root) / job.relpath, module.render(job, scale, seed))
    return len(jobs)

