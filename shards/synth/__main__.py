"""CLI: `python -m shards.synth --out RAW [--scale demo|gpu|test] [--seed 0] [--parts ...] [--workers N]`."""
from __future__ import annotations

import argparse
import sys
import time

from .scales import SCALES
from .suite import PART_NAMES, generate_suite


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shards.synth",
        description="Generate the synth suite's raw trees (UCF-101, SSv2, ImageNet-100 and Diving-48 V2 "
                    "layouts) under --out. Parts already complete with the same arguments are skipped; "
                    "an interrupted run resumes where it stopped. Then build shards with "
                    "`python -m shards.build synth --root RAW --out OUT`.",
)
    parser.add_argument("--out", required=True, help="folder that receives synth-ucf/, synth-ssv2/, synth-in/, synth-diving/")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES),
                        help="demo (default): 64 px, 32 frames, ~5.6k files, about 1 min of CPU on 2 cores; gpu: "
                             "224 px, 48-64 frames, ~100k files, for a many-core machine; gpu-mini: gpu frame size, ~200 files; "
                             "test: tiny, for tests")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives byte-identical files")
    parser.add_argument("--parts", nargs="+", choices=PART_NAMES, default=None, metavar="PART",
                        help=f"subset of parts to write (default: all of {', '.join(PART_NAMES)})")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: the CPUs available; 1 renders in-process)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        roots = generate_suite(args.out, scale=args.scale, seed=args.seed, parts=args.parts, workers=args.workers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, root in roots.items():
        print(f"{name}: {root}")
    print(f"synth: done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
