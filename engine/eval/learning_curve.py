"""A run's learning curve: its checkpoints probed at fractions of train.steps, against random init and pixels.

    python -m engine.eval.learning_curve runs/demo_ucf_baseline --benchmarks synth-ucf --shards data/shards \
        --fractions 0,0.1,0.25,0.5,1.0 --probe-seeds 3 --probe-epochs 20

Fraction 0 is the random init of the run's own recipe and seed, which is exactly the encoder the run
started from (engine.train seeds the model init with run.seed alone). Every other fraction takes the
complete checkpoint nearest to fraction x train.steps. A run keeps its last `train.keep_last` checkpoints,
written every `train.checkpoint_every` steps and at the end, so train a run meant for a curve with e.g.
`--set train.checkpoint_every=<steps/10> --set train.keep_last=11`; the CSV records the step actually used.

Each chosen checkpoint's trained encoder is exported (engine.export) to <out>/exports/ and probed with
probe seeds 0..n-1 on the same probe as the two references (random init and the pixel baseline,
engine.eval.probe_seeds). Written: <out>/learning_curve.csv and <out>/learning_curve.png, top-1 against the
step with the mean and 95% interval over probe seeds, the references as horizontal bands. A rerun reuses
the stored evaluations (<out>/evals/) and feature caches (--cache).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from .eval_sets import resolve_benchmarks
from .encoders import EncoderSource
from .errors import EvalInputError
from .encoder_eval import BatchSource, EvalConfig, limit_cpu_threads
from .probe_seeds import PIXEL_BASELINE, RANDOM_INIT, evaluate_probe_seeds, format_interval, reference_sources
from .stats import MeanInterval

COLUMNS = ("run", "encoder", "kind", "fraction", "target_step", "step", "benchmark", "probe", "probe_seeds",
           "top1_mean", "top1_low", "top1_high", "top1_per_seed")
INIT, CHECKPOINT = "init", "checkpoint"  # kinds of the curve's points; the references keep their labels


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curve: which weights, and where on the step axis."""

    fraction: float  # the requested fraction of train.steps
    target_step: int  # round(fraction * train.steps)
    step: int  # the step of the weights used (0: the random init)
    checkpoint: Path | None  # None for the random init


def read_run(run_dir: Path):
    """The resolved Recipe the run was trained with (runs/<run>/recipe.yaml)."""
    from engine.recipe import Recipe
    from engine.training.typed_yaml import build_dataclass

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no resolved recipe; is {run_dir} a run folder written by engine.train?")
    return build_dataclass(Recipe, yaml.safe_load(path.read_text(encoding="utf-8")), {"": str(path)})


def choose_points(fractions: list[float], total_steps: int, checkpoints: list[tuple[int, Path]]) -> list[CurvePoint]:
    """The nearest complete checkpoint to each fraction (ties to the earlier one); fraction 0 is the init."""
    points: list[CurvePoint] = []
    for fraction in fractions:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction {fraction} is outside [0, 1]")
        target = round(fraction * total_steps)
        if target == 0:
            points.append(CurvePoint(fraction, 0, 0, None))
            continue
        if not checkpoints:
            raise FileNotFoundError(f"no complete checkpoint to take fraction {fraction} from; train the run with "
                                    f"train.checkpoint_every and train.keep_last that keep the steps you want")
        step, folder = min(checkpoints, key=lambda item: (abs(item[0] - target), item[0]))
        points.append(CurvePoint(fraction, target, step, folder))
    return points


def export_point(point: CurvePoint, exports: Path) -> Path:
    """Export the checkpoint's trained encoder once: the file is reused while it is newer than the checkpoint
    (a rewrite would differ in bytes, since safetensors orders its metadata freely, and lose the caches)."""
    from engine.export import export_checkpoint
    from engine.training.checkpoint import COMPLETE

    path = exports / f"{point.checkpoint.name}.safetensors"
    if path.exists() and path.stat().st_mtime >= (point.checkpoint / COMPLETE).stat().st_mtime:
        return path
    return export_checkpoint(point.checkpoint, path)


def learning_curve(run_dir: str | Path, config: EvalConfig, fractions: list[float], probe_seeds: int,
                   shards_root: str | Path, out: str | Path, cache: str | Path,
                   batch_source: BatchSource | None = None, device=None) -> tuple[Path, Path]:
    """Probe the run's points and references; returns the CSV and PNG paths."""
    from engine.training.checkpoint import complete_checkpoints

    run_dir, out = Path(run_dir), Path(out)
    recipe = read_run(run_dir)
    name = recipe.run.name
    points = choose_points(fractions, recipe.train.steps, complete_checkpoints(run_dir / "checkpoints"))
    references = reference_sources(name, _model_config(recipe), recipe.run.seed)
    evaluate = dict(config=config, probe_seeds=probe_seeds, shards_root=shards_root, cache_root=cache,
                    results_dir=out / "evals", batch_source=batch_source, device=device)
    rows: list[dict] = []
    results: dict[str, dict[tuple[str, str], MeanInterval]] = {}
    jobs: list[tuple[str, CurvePoint | None]] = [(label, None) for label in references]
    jobs += [(INIT if p.checkpoint is None else CHECKPOINT, p) for p in points]
    for kind, point in tqdm(jobs, desc=f"learning curve {name}", unit="encoder"):
        if point is None:
            source = references[kind]
        elif point.checkpoint is None:
            source = references[RANDOM_INIT]  # fraction 0: the run's own init, already probed as the reference
        else:
            source = EncoderSource(name=f"{name}_{point.checkpoint.name}", kind="run",
                                   path=str(export_point(point, out / "exports")))
        if source.name not in results:
            results[source.name] = evaluate_probe_seeds(source, **evaluate)
        for (benchmark, probe), summary in results[source.name].items():
            rows.append({"run": name, "encoder": source.name, "kind": kind,
                         "fraction": "" if point is None else point.fraction,
                         "target_step": "" if point is None else point.target_step,
                         "step": "" if point is None else point.step, "benchmark": benchmark, "probe": probe,
                         "probe_seeds": len(summary.values), "top1_mean": summary.mean, "top1_low": summary.low,
                         "top1_high": summary.high, "top1_per_seed": " ".join(f"{v:.4f}" for v in summary.values)})
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "learning_curve.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, plot_learning_curve(rows, config, out / "learning_curve.png", name)


