"""Where the CPU loader's time goes, beside DALI decode alone (Linux: reads /proc).

    python benchmarks/loader_profile.py --shards data/shards

Measures, on the same planned samples as benchmarks/loader.py:
  - the plan of one batch (process CPU, as the worker processes spend it);
  - the PyTorch crop/flip/resize + normalisation of one decoded batch (one thread, nothing else running);
  - for (c) decode alone, the loader's own graph with its readers but without the PyTorch step, and (a) the
    loader: wall time and process CPU per batch, and how many of the machine's cores were busy (/proc/stat);
  - during (a), how often the caller's thread and DALI's two busiest pool threads were running or waiting,
    sampled about every millisecond by a separate process.

Writes benchmarks/results/loader-profile-<device>.json and .md with the machine it ran on.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loader import DecodeOnlyRun, add_loader_arguments, machine_label, make_config  # noqa: E402
from engine.data import VideoLoader  # noqa: E402
from engine.data.loader import _one_torch_thread  # noqa: E402
from engine.data.pipeline import build_pipeline  # noqa: E402


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot; idle and iowait count as not busy."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def cpus_counted() -> int:
    """How many CPUs the first line of /proc/stat adds up (its cpuN lines): the cores busy_cores is out of,
    whatever os.cpu_count() says (PYTHON_CPU_COUNT, offline CPUs)."""
    return sum(1 for line in Path("/proc/stat").read_text().splitlines() if line[:3] == "cpu" and line[3:4].isdigit())


def measure(next_batch, batches: int) -> dict:
    for _ in range(3):
        next_batch()
    busy0, total0 = busy_jiffies()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        next_batch()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    busy1, total1 = busy_jiffies()
    cores = cpus_counted() * (busy1 - busy0) / max(total1 - total0, 1)
    return {"wall_ms": 1e3 * wall / batches, "process_cpu_ms": 1e3 * cpu / batches, "busy_cores": cores}


def thread_states(pid: int, seconds: float) -> dict:
    """Run in a separate process: joint states (R running/runnable, else waiting) of the caller's thread and
    the two busiest DALI pool threads of `pid`, sampled about every millisecond."""
    task = Path(f"/proc/{pid}/task")

    def sample() -> dict[str, tuple[str, int]]:
        out = {}
        for tid in os.listdir(task):
            try:
                stat = (task / tid / "stat").read_text()
            except FileNotFoundError:
                continue
            name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            out[tid] = (name, rest[0], int(rest[11]) + int(rest[12]))
        return out

    first = sample()
    rows = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rows.append({tid: state for tid, (_, state, _) in sample().items()})
        time.sleep(0.001)
    last = sample()
    pool = [tid for tid, (name, _, _) in last.items() if "TP" in name]
    pool = sorted(pool, key=lambda t: last[t][2] - first.get(t, last[t])[2], reverse=True)[:2]
    counts = collections.Counter(
        ("run" if r.get(str(pid)) == "R" else "wait",) + tuple("run" if r.get(t) == "R" else "wait" for t in pool)
        for r in rows)
    return {" / ".join(k): round(v / len(rows), 3) for k, v in counts.most_common()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loader_arguments(parser, batches=100, rounds=3)
    parser.add_argument("--state-seconds", type=float, default=3.0, help="thread-state sampling during (a)")
    parser.add_argument("--out", default=None, help="result stem (default benchmarks/results/loader-profile-cpu)")
    parser.add_argument("--sample-states", nargs=2, metavar=("PID", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sample_states:
        print(json.dumps(thread_states(int(args.sample_states[0]), float(args.sample_states[1]))))
        return 0

    cfg = make_config(args, "cpu")
    loader = VideoLoader(cfg)
    sampler = loader.sampler
    steps = range(args.rounds * (args.batches + 3) * 3 + 64)
    report = {"machine": machine_label(), "batch_size": args.batch_size, "frames": args.frames, "crop": args.crop,
              "workers": args.workers, "threads": args.threads, "prefetch": args.prefetch, "batches": args.batches,
              "resize_backend": args.resize_backend}

    cpu0 = time.process_time()
    for step in range(200):
        sampler.plan(step)
    report["plan_cpu_ms_per_batch"] = 1e3 * (time.process_time() - cpu0) / 200

    graph = build_pipeline(sampler, 0, "cpu", None, resize=loader.resize_in_graph)
    held = []
    for _ in range(20):
        video_list, meta_list = graph.run()
        held.append(([np.array(video_list[i]) for i in range(len(video_list))], np.array(meta_list.as_tensor())))
    time.sleep(1.0)   # the graph decodes `prefetch` batches ahead: let them finish before timing alone
    best = float("inf")
    with _one_torch_thread():
        for _ in range(12):   # the first passes also grow the allocator's heap: the best pass is steady state
            start = time.perf_counter()
            for samples, meta in held:
                loader.normalise(samples, meta)
            best = min(best, (time.perf_counter() - start) / len(held))
    report["augment_normalise_ms_per_batch"] = 1e3 * best

    decode_only = DecodeOnlyRun(sampler, list(steps), cfg, "cpu")
    runners = {"c_decode_only": decode_only.next_batch, "a_graph_with_readers": graph.run, "a_loader": loader.next_batch}
    rounds = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, next_batch in runners.items():
            rounds[name].append(measure(next_batch, args.batches))
    report["runs"] = {name: min(results, key=lambda r: r["wall_ms"]) for name, results in rounds.items()}

    sampler_process = subprocess.Popen([sys.executable, __file__, "--sample-states", str(os.getpid()),
                                        str(args.state_seconds)], stdout=subprocess.PIPE, text=True)
    while sampler_process.poll() is None:
        loader.next_batch()
    report["thread_states_caller_pool0_pool1"] = json.loads(sampler_process.stdout.read())
    decode_only.close()
    graph._shutdown()
    loader.close()

    c, a = report["runs"]["c_decode_only"], report["runs"]["a_loader"]
    report["a_over_c"] = round(c["wall_ms"] / a["wall_ms"], 3)
    stem = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "loader-profile-cpu"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"# Loader CPU profile ({report['machine']})", "",
             f"`python benchmarks/loader_profile.py` defaults: B={args.batch_size}, T={args.frames}, crop {args.crop}, "
             f"{args.workers} workers, {args.threads} DALI threads, prefetch {args.prefetch}, CPU resize backend "
             f"{args.resize_backend}; fastest of {args.rounds} "
             f"interleaved rounds of {args.batches} batches.", "",
             f"- plan of one batch: {report['plan_cpu_ms_per_batch']:.2f} ms CPU",
             f"- PyTorch crop/flip/resize + normalisation of one batch: {report['augment_normalise_ms_per_batch']:.2f} ms "
             "(one thread, nothing else running)", "",
             "| run | wall ms/batch | process CPU ms/batch | busy cores |", "|---|---|---|---|"]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['wall_ms']:.1f} | {run['process_cpu_ms']:.1f} | {run['busy_cores']:.2f} |")
    lines += ["", f"a/c (wall) = {report['a_over_c']}. Process CPU excludes the reader worker processes; busy "
              "cores count the whole machine.", "",
              "Thread states during (a) (caller / DALI pool thread / DALI pool thread; run = running or runnable):", ""]
    lines += [f"- {k}: {v:.1%}" for k, v in report["thread_states_caller_pool0_pool1"].items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
