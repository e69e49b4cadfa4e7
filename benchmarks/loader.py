"""Loader throughput, side by side on the same planned samples:

  (a) this loader: index-driven DALI pipeline over the shards (read, decode, crop/flip/resize, normalise)
  (b) the per-file reference: PyAV on the raw source files, crop/resize/normalise in PyTorch, in a
      torch DataLoader with as many worker processes as (a) has (the original study's kind of loader)
  (c) decode alone: DALI's decoders on member bytes already in memory, same frames, nothing else
      (the upper bound for (a))

    python benchmarks/loader.py --shards data/shards                 # CPU (DALI decode_device="cpu")
    python benchmarks/loader.py --shards data/shards --device both   # GPU machine: mixed and cpu

Writes benchmarks/results/loader-<device>.json and .md with the machine the numbers came from.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from engine.data import DatasetSpec, LoaderConfig, VideoLoader  # noqa: E402
from engine.data.index import read_member  # noqa: E402
from engine.data.pipeline import SampleSource, build_pipeline, remove_autograph_sources  # noqa: E402
from engine.data.sampler import ClipSampler  # noqa: E402
from shards.storage import join, read_bytes  # noqa: E402

PAPER_MIX = (("synth-ucf", 0.2), ("synth-ssv2", 0.6), ("synth-in", 0.2))


def machine_label() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), {gpu}"


def make_config(args, device: str) -> LoaderConfig:
    specs = [DatasetSpec(str(join(args.shards, name)), weight=w, frame_step=args.frame_step)  # a path or a URL
             for name, w in PAPER_MIX]
    return LoaderConfig(specs, batch_size=args.batch_size, num_frames=args.frames, crop_size=args.crop,
                        decode_device=device, num_workers=args.workers, num_threads=args.threads,
                        prefetch=args.prefetch, infinite=True, seed=args.seed,
                        resize_backend="auto" if device == "mixed" else args.resize_backend)


class LoaderRun:
    """(a): the VideoLoader itself, as the training loop drives it."""

    def __init__(self, cfg: LoaderConfig):
        self.loader = VideoLoader(cfg)
        self.stream = iter(self.loader)
        self.drain = cfg.prefetch + 1   # batches DALI prepared while another runner was being timed
        self.sync = torch.cuda.synchronize if self.loader.decode_device == "mixed" else (lambda: None)

    def next_batch(self):
        return next(self.stream)

    def close(self):
        self.loader.close()


def time_round(runner, batches: int) -> float:
    """Seconds for `batches` batches in steady state: work queued ahead while idle is drained first."""
    getattr(runner, "begin_round", lambda: None)()
    for _ in range(runner.drain):
        runner.next_batch()
    runner.sync()
    start = time.perf_counter()
    for _ in range(batches):
        runner.next_batch()
    runner.sync()
    seconds = time.perf_counter() - start
    getattr(runner, "end_round", lambda: None)()
    return seconds


# ------------------------------------------------------------------------------------------- (b)
class RawFileClips(torch.utils.data.Dataset):
    """Slot i of the planned batches, decoded from the raw source file the shard sample was built from."""

    def __init__(self, sampler, steps: list[int]):
        self.cfg = sampler.cfg
        self.items = []
        raw_roots = []
        for index in sampler.indexes:
            manifest = json.loads(read_bytes(join(index.root, "manifest.json")))
            raw_roots.append(Path(manifest["build"]["root"]))
        source_cache = {}
        for step in steps:
            plan = sampler.plan(step)
            for i in range(len(plan.row)):
                d, r = int(plan.dataset_id[i]), int(plan.row[i])
                index = sampler.indexes[d]
                if (d, r) not in source_cache:
                    source_cache[(d, r)] = self._source_of(index, r, raw_roots[d])
                source, raw_height, raw_width = source_cache[(d, r)]
                # The crop box was planned on the stored resolution; map it onto the raw file's.
                sy, sx = raw_height / index.height[r], raw_width / index.width[r]
                scale = np.array([sy, sx], np.float32)
                self.items.append((source, bool(plan.is_image[i]), plan.frames[i].copy(),
                                   plan.roi_start[i] * scale, plan.roi_end[i] * scale))

    @staticmethod
    def _source_of(index, row, raw_root: Path):
        import av  # only (b) reads the raw files: a GPU run with --no-reference needs no PyAV

        meta_row = json.loads(read_member(index.shard_paths[index.shard_id[row]], int(index.json_offset[row]),
                                          int(index.json_size[row])))
        path = raw_root / meta_row["source"]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return str(path), stream.codec_context.height, stream.codec_context.width

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        from engine.data.pyav_oracle import oracle_sample

        source, is_image, frames, roi_start, roi_end = self.items[i]
        return oracle_sample(self.cfg, source, is_image, frames, roi_start, roi_end, dali_colour=False)


class ReferenceRun:
    """(b): per-file PyAV decode of the raw sources in a torch DataLoader with the same worker count.

    Its worker processes live for one round only: left running, they would keep decoding ahead
    (prefetch_factor batches per worker, about a second of both cores) while the next loader is timed."""

    def __init__(self, sampler, steps: list[int], args):
        self.loader = torch.utils.data.DataLoader(RawFileClips(sampler, steps), batch_size=args.batch_size,
                                                  num_workers=args.workers)
        self.stream = None
        self.drain = 2 * max(args.workers, 1) + 1   # the DataLoader's default prefetch_factor is 2
        self.sync = lambda: None

    def begin_round(self):
        self.stream = iter(self.loader)

    def end_round(self):
        self.stream = None   # the last reference: the iterator's finaliser stops its workers now

    def next_batch(self):
        return next(self.stream)

    def close(self):
        if self.stream is not None:
            self.end_round()


# ------------------------------------------------------------------------------------------- (c)
@pipeline_def(enable_conditionals=True)
def _decode_only_graph(decode_device):
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
    is_image = fn.external_source(name="is_image", dtype=types.BOOL, ndim=0)
    if is_image:
        out = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
        out = fn.expand_dims(out, axes=[0], new_axis_names="F")
    else:
        out = fn.decoders.video(encoded, device=decode_device, frames=frames)
    return out


class DecodeOnlyRun:
    """(c): DALI's decoders alone on member bytes already in memory, same samples and frames."""

    def __init__(self, sampler, steps: list[int], cfg: LoaderConfig, device: str):
        self.batches = []
        for step in steps:
            plan = sampler.plan(step)
            encoded = []
            for d, r in zip(plan.dataset_id, plan.row):
                index = sampler.indexes[d]
                encoded.append(np.frombuffer(read_member(index.shard_paths[index.shard_id[r]], int(index.media_offset[r]),
                                                         int(index.media_size[r])), np.uint8))
            self.batches.append((encoded, list(plan.frames), [np.array(x) for x in plan.is_image]))
        self.pipe = _decode_only_graph(device, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                                       device_id=0 if device == "mixed" else None, prefetch_queue_depth=1)
        remove_autograph_sources()  # as the loader does: nothing left in /tmp
        self.pipe.build()
        self.cursor = iter(self.batches)
        self.drain = 1
        self.sync = torch.cuda.synchronize if device == "mixed" else (lambda: None)

    def next_batch(self):
        encoded, frames, is_image = next(self.cursor)
        self.pipe.feed_input("encoded", encoded)
        self.pipe.feed_input("frames", frames)
        self.pipe.feed_input("is_image", is_image)
        return self.pipe.run()

    def close(self):
        self.pipe._shutdown()