def _model_config(recipe) -> dict:
    import dataclasses
    return dataclasses.asdict(recipe.model)


def plot_learning_curve(rows: list[dict], config: EvalConfig, path: Path, run_name: str) -> Path:
    """One panel per benchmark (its headline probe): the curve with its intervals, references as bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = resolve_benchmarks(list(config.benchmarks))
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5.2 * len(benchmarks), 4), squeeze=False)
    colours = {RANDOM_INIT: "tab:gray", PIXEL_BASELINE: "tab:orange"}
    for ax, benchmark in zip(axes[0], benchmarks):
        probe = config.active_probes(benchmark)[0].name
        mine = [r for r in rows if r["benchmark"] == benchmark.name and r["probe"] == probe]
        curve = sorted((r for r in mine if r["kind"] in (INIT, CHECKPOINT)), key=lambda r: r["step"])
        steps = [r["step"] for r in curve]
        means = [r["top1_mean"] for r in curve]
        below = [0.0 if math.isnan(r["top1_low"]) else r["top1_mean"] - r["top1_low"] for r in curve]
        above = [0.0 if math.isnan(r["top1_high"]) else r["top1_high"] - r["top1_mean"] for r in curve]
        ax.errorbar(steps, means, yerr=[below, above], marker="o", capsize=4, color="tab:blue", label="this run")
        for label, colour in colours.items():
            for r in mine:
                if r["kind"] != label:
                    continue
                ax.axhline(r["top1_mean"], color=colour, linewidth=1.2, label=f"{label} {r['top1_mean']:.1f}")
                if not math.isnan(r["top1_low"]):
                    ax.axhspan(r["top1_low"], r["top1_high"], color=colour, alpha=0.15)
        ax.set_xlabel("training step (0 = random init)")
        ax.set_ylabel(f"top-1 (%), {probe} probe")
        ax.set_title(benchmark.name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = max((r["probe_seeds"] for r in rows), default=0)
    # Two lines: one would run past a one-panel figure's edges.
    fig.suptitle(f"{run_name}\nmean and 95% t-interval over {seeds} probe seed(s)\nreferences: horizontal lines, bands their intervals", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated fractions of train.steps in [0, 1]")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probe a run's checkpoints at fractions of its steps against "
                                                 "random init and the pixel baseline.")
    parser.add_argument("run", help="the run folder, runs/<run>")
    parser.add_argument("--benchmarks", default="synth-ucf", help="'synth', 'real' or a comma-separated list")
    parser.add_argument("--shards", default="data/shards", help="folder holding the benchmarks' shard folders")
    parser.add_argument("--fractions", type=_fractions, default=[0.0, 0.1, 0.25, 0.5, 1.0],
                        help="fractions of train.steps, e.g. 0,0.1,0.25,0.5,1.0 (0 = the random init)")
    parser.add_argument("--probe-seeds", type=int, default=3, help="probe seeds per encoder (mean and 95%% interval)")
    parser.add_argument("--probe-epochs", type=int, default=None, help="epochs of every probe (default: the paper's)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/learning_curve)")
    parser.add_argument("--cache", default=None, help="feature cache folder (default: <run>/../_features, the "
                                                      "study's)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run)
    try:
        names = tuple(b.name for b in resolve_benchmarks(args.benchmarks))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    limit_cpu_threads()
    config = EvalConfig(benchmarks=names, probe_epochs=args.probe_epochs)
    out = Path(args.out) if args.out else run_dir / "learning_curve"
    cache = Path(args.cache) if args.cache else run_dir.parent / "_features"
    from engine.training.checkpoint import CheckpointRefused
    try:
        csv_path, png = learning_curve(run_dir, config, args.fractions, args.probe_seeds, args.shards, out, cache)
    except (FileNotFoundError, CheckpointRefused, EvalInputError) as err:  # the user's input: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            where = f"step {row['step']:>6s}" if row["step"] else f"{row['kind']:>11s}"
            summary = MeanInterval(float(row["top1_mean"]), float(row["top1_low"]), float(row["top1_high"]), ())
            print(f"{row['benchmark']:14s} {row['probe']:22s} {where}  top-1 {summary.mean:6.2f} "
                  f"{format_interval(summary)}")
    print(f"csv {csv_path}, plot {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
