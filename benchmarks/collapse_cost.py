"""What the collapse alarm costs a run, read from the run's own metrics.csv (`time.collapse`, `time.wall`).

    python -m engine.train --recipe recipes/demo/ucf_baseline.yaml --set run.name=alarm_every1 \
        --set collapse.every=1                       # measure every step: the cost of one measurement
    python benchmarks/collapse_cost.py runs/alarm_every1 [more run folders] [--every 10 --reference-steps 5]

Per run: measurements, mean / median milliseconds per measurement, the mean step wall time, a measured
step's share, and the share the alarm would take of the whole run at `--every` (with its
`--reference-steps` measured steps at the start), i.e. (measurements at that setting) x (mean cost) /
(steps x mean step). Prints a Markdown table with the machine's load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.training.metrics import read_metrics  # noqa: E402


def summarise(run_dir: Path, every: int, reference_steps: int) -> dict:
    rows = read_metrics(run_dir / "metrics.csv")
    costs = [row["time.collapse"] for row in rows if "time.collapse" in row]
    walls = [row["time.wall"] for row in rows if "time.wall" in row]
    if not costs:
        raise SystemExit(f"{run_dir}/metrics.csv has no time.collapse: the run measured nothing (collapse.every=0?)")
    steps = len(walls)
    measured_at_setting = len([s for s in range(steps) if s < reference_steps or s % every == 0])
    mean_cost, mean_wall = statistics.mean(costs), statistics.mean(walls)
    return {"run": run_dir.name, "steps": steps, "measurements": len(costs), "mean_ms": 1000 * mean_cost,
            "median_ms": 1000 * statistics.median(costs), "step_ms": 1000 * mean_wall,
            "measured_step_share": mean_cost / mean_wall,
            "run_share": measured_at_setting * mean_cost / (steps * mean_wall)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The collapse alarm's cost, from runs' metrics.csv.")
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--every", type=int, default=10, help="collapse.every to price the whole run at")
    parser.add_argument("--reference-steps", type=int, default=5, help="collapse.reference_steps likewise")
    args = parser.parse_args(argv)
    print(f"load average now: {', '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores\n")
    print(f"| run | steps | measurements | ms per measurement (mean / median) | step ms (mean) | "
          f"one measurement / step | whole run at every={args.every} |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        s = summarise(Path(run), args.every, args.reference_steps)
        print(f"| {s['run']} | {s['steps']} | {s['measurements']} | {s['mean_ms']:.1f} / {s['median_ms']:.1f} | "
              f"{s['step_ms']:.0f} | {100 * s['measured_step_share']:.2f}% | {100 * s['run_share']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
