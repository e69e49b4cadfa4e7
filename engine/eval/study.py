"""The study runner: train what is missing, evaluate every encoder, write results.csv, REPORT.md, plots.

    python -m engine.eval.study --variants baseline,motion_guided,hw,ld,fwm,fwm_hw_ld,ac \
        --regimes ucf,mixed --seeds 3 --scale demo --out study/demo

Re-running the same command resumes: finished runs (an exported encoder in their folder) are not
retrained, unfinished ones continue from their newest checkpoint, stored evaluations made with the same
weights and settings are reused, feature caches are reused. A random-init encoder of the same
architecture, one per seed, is evaluated as the reference row.

Injection points for tests and other launchers: `run_study(config, train_fn=..., evaluate_fn=...)`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from engine.fields import field_doc

from .eval_sets import resolve_benchmarks
from .encoders import EncoderSource, export_model_config, pixel_encoder, random_encoder, run_encoder
from .errors import EvalInputError
from .encoder_eval import EvalConfig, evaluate_encoder, limit_cpu_threads
from .report import write_report
from .results import HEAD_COLUMNS, PIXEL_VARIANT, RANDOM_VARIANT, EncoderInfo, head_rows_from_evaluation, rows_from_evaluation, write_csv
from .runs import RunPlan, TrainFn, plan_runs, train_missing, train_with_entry_point

# V-JEPA 2's SSv2 sweep (anchors §1.8): 5 lrs x 4 wds, trained in one loop.
VJEPA_SWEEP_LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
VJEPA_SWEEP_WDS = (0.01, 0.1, 0.4, 0.8)


@dataclass(frozen=True)
class ScaleDefaults:
    """What `--scale` picks unless a flag overrides it."""

    recipes_dir: str = field_doc(doc="Folder of <regime>_<variant>.yaml recipes.")
    benchmarks: str = field_doc(doc="Benchmark suite or list.")
    probe_epochs: int | None = field_doc(doc="Epochs of every probe (None: the paper's per benchmark).")
    probe_batch_size: int | None = field_doc(doc="Batch of every probe (None: the paper's per benchmark).")
    notes: tuple[str, ...] = field_doc(doc="What a study at this scale cannot show, for the report.")


SCALES = {
    "demo": ScaleDefaults(
        # Batch 16 everywhere: the synth splits are ~100x smaller than the real ones, and the paper's
        # linear-probe batch of 256 would leave ImageNet-100-like probing with 8 steps an epoch.
        "recipes/demo", "synth", 20, 16,
        ("The synth suite at 64 px with a tiny ViT pretrained for minutes on 2 CPU cores: it shows that the "
         "engine measures the regime effect with intervals over seeds, not what happens to a ViT-B on UCF-101.",
         "synth-ucf's classes are camera motions (pans in 8 directions x 2 speeds, zooms, rolls) over scenes "
         "drawn independently of the class; the mixed regime's extra data (synth-ssv2, synth-in) is not SSv2 or ImageNet-100, so "
         "transfer between the parts is not that of the real datasets.",
         "Probe epochs are shortened for CPU (the same for every row); absolute accuracies are far from converged.")),
    "paper": ScaleDefaults(
        "recipes", "real", None, None,
        ("One pretraining schedule (the paper's) per variant; intervals cover seeds, not schedules or model sizes.",)),
}


@dataclass
class StudyConfig:
    """One study: which runs, where things go, how encoders are evaluated."""

    variants: list[str] = field_doc(doc="Objective variants (recipe names <regime>_<variant>.yaml).")
    regimes: list[str] = field_doc(doc="'ucf' and/or 'mixed'.")
    seeds: list[int] = field_doc(doc="Pretraining seeds; every variant and regime gets each.")
    scale: str = field_doc(doc="Key of SCALES.")
    out: Path = field_doc(doc="results.csv, REPORT.md, plots, evals/, recipes/, logs/.")
    runs_dir: Path = field_doc(Path("runs"), "Parent of the run folders.")
    cache_dir: Path = field_doc(Path("runs/_features"), "fp16 feature caches (large; not for the repository).")
    shards_root: Path = field_doc(Path("data/shards"), "Parent of the benchmark shard folders.")
    recipes_dir: Path | None = field_doc(None, "None: the scale's.")
    train_overrides: tuple[str, ...] = field_doc((), "--set key=value for every training run.")
    evaluation: EvalConfig = field_doc(factory=EvalConfig, doc="Probe protocol shared by every encoder.")
    random_init: bool = field_doc(True, "Evaluate a random-init encoder per seed as a reference row.")
    pixel_baseline: bool = field_doc(True, "Evaluate the pixel baseline (patch embedding, no blocks) per seed as a reference row.")
    command: str = field_doc("", "The command line, for the report.")

    @property
    def prefix(self) -> str:
        return self.scale

    def resolved_recipes_dir(self) -> Path:
        return self.recipes_dir or Path(SCALES[self.scale].recipes_dir)


EvaluateFn = Callable[..., dict]


REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    """Read-only git query about the engine's own checkout (wherever the study is launched from)."""
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_summary() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    summary = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"
    return {"summary": summary, "python": platform.python_version(), "cpu_count": os.cpu_count(), "gpu": gpu}