# ------------------------------------------------------------------------------------------- (d)
class MemorySource(SampleSource):
    """The loader's own source, serving member bytes from memory instead of the tars."""

    def __init__(self, sampler, first_step: int, members: dict):
        super().__init__(sampler, first_step)
        self.members = members

    def _read(self, path: str, offset: int, size: int) -> np.ndarray:
        return self.members[(path, offset)]


class GraphOnlyRun:
    """(d): the loader's DALI graph (decode + crop/flip/resize in DALI or PyTorch, as the loader does it) and
    its normalisation into the batch tensor,
    without tar reads or workers; (d)/(c) is the cost of augmentation, (a)/(d) the cost of reading."""

    def __init__(self, loader: VideoLoader, steps: list[int], device: str):
        self.loader = loader
        sampler = loader.sampler
        cfg = dataclasses.replace(sampler.cfg, num_workers=0)
        graph_sampler = ClipSampler(cfg, sampler.indexes)
        members = {}
        for step in steps:
            plan = graph_sampler.plan(step)
            for d, r in zip(plan.dataset_id, plan.row):
                index = sampler.indexes[d]
                path, offset = index.shard_paths[index.shard_id[r]], int(index.media_offset[r])
                members[(path, offset)] = np.frombuffer(read_member(path, offset, int(index.media_size[r])), np.uint8)
        self.pipe = build_pipeline(graph_sampler, 0, device, 0, source=MemorySource(graph_sampler, 0, members),
                                   resize=loader.resize_in_graph)
        self.drain = cfg.prefetch + 1
        self.sync = torch.cuda.synchronize if device == "mixed" else (lambda: None)

    def next_batch(self):
        video_list, meta_list = self.pipe.run()
        return self.loader.normalise(video_list, np.array(meta_list.as_tensor()))

    def close(self):
        self.pipe._shutdown()


