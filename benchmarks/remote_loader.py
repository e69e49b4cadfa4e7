"""Remote vs local loader throughput: the same planned batches read from a path and through a local HTTP
server that honours Range requests (tests/remote_servers.py), with the requests each batch costs.

    python benchmarks/remote_loader.py --shards data/shards            # the demo synth shards
    python benchmarks/remote_loader.py --shards data/shards --latency-ms 0,20

Rows: `local` (the path), `http` (ranged GETs on loopback, no added latency), `http+Nms` (each ranged GET
delayed by N ms, a stand-in for an object store's time to first byte), and `http+Nms cached` (the same
with a warm member cache: what a second epoch costs). Requests and bytes per batch are counted by the
server over the timed batches. Writes benchmarks/results/loader-remote-<device>.json and .md with the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from loader import PAPER_MIX, LoaderRun, machine_label  # noqa: E402
from remote_servers import RangeHTTPServer  # noqa: E402

from engine.data import DatasetSpec, LoaderConfig  # noqa: E402
from engine.data.remote import RemoteConfig  # noqa: E402


def make_config(root: str, args, remote: RemoteConfig) -> LoaderConfig:
    specs = [DatasetSpec(f"{root.rstrip('/')}/{name}", weight=w, frame_step=args.frame_step) for name, w in PAPER_MIX]
    return LoaderConfig(specs, batch_size=args.batch_size, num_frames=args.frames, crop_size=args.crop,
                        decode_device="cpu", num_workers=args.workers, num_threads=args.threads,
                        prefetch=args.prefetch, infinite=True, seed=args.seed, remote=remote)


def measure(cfg: LoaderConfig, args, server: RangeHTTPServer | None) -> dict:
    """Best of `rounds` rounds of `batches` batches; requests and bytes per batch over all timed rounds."""
    runner = LoaderRun(cfg)
    times, requests, sent, counted = [], 0, 0, 0
    try:
        for _ in range(args.rounds):
            for _ in range(runner.drain):
                runner.next_batch()
            if server is not None:
                server.log.clear()
            start = time.perf_counter()
            for _ in range(args.batches):
                runner.next_batch()
            times.append(time.perf_counter() - start)
            if server is not None:  # what the server answered while these batches were made (prefetch included)
                requests += len(server.log.gets(".tar"))
                sent += server.log.bytes_sent
                counted += args.batches
    finally:
        runner.close()
    best = min(times)
    row = {"clips_per_s": args.batches * args.batch_size / best, "round_seconds": times}
    if server is not None and counted:
        row.update(requests_per_batch=requests / counted, kb_per_batch=sent / counted / 1000)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/shards", help="folder with synth-ucf, synth-ssv2, synth-in")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--frame-step", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", default="0,20", help="added per-request latencies to measure")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    shards = Path(args.shards).resolve()
    load_before = os.getloadavg()
    report = {"machine": machine_label(), "shards": str(shards), "config": vars(args), "rows": {}}
    report["rows"]["local"] = measure(make_config(str(shards), args, RemoteConfig()), args, None)
    print("local", report["rows"]["local"]["clips_per_s"], flush=True)
    cache = Path(tempfile.mkdtemp(prefix="remote-bench-cache-"))
    try:
        with RangeHTTPServer(shards) as server:
            for latency in [int(x) for x in args.latency_ms.split(",") if x.strip()]:
                server.log.delay_s = latency / 1000
                name = "http" if latency == 0 else f"http+{latency}ms"
                report["rows"][name] = measure(make_config(server.url, args, RemoteConfig()), args, server)
                print(name, report["rows"][name], flush=True)
                if latency:
                    remote = RemoteConfig(cache_dir=str(cache / name))
                    measure(make_config(server.url, args, remote), args, None)  # warm the cache
                    report["rows"][f"{name} cached"] = measure(make_config(server.url, args, remote), args, server)
                    print(f"{name} cached", report["rows"][f"{name} cached"], flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    report["load_before"], report["load_after"] = load_before, os.getloadavg()
    report["remote_defaults"] = dataclasses.asdict(RemoteConfig())
    stem = Path(args.out) if args.out else REPO / "benchmarks" / "results" / "loader-remote-cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(stem.with_suffix(".md"), report)
    print(stem.with_suffix(".md").read_text())
    return 0


def write_markdown(path: Path, report: dict) -> None:
    cfg = report["config"]
    local = report["rows"]["local"]["clips_per_s"]
    lines = [f"# Remote vs local loader ({report['machine']})", "",
             f"`python benchmarks/remote_loader.py --shards {cfg['shards']} --batches {cfg['batches']} --rounds "
             f"{cfg['rounds']} --latency-ms {cfg['latency_ms']}`: demo synth shards, mix "
             f"{dict(PAPER_MIX)}, B={cfg['batch_size']}, T={cfg['frames']}, crop {cfg['crop']}, "
             f"{cfg['workers']} workers, {cfg['threads']} DALI threads, prefetch {cfg['prefetch']}; best of "
             f"{cfg['rounds']} rounds of {cfg['batches']} batches. Remote rows read through a local HTTP server "
             f"(Python http.server with Range support, on the same machine and cores); `+N ms` delays each ranged "
             f"GET by N ms. Requests and bytes are those the server answered while the timed batches were made.",
             "", f"Load average before {[round(x, 2) for x in report['load_before']]}, after "
             f"{[round(x, 2) for x in report['load_after']]}.", "",
             "| source | clips/s | vs local | requests / batch | kB / batch |", "|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        requests = f"{row['requests_per_batch']:.1f}" if "requests_per_batch" in row else "-"
        kb = f"{row['kb_per_batch']:.0f}" if "kb_per_batch" in row else "-"
        lines.append(f"| {name} | {row['clips_per_s']:.1f} | {row['clips_per_s'] / local:.2f} | {requests} | {kb} |")
    lines += ["", f"Remote reader defaults: {report['remote_defaults']}.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