def _load_record(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _run_record(plan: RunPlan, previous: dict, trained_now: dict[str, float], commit: str, out: Path) -> dict:
    entry = dict(previous.get(plan.name, {}))
    entry.update(name=plan.name, variant=plan.variant, regime=plan.regime, seed=plan.seed, recipe=str(plan.recipe),
                 run_dir=str(plan.run_dir))
    if plan.name in trained_now:
        entry.update(train_seconds=trained_now[plan.name], commit=commit)
    resolved = plan.run_dir / "recipe.yaml"
    if resolved.exists():  # the exact recipe the run trained with, kept beside the report
        copy = out / "recipes" / f"{plan.name}.yaml"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolved, copy)
        entry["recipe_copy"] = str(copy.relative_to(out))
    return entry


def run_study(config: StudyConfig, train_fn: TrainFn | None = None, evaluate_fn: EvaluateFn = evaluate_encoder) -> Path:
    """Train what is missing, evaluate everything, write the outputs; returns the REPORT.md path."""
    started = time.perf_counter()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    resolve_benchmarks(list(config.evaluation.benchmarks))  # unknown names fail before any training
    plans = plan_runs(config.variants, config.regimes, config.seeds, config.resolved_recipes_dir(),
                      config.runs_dir, config.prefix, config.train_overrides)
    record_path = out / "study.json"
    previous_record = _load_record(record_path)
    previous = {r["name"]: r for r in previous_record.get("runs", [])}
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))

    train_started = time.perf_counter()
    trained_now, failures = train_missing(plans, train_fn or partial(train_with_entry_point, log_dir=out / "logs"))
    train_seconds = time.perf_counter() - train_started

    eval_started = time.perf_counter()
    encoders: list[tuple[EncoderInfo, EncoderSource]] = [
        (EncoderInfo(p.name, "trained", p.variant, p.regime, p.seed), run_encoder(p.name, p.run_dir))
        for p in plans if p.finished]
    finished = [p for p in plans if p.finished]
    if config.random_init and finished:
        model_config = export_model_config(finished[0].export_path)
        for seed in config.seeds:
            name = f"{config.prefix}_random_init_s{seed}"
            encoders.append((EncoderInfo(name, "random", RANDOM_VARIANT, "", seed), random_encoder(name, model_config, seed)))
    if config.pixel_baseline and finished:
        model_config = export_model_config(finished[0].export_path)
        for seed in config.seeds:
            name = f"{config.prefix}_pixel_baseline_s{seed}"
            encoders.append((EncoderInfo(name, "pixel", PIXEL_VARIANT, "", seed), pixel_encoder(name, model_config, seed)))
    rows: list[dict] = []
    head_rows: list[dict] = []
    benchmarks: dict[str, dict] = {}
    for info, source in tqdm(encoders, desc="evaluation", unit="encoder"):
        stored = evaluate_fn(source, config.evaluation, config.shards_root, config.cache_dir, out / "evals")
        rows += rows_from_evaluation(info, stored)
        head_rows += head_rows_from_evaluation(info, stored)
        for name, entry in stored["benchmarks"].items():
            benchmarks.setdefault(name, {"split_check": entry.get("split_check", {}),
                                         "num_classes": entry.get("num_classes"),
                                         "batch_size": entry["key"]["probe"]["batch_size"] if "key" in entry else None})
    eval_seconds = time.perf_counter() - eval_started

    runs = [_run_record(p, previous, trained_now, commit, out) for p in plans]
    trained_encoders = {r["encoder"]: r["trained_encoder"] for r in rows}
    for run in runs:
        run["trained_encoder"] = trained_encoders.get(run["name"], run.get("trained_encoder", ""))
        run["failed"] = failures.get(run["name"], "")
    record = {
        "command": config.command, "scale": config.scale, "commit": commit, "dirty": dirty,
        "machine": machine_summary(), "seeds": config.seeds, "variants": config.variants, "regimes": config.regimes,
        "runs_dir": str(config.runs_dir), "train_overrides": list(config.train_overrides),
        "eval_config": asdict(config.evaluation), "benchmarks": benchmarks, "runs": runs,
        "runs_trained_now": len(trained_now), "notes": list(SCALES[config.scale].notes),
        "wall_seconds": {"train": train_seconds, "eval": eval_seconds, "total": time.perf_counter() - started},
    }
    # A resumed study's cost is the sum over its invocations.
    earlier = previous_record.get("wall_seconds", {}).get("all_invocations", 0.0)
    record["wall_seconds"]["all_invocations"] = earlier + record["wall_seconds"]["total"]
    record["invocations"] = previous_record.get("invocations", 0) + 1
    write_csv(rows, out / "results.csv")
    write_csv(head_rows, out / "heads.csv", HEAD_COLUMNS)
    record_path.write_text(json.dumps(record, indent=1))
    return write_report(rows, record, out)