# ------------------------------------------------------------------------------------------- report
def rates(round_seconds: list[float], args) -> dict:
    """Best round (the least disturbed by other work on the machine) and the median round."""
    clips = args.batches * args.batch_size
    best, median = min(round_seconds), float(np.median(round_seconds))
    return {"clips_per_s": round(clips / best, 1), "frames_per_s": round(clips * args.frames / best, 1),
            "median_clips_per_s": round(clips / median, 1), "round_seconds": [round(x, 3) for x in round_seconds]}


def write_markdown(path: Path, report: dict) -> None:
    lines = [f"# Loader throughput ({report['machine']})", "",
             f"Load average (1/5/15 min) before {report['load_average_before']}, after {report['load_average_after']} "
             "(the benchmark itself keeps the cores busy); rounds are interleaved so that any other load hits "
             "every loader alike.", "",
             f"Demo synth shards, mix {report['mix_weights']}, B={report['batch_size']}, T={report['frames']}, "
             f"crop {report['crop']}, frame step {report['frame_step']}, {report['workers']} workers, "
             f"{report['threads']} DALI threads, CPU resize backend {report['resize_backend']}; "
             f"best of {report['rounds']} interleaved rounds of {report['batches']} batches "
             f"(median round in the JSON).",
             "", "| device | loader | clips/s | frames/s |", "|---|---|---|---|"]
    for device, run in report["runs"].items():
        for name in ("a_loader", "b_reference", "c_decode_only", "d_graph_only"):
            if name in run:
                lines.append(f"| {device} | {name} | {run[name]['clips_per_s']} | {run[name]['frames_per_s']} |")
    lines += ["", "| device | a/b | a/c | d/c | a/d | targets |", "|---|---|---|---|---|---|"]
    for device, run in report["runs"].items():
        lines.append(f"| {device} | {run.get('a_over_b', '-')} | {run['a_over_c']} | {run['d_over_c']} | "
                     f"{run['a_over_d']} | a/b >= 3, a/c >= 0.85 |")
    lines += ["", "Realised mix (a): " + ", ".join(f"{k} {v['realised']:.3f} (weight {v['weight']:.2f})"
                                                  for k, v in report["realised_mix"].items()), ""]
    path.write_text("\n".join(lines))


