"""Shard-build throughput on the synth suite: source clips/s, output MB/s and the output/input size ratio.

    python benchmarks/shards.py [--scale demo] [--workers N] [--work DIR] [--keep]

Generates the synth raw trees (timed separately, not part of the build figures), then builds each part
from scratch through the same code path as `python -m shards.build` and times it, pool start-up
included. Writes benchmarks/results/shards-<machine>.json and .md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from shards.build import make_parser, run  # noqa: E402
from shards.sources import ADAPTERS, AdapterOptions  # noqa: E402
from shards.synth.plan import PART_SOURCES  # noqa: E402

COLUMNS = ["part", "samples", "rejects", "frames", "input_mb", "output_mb", "ratio", "media_ratio", "seconds",
           "clips_per_s", "output_mb_per_s", "frames_per_s"]


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory_gib = None
    if Path("/proc/meminfo").is_file():
        total_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(total_kib / 2**20, 1)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": memory_gib, "gpu": "none",
            "python": platform.python_version(), "pyav": av.__version__, "platform": platform.platform()}


def measure_part(part: str, root: Path, out: Path, workers: int) -> dict:
    source = PART_SOURCES[part]
    listing = ADAPTERS[source].scan(root, None, AdapterOptions())
    input_bytes = sum(item.path.stat().st_size for items in listing.splits.values() for item in items)
    shutil.rmtree(out, ignore_errors=True)
    args = make_parser().parse_args([source, "--root", str(root), "--out", str(out), "--workers", str(workers),
                                     "--dataset-name", part, "--quiet"])
    start = time.perf_counter()
    summaries = run(args)
    seconds = time.perf_counter() - start
    samples = sum(summary.count for summary in summaries)
    rejects = sum(len(summary.rejects) for summary in summaries)
    output_bytes = sum(summary.bytes for summary in summaries)
    index = pq.read_table(out / "index.parquet", columns=["num_frames", "media_size"])
    frames = int(index.column("num_frames").to_numpy().sum())
    media_bytes = int(index.column("media_size").to_numpy().sum())
    return {"part": part, "samples": samples, "rejects": rejects, "frames": frames,
            "input_mb": input_bytes / 1e6, "output_mb": output_bytes / 1e6, "media_mb": media_bytes / 1e6,
            "ratio": output_bytes / input_bytes, "media_ratio": media_bytes / input_bytes,
            "seconds": seconds, "clips_per_s": (samples + rejects) / seconds,
            "output_mb_per_s": output_bytes / 1e6 / seconds, "frames_per_s": frames / seconds}


def total_row(rows: list[dict]) -> dict:
    total = {name: sum(row[name] for row in rows) for name in ("samples", "rejects", "frames", "input_mb",
                                                                "output_mb", "media_mb", "seconds")}
    total.update(part="all", ratio=total["output_mb"] / total["input_mb"],
                 media_ratio=total["media_mb"] / total["input_mb"],
                 clips_per_s=(total["samples"] + total["rejects"]) / total["seconds"],
                 output_mb_per_s=total["output_mb"] / total["seconds"], frames_per_s=total["frames"] / total["seconds"])
    return total


def format_table(rows: list[dict]) -> str:
    header = ("| part | samples | rejects | frames | input MB | output MB | out/in (tars) | out/in (media) | seconds "
              "| clips/s | out MB/s | frames/s |")
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['part']} | {row['samples']} | {row['rejects']} | {row['frames']} | {row['input_mb']:.2f} "
                     f"| {row['output_mb']:.2f} | {row['ratio']:.2f} | {row['media_ratio']:.2f} | {row['seconds']:.1f} | {row['clips_per_s']:.1f} "
                     f"| {row['output_mb_per_s']:.3f} | {row['frames_per_s']:.0f} |")
    return "\n".join(lines)


def write_markdown(path: Path, result: dict, table: str) -> None:
    machine = result["machine"]
    generation = ("The raw trees were reused from an earlier run." if result["raw_reused"] else
                  f"Raw generation took {result['generation_seconds']:.1f} s and is not counted.")
    busy = max(result['load_average_before'][0], result['load_average_after'][0]) > 0.5 * machine['cores']
    load_note = ("other jobs shared the machine, so these are lower bounds" if busy
                 else "the machine was otherwise idle")
    text = f"""# Shard build throughput (`benchmarks/shards.py`)

Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, no GPU; Python {machine['python']},
PyAV {machine['pyav']}. Load average while measuring: {result['load_average_before']} -> {result['load_average_after']}
({load_note}).

Synth suite scale `{result['scale']}`, seed {result['seed']}, {result['workers']} workers, default canonical clip
(VP9 in MP4, realtime cpu-used 8, crf 30, keyframe every 16 frames; images kept as JPEG). {generation} Each part is built from scratch; seconds include worker start-up
and writing the catalog. clips/s counts every source file read (rejects included). "out/in (tars)" compares
the shard files (tar headers and per-sample JSON included) with the raw files; "out/in (media)" compares only
the clip/image members.

{table}

Input: MPEG-4 .avi (synth-ucf), VP9 .webm (synth-ssv2), JPEG (synth-in), H.264 .mp4 (synth-diving).
"""
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo", choices=["demo", "gpu", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work", type=Path, help="folder for raw trees and shards (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default="cpu", help="result file suffix: shards-<tag>.json/.md")
    args = parser.parse_args()
    from shards.synth import COMPLETE_MARKER, generate_suite

    work = args.work or Path(tempfile.mkdtemp(prefix="shards-bench-"))
    try:
        load_before = [round(value, 2) for value in os.getloadavg()]
        raw_reused = all((work / "raw" / part / COMPLETE_MARKER).is_file() for part in PART_SOURCES)
        start = time.perf_counter()
        roots = generate_suite(work / "raw", scale=args.scale, seed=args.seed, workers=args.workers)
        generation_seconds = time.perf_counter() - start
        rows = [measure_part(part, Path(roots[part]), work / "shards" / part, args.workers) for part in PART_SOURCES]
        rows.append(total_row(rows))
        result = {"benchmark": "shards", "scale": args.scale, "seed": args.seed, "workers": args.workers,
                  "machine": machine_description(), "generation_seconds": generation_seconds,
                  "raw_reused": raw_reused,
                  "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
                  "rows": rows}
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table = format_table(rows)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"shards-{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.results / f"shards-{args.tag}.md", result, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
