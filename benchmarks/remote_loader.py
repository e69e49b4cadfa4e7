"""Remote vs local loader throughput: the same planned batches read from a path and through a local HTTP
server that honours Range requests (tests/remote_servers.py), or from a remote URL, with the requests each
batch costs.

    python benchmarks/remote_loader.py --shards data/shards            # the demo synth shards
    python benchmarks/remote_loader.py --shards data/shards --latency-ms 0,20
    python benchmarks/remote_loader.py --shards s3://lab-shards/demo   # shards already in an object store

With a folder, rows: `local` (the path), `http` (ranged GETs on loopback, no added latency), `http+Nms` (each
ranged GET delayed by N ms, a stand-in for an object store's time to first byte), and `http+Nms cached` (the
same with a warm member cache: what a second epoch costs); requests and bytes per batch are counted by the
server over the timed batches. With a URL (s3://, gs://, https://), rows: the URL's scheme, and the same with a
warm member cache. Writes benchmarks/results/loader-remote-cpu.json and .md (or --out) with the machine.
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
sys.path[0:0] = [str(REPO), str(REPO / "tests")]  # the engine (before benchmarks/, whose shards.py is no package)

from remote_servers import RangeHTTPServer  # noqa: E402

from benchmarks.loader import PAPER_MIX, LoaderRun, machine_label  # noqa: E402
from engine.data import DatasetSpec, LoaderConfig  # noqa: E402
from engine.data.remote import RemoteConfig  # noqa: E402
from shards import storage  # noqa: E402


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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--shards", default="data/shards",
                        help="folder or URL (s3://, gs://, https://) holding synth-ucf, synth-ssv2 and synth-in "
                             "(default data/shards)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--crop", type=int, default=64, help="output height and width in pixels (default 64)")
    parser.add_argument("--frame-step", type=int, default=2, help="take every N-th frame (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads (default 2)")
    parser.add_argument("--prefetch", type=int, default=2, help="batches prepared ahead (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per round (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one is reported (default 3)")
    parser.add_argument("--latency-ms", default="0,20",
                        help="a folder only: comma-separated delays added to each ranged GET of the local HTTP "
                             "server, one row each (default 0,20)")
    parser.add_argument("--out", default=None, metavar="STEM",
                        help="write the results to STEM.json and STEM.md (default "
                             "benchmarks/results/loader-remote-cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    remote = storage.is_url(args.shards) and storage.local_path(args.shards) is None
    shards = args.shards.rstrip("/") if remote else str(Path(storage.local_path(args.shards)).resolve())
    load_before = os.getloadavg()
    report = {"machine": machine_label(), "shards": shards, "config": vars(args), "rows": {}}
    cache = Path(tempfile.mkdtemp(prefix="remote-bench-cache-"))
    try:
        if remote:
            measure_url(shards, args, report, cache)
        else:
            measure_folder(shards, args, report, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    report["load_before"], report["load_after"] = load_before, os.getloadavg()
    report["remote_defaults"] = dataclasses.asdict(RemoteConfig())
    stem = Path(args.out) if args.out else REPO / "benchmarks" / "results" / "loader-remote-cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(stem.with_suffix(".md"), report)
    print(stem.with_suffix(".md").read_text())
    return 0


def measure_folder(shards: str, args, report: dict, cache: Path) -> None:
    """A local folder: the path itself, then through a local HTTP server at each added latency."""
    report["rows"]["local"] = measure(make_config(shards, args, RemoteConfig()), args, None)
    print("local", report["rows"]["local"]["clips_per_s"], flush=True)
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


def measure_url(url: str, args, report: dict, cache: Path) -> None:
    """Shards already remote: the URL as is, then with a warm member cache."""
    name = storage.scheme(url)
    report["rows"][name] = measure(make_config(url, args, RemoteConfig()), args, None)
    print(name, report["rows"][name], flush=True)
    remote = RemoteConfig(cache_dir=str(cache / name))
    measure(make_config(url, args, remote), args, None)  # warm the cache
    report["rows"][f"{name} cached"] = measure(make_config(url, args, remote), args, None)
    print(f"{name} cached", report["rows"][f"{name} cached"], flush=True)


def write_markdown(path: Path, report: dict) -> None:
    cfg = report["config"]
    reference = next(iter(report["rows"]))  # local, or the URL's first row
    local = report["rows"][reference]["clips_per_s"]
    if reference == "local":
        where = (f"--latency-ms {cfg['latency_ms']}`: demo synth shards, ", "Remote rows read through a local HTTP "
                 "server (Python http.server with Range support, on the same machine and cores); `+N ms` delays each "
                 "ranged GET by N ms. Requests and bytes are those the server answered while the timed batches were "
                 "made.")
    else:
        where = ("`: shards at that URL, ", "`cached`: the same with a warm member cache.")
    lines = [f"# Remote vs local loader ({report['machine']})", "",
             f"`python benchmarks/remote_loader.py --shards {report['shards']} --batches {cfg['batches']} --rounds "
             f"{cfg['rounds']} {where[0]}mix "
             f"{dict(PAPER_MIX)}, B={cfg['batch_size']}, T={cfg['frames']}, crop {cfg['crop']}, "
             f"{cfg['workers']} workers, {cfg['threads']} DALI threads, prefetch {cfg['prefetch']}; best of "
             f"{cfg['rounds']} rounds of {cfg['batches']} batches. {where[1]}",
             "", f"Load average before {[round(x, 2) for x in report['load_before']]}, after "
             f"{[round(x, 2) for x in report['load_after']]}.", "",
             f"| source | clips/s | vs {reference} | requests / batch | kB / batch |", "|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        requests = f"{row['requests_per_batch']:.1f}" if "requests_per_batch" in row else "-"
        kb = f"{row['kb_per_batch']:.0f}" if "kb_per_batch" in row else "-"
        lines.append(f"| {name} | {row['clips_per_s']:.1f} | {row['clips_per_s'] / local:.2f} | {requests} | {kb} |")
    lines += ["", f"Remote reader defaults: {report['remote_defaults']}.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