def _seed_list(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,5,239' -> those seeds."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None) -> StudyConfig:
    parser = argparse.ArgumentParser(description="Mixed vs UCF-only pretraining study: train, probe, report.")
    parser.add_argument("--variants", required=True, help="comma-separated objective variants, e.g. baseline,hw,fwm")
    parser.add_argument("--regimes", default="ucf,mixed", help="comma-separated regimes (ucf, mixed)")
    parser.add_argument("--seeds", default="3", help="a count (3 -> seeds 0,1,2) or a comma list of seeds")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES), help="recipes, benchmarks and probe epochs")
    parser.add_argument("--out", required=True, help="output folder (results.csv, REPORT.md, plots)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of the run folders")
    parser.add_argument("--cache", default="runs/_features", help="feature cache folder")
    parser.add_argument("--shards", default="data/shards", help="parent folder of the benchmark shard folders")
    parser.add_argument("--recipes", default=None, help="recipe folder (default: the scale's)")
    parser.add_argument("--benchmarks", default=None, help="'synth', 'real' or a comma list (default: the scale's)")
    parser.add_argument("--probe-epochs", type=int, default=None, help="epochs of every probe (default: the scale's)")
    parser.add_argument("--probe-batch", type=int, default=None, help="batch of every probe (default: the scale's)")
    parser.add_argument("--sweep", action="store_true", help="also train V-JEPA's 5 lr x 4 wd heads per probe")
    parser.add_argument("--sweep-lrs", type=_floats, default=None, help="extra head lrs, e.g. 1e-2,3e-3 (overrides --sweep's)")
    parser.add_argument("--sweep-wds", type=_floats, default=None, help="extra head weight decays, e.g. 0.1")
    parser.add_argument("--clips", type=int, default=1, help="temporal clips per video")
    parser.add_argument("--views", type=int, default=1, help="spatial views per clip")
    parser.add_argument("--skip-probe", action="append", default=[], metavar="BENCHMARK:PROBE",
                        help="a probe not to train, e.g. synth-ssv2:attentive (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every training run (repeatable)")
    parser.add_argument("--no-random-init", action="store_true", help="skip the random-init reference row")
    parser.add_argument("--no-pixel-baseline", action="store_true", help="skip the pixel-baseline reference row")
    args = parser.parse_args(argv)
    defaults = SCALES[args.scale]
    benchmarks = tuple(b.name for b in resolve_benchmarks(args.benchmarks or defaults.benchmarks))
    evaluation = EvalConfig(
        benchmarks=benchmarks,
        probe_epochs=args.probe_epochs if args.probe_epochs is not None else defaults.probe_epochs,
        probe_batch_size=args.probe_batch if args.probe_batch is not None else defaults.probe_batch_size,
        sweep_lrs=args.sweep_lrs if args.sweep_lrs is not None else (VJEPA_SWEEP_LRS if args.sweep else ()),
        sweep_wds=args.sweep_wds if args.sweep_wds is not None else (VJEPA_SWEEP_WDS if args.sweep else ()),
        num_clips=args.clips, num_views=args.views, skip_probes=tuple(args.skip_probe))
    return StudyConfig(
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        regimes=[r.strip() for r in args.regimes.split(",") if r.strip()],
        seeds=_seed_list(args.seeds), scale=args.scale, out=Path(args.out), runs_dir=Path(args.runs_dir),
        cache_dir=Path(args.cache), shards_root=Path(args.shards),
        recipes_dir=Path(args.recipes) if args.recipes else None, train_overrides=tuple(args.overrides),
        evaluation=evaluation, random_init=not args.no_random_init,
        pixel_baseline=not args.no_pixel_baseline,
        command="python -m engine.eval.study " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        limit_cpu_threads()
        report = run_study(config)
    except EvalInputError as error:  # benchmark names, shard folders, exports: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    failed = [r for r in json.loads((config.out / "study.json").read_text())["runs"] if r.get("failed")]
    for run in failed:
        print(f"failed: {run['name']}: {run['failed']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
