"""The pretraining runs of a study: which recipe, name and seed each has, and training what is missing.

A run is finished when its folder holds the exported encoder (`encoder.safetensors`, written by
engine.train at the end). Anything else (absent, or checkpoints without an export) is trained by
calling the training entry point with `--resume auto`, so an interrupted run continues from its newest
complete checkpoint instead of starting over.

Injection point: `train_missing(plans, train_fn=...)` calls `train_fn(plan)` for every unfinished run;
the default `train_with_entry_point` runs `python -m engine.train` in a subprocess. Tests pass a
function that counts calls.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .encoders import EXPORT_NAME

REGIMES = {"ucf": "UCF-101 only (synth: synth-ucf only)",
           "mixed": "UCF-101 + SSv2 + ImageNet-100 at 0.2 / 0.6 / 0.2 (synth: their synth parts)"}


@dataclass(frozen=True)
class RunPlan:
    """One pretraining run of the study."""

    name: str  # run folder name, e.g. "demo_mixed_hw_s1"
    variant: str  # objective variant, e.g. "hw" (engine.objectives registry name)
    regime: str  # "ucf" or "mixed"
    seed: int  # run.seed: model init, data order and masks
    recipe: Path  # recipe YAML the run is trained from
    runs_dir: Path  # parent folder of run folders
    overrides: tuple[str, ...] = ()  # extra `--set key=value` for every run of the study

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def export_path(self) -> Path:
        return self.run_dir / EXPORT_NAME

    @property
    def finished(self) -> bool:
        return self.export_path.exists()

    def train_command(self) -> list[str]:
        """The exact training command of this run."""
        command = [sys.executable, "-m", "engine.train", "--recipe", str(self.recipe),
                   "--set", f"run.name={self.name}", "--set", f"run.seed={self.seed}",
                   "--set", f"run.out_dir={self.runs_dir}"]
        for override in self.overrides:
            command += ["--set", override]
        return command + ["--resume", "auto"]


def plan_runs(variants: list[str], regimes: list[str], seeds: list[int], recipes_dir: Path, runs_dir: Path,
              prefix: str, overrides: tuple[str, ...] = ()) -> list[RunPlan]:
    """Every (variant, regime, seed) as a RunPlan; a missing recipe file is an error naming it."""
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"unknown regime(s) {unknown}; use {sorted(REGIMES)}")
    plans = []
    for variant in variants:
        for regime in regimes:
            recipe = recipes_dir / f"{regime}_{variant}.yaml"
            if not recipe.exists():
                raise FileNotFoundError(f"{recipe}: no recipe for variant {variant!r} in regime {regime!r}; "
                                        f"add it or pick variants from {sorted(_variants_in(recipes_dir))}")
            for seed in seeds:
                name = f"{prefix}_{regime}_{variant}_s{seed}"
                plans.append(RunPlan(name, variant, regime, seed, recipe, runs_dir, overrides))
    return plans


def _variants_in(recipes_dir: Path) -> set[str]:
    return {p.stem.split("_", 1)[1] for p in recipes_dir.glob("*_*.yaml") if p.stem.split("_", 1)[0] in REGIMES}


def train_with_entry_point(plan: RunPlan, log_dir: Path) -> None:
    """Train one run with `python -m engine.train ... --resume auto`; its output goes to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan.name}.log"
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    # The engine must import in the child even when the study is launched outside the repository.
    repo_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(plan.train_command())}\n")
        log.flush()
        code = subprocess.call(plan.train_command(), stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not plan.finished:
        raise RuntimeError(f"training {plan.name} failed (exit {code}, export present: {plan.finished}); "
                           f"see {log_path}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


TrainFn = Callable[[RunPlan], None]


def train_missing(plans: list[RunPlan], train_fn: TrainFn) -> tuple[dict[str, float], dict[str, str]]:
    """Train every unfinished run (in plan order).

    Returns ({run name: seconds} of the runs trained now, {run name: error} of the runs that failed). A
    failing run does not stop the others: the study reports it and a rerun retries it.
    """
    missing = [p for p in plans if not p.finished]
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    for plan in tqdm(missing, desc="pretraining", unit="run"):
        started = time.perf_counter()
        try:
            train_fn(plan)
        except Exception as error:  # noqa: BLE001 - any failure of one run is reported, the rest go on
            failures[plan.name] = f"{type(error).__name__}: {error}"
            tqdm.write(f"run {plan.name} failed: {failures[plan.name]}")
            continue
        seconds[plan.name] = time.perf_counter() - started
        if not plan.finished:
            failures[plan.name] = (f"{plan.export_path}: training returned but wrote no export; "
                                   f"check train.export_at_end in {plan.recipe}")
    return seconds, failures
