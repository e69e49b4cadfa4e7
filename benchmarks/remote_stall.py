"""Data-wait share of a training run whose shards are read over HTTP with added latency, beside the same run
reading them from the local path.

Each run is a real `python -m engine.train` (tiny model, CPU) for --steps steps; its metrics.csv gives every
step's time waiting for the loader (`time.data`) and its wall time (`time.wall`). The share reported is
sum(time.data) / sum(time.wall) over all steps, the first one (pipeline start) included, and also without it.
The remote run reads through a local HTTP server that honours Range requests (tests/remote_servers.py); each
ranged GET waits --latency-ms first, a stand-in for an object store's time to first byte.

    python benchmarks/remote_stall.py                          # 200 steps, 20 ms: results/remote-stall-cpu.*
    python benchmarks/remote_stall.py --steps 40 --out /tmp/stall

Writes <out>.json and <out>.md with the machine, the load average and the command.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0:0] = [str(REPO), str(REPO / "tests")]  # the engine, and the test servers and fixtures

from data_fixtures import FixtureSpec, write_dataset  # noqa: E402
from remote_servers import RangeHTTPServer  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: python benchmarks/remote_stall.py --steps 200 --latency-ms 20")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (default 200)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="delay before each ranged GET of the HTTP server, in ms (default 20)")
    parser.add_argument("--samples", type=int, default=48, help="clips in the fixture shards (default 48)")
    parser.add_argument("--machine", default=None,
                        help="how to describe this machine in the results (default: cores and CPU name)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "remote-stall-cpu"),
                        help="path stem of the .json and .md results (default benchmarks/results/remote-stall-cpu)")
    parser.add_argument("--only", choices=["local", "http"], help="run one of the two runs only")
    parser.add_argument("--prefetch", type=int, default=2, help="data.prefetch of both runs: batches prepared "
                                                                 "ahead (default 2, the recipe default)")
    return parser


def recipe(out_dir: Path, steps: int, prefetch: int = 2) -> dict:
    """The tiny CPU run of tests/test_remote_shards.py, longer."""
    return {
        "run": {"name": "stall", "out_dir": str(out_dir), "seed": 3},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2},
        "predictor": {"preset": "tiny"},
        "objective": {"variant": "fwm"},
        "data": {"datasets": [{"root": "set-by---set", "frame_step": 1}], "num_workers": 1, "num_threads": 1,
                 "prefetch": prefetch},
        "train": {"steps": steps, "global_batch": 4, "micro_batch": 4, "checkpoint_every": 10 * steps,
                  "progress_bar": False, "export_at_end": False},
        "optim": {"lr": 3.0e-3, "start_lr": 1.0e-3, "final_lr": 3.0e-3, "warmup_steps": 2},
        "ema": {"momentum": 0.99, "final_momentum": 0.99},
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
        "log": {"tensorboard": False},
    }


def train(recipe_path: Path, name: str, root: str) -> tuple[list[dict], float]:
    """Run one training; (metrics rows as floats, seconds the process took)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "engine.train", "--recipe", str(recipe_path),
                             "--set", f"run.name={name}", "--set", f"data.datasets=[{{root: '{root}', frame_step: 1}}]"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the {name} run failed:\n{result.stderr[-3000:]}")
    with open(recipe_path.parent / "runs" / name / "metrics.csv", newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    return rows, seconds


def shares(rows: list[dict]) -> dict:
    data = [row.get("time.data", 0.0) for row in rows]
    wall = [row["time.wall"] for row in rows]
    return {"steps": len(rows), "data_wait_share": sum(data) / sum(wall),
            "data_wait_share_after_step_1": sum(data[1:]) / sum(wall[1:]),
            "first_step_data_s": data[0], "mean_step_s": sum(wall) / len(wall),
            "worst_step_data_s": max(data), "steps_waiting_over_5ms": sum(d > 0.005 for d in data)}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import yaml

    machine = args.machine or f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    report = {"machine": machine, "command": shlex.join(["python", "benchmarks/remote_stall.py", *(argv or sys.argv[1:])]),
              "config": vars(args), "load_before": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="remote-stall-") as folder:
        folder = Path(folder)
        write_dataset(folder / "shards" / "vid", FixtureSpec("vid", args.samples, num_frames=16, height=32, width=32,
                                                             samples_per_shard=4))
        recipe_path = folder / "tiny.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe(folder / "runs", args.steps, args.prefetch)))
        with RangeHTTPServer(folder / "shards") as server:
            server.log.delay_s = args.latency_ms / 1000
            roots = {"local": str(folder / "shards" / "vid"), "http": f"{server.url}/vid"}
            for name, root in roots.items():
                if args.only and name != args.only:
                    continue
                rows, seconds = train(recipe_path, name, root)
                report["runs"][name] = {**shares(rows), "process_s": seconds}
                if name == "http":
                    report["runs"][name]["ranged_gets"] = len(server.log.gets(".tar"))
                print(name, json.dumps(report["runs"][name]), flush=True)
    report["load_after"] = os.getloadavg()
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(stem.with_suffix(".md").read_text())
    return 0


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [f"# Data wait of a training run reading shards over HTTP ({report['machine']})", "",
             f"`{report['command'].strip()}`: {cfg['steps']} steps of the tiny CPU recipe (ViT tiny, 8x32x32 clips, "
             f"batch 4, 1 loader worker, prefetch {cfg['prefetch']}), fixture shards of {cfg['samples']} VP9 clips; the `http` run "
             f"reads them through a local HTTP server that waits {cfg['latency_ms']:g} ms before each ranged GET.",
             "", "Machine shared with other jobs: load average before "
             f"{[round(x, 2) for x in report['load_before']]}, after {[round(x, 2) for x in report['load_after']]}.",
             "", "| run | steps | data-wait share | without step 1 | step 1 wait (s) | worst wait (s) | steps waiting > 5 ms "
             "| mean step (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['steps']} | {100 * run['data_wait_share']:.2f}% | "
                     f"{100 * run['data_wait_share_after_step_1']:.2f}% | {run['first_step_data_s']:.3f} | "
                     f"{run['worst_step_data_s']:.3f} | {run['steps_waiting_over_5ms']} | {run['mean_step_s']:.3f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