def add_loader_arguments(parser: argparse.ArgumentParser, batches: int, rounds: int) -> None:
    """The loader settings and round counts `make_config` and the timing loops read (shared with loader_profile)."""
    parser.add_argument("--shards", default="data/shards", help="folder holding synth-ucf, synth-ssv2, synth-in")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--frame-step", type=int, default=2)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2, help="batches DALI prepares ahead (LoaderConfig.prefetch)")
    parser.add_argument("--resize-backend", default="auto", choices=["auto", "dali", "torch"],
                        help="the CPU path's crop/flip/resize (LoaderConfig.resize_backend); mixed always uses auto")
    parser.add_argument("--batches", type=int, default=batches, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds; the best round is reported")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loader_arguments(parser, batches=20, rounds=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "mixed", "both"])
    parser.add_argument("--no-reference", action="store_true", help="skip (b)")
    parser.add_argument("--out", default=None, help="result stem (default benchmarks/results/loader-<device>)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    devices = ["mixed", "cpu"] if args.device == "both" else [args.device]
    report = {"machine": machine_label(), "batch_size": args.batch_size, "frames": args.frames, "crop": args.crop,
              "frame_step": args.frame_step, "workers": args.workers, "threads": args.threads,
              "prefetch": args.prefetch,
              "resize_backend": args.resize_backend,
              "batches": args.batches, "rounds": args.rounds, "mix_weights": dict(PAPER_MIX),
              "torch": torch.__version__, "shards": str(Path(args.shards).resolve()),
              "load_average_before": [round(x, 2) for x in os.getloadavg()], "runs": {}}
    print(f"machine: {report['machine']}")
    for device in devices:
        cfg = make_config(args, device)
        runners = {"a_loader": LoaderRun(cfg)}
        sampler = runners["a_loader"].loader.sampler
        steps = list(range(args.rounds * (args.batches + 8) + 8))
        runners["c_decode_only"] = DecodeOnlyRun(sampler, steps, cfg, device)
        runners["d_graph_only"] = GraphOnlyRun(runners["a_loader"].loader, steps, device)
        if not args.no_reference and device == devices[-1]:
            runners["b_reference"] = ReferenceRun(sampler, steps, args)
        seconds = {name: [] for name in runners}
        # Rounds interleave the loaders so a burst of load on a shared machine hits all of them.
        for _ in range(args.rounds):
            for name, runner in runners.items():
                seconds[name].append(time_round(runner, args.batches))
        mix = runners["a_loader"].loader.mix_report()
        for runner in runners.values():
            runner.close()
        run = {name: rates(secs, args) for name, secs in seconds.items()}
        if "b_reference" in run:
            run["a_over_b"] = round(run["a_loader"]["clips_per_s"] / run["b_reference"]["clips_per_s"], 2)
        run["a_over_c"] = round(run["a_loader"]["clips_per_s"] / run["c_decode_only"]["clips_per_s"], 3)
        run["d_over_c"] = round(run["d_graph_only"]["clips_per_s"] / run["c_decode_only"]["clips_per_s"], 3)
        run["a_over_d"] = round(run["a_loader"]["clips_per_s"] / run["d_graph_only"]["clips_per_s"], 3)
        report["runs"][device] = run
        report["realised_mix"] = mix
        print(f"\n[{device}]  {'loader':<28}{'clips/s':>10}{'frames/s':>12}")
        for name, label in (("a_loader", "(a) this loader"), ("b_reference", "(b) per-file PyAV loader"),
                            ("c_decode_only", "(c) DALI decode alone"),
                            ("d_graph_only", "(d) DALI graph, bytes in RAM")):
            if name in run:
                print(f"{'':<10}{label:<28}{run[name]['clips_per_s']:>10}{run[name]['frames_per_s']:>12}")
        print(f"{'':<10}a/b = {run.get('a_over_b', '-')}   a/c = {run['a_over_c']}   (targets: a/b >= 3, a/c >= 0.85)")
        print(f"{'':<10}d/c = {run['d_over_c']} (augmentation cost)   a/d = {run['a_over_d']} (reading + hand-over cost)")
    print("realised mix:", {k: round(v["realised"], 3) for k, v in report["realised_mix"].items()})

    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    stem = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"loader-{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(stem.with_suffix(".md"), report)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
