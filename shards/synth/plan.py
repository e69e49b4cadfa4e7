"""The `synth` source of `python -m shards.build`: generate the synth suite's raw trees, then plan each part
with the real adapters.

`shards.synth.generate_suite(RAW, scale, seed, workers)` writes RAW/synth-ucf (UCF-101 layout),
RAW/synth-ssv2 (SSv2), RAW/synth-in (ImageNet-100) and RAW/synth-diving (Diving-48 V2), skipping parts
that are already complete. Each part is then planned exactly like a user's real dataset, into
OUT/<part> with dataset name <part>, every official split (UCF-101 split 1). The builder passes its own
`plan_dataset` in, so this package never imports the builder (which imports it).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from shards.errors import LayoutError
from shards.safefiles import refuse_links

PART_SOURCES = {"synth-ucf": "ucf101", "synth-ssv2": "ssv2", "synth-in": "imagenet100", "synth-diving": "diving48"}


def plan_synth(args: argparse.Namespace, plan_dataset: Callable[..., tuple]) -> list[tuple]:
    """[(listing, splits, build args, OUT/<part>)] of every part, as `plan_dataset(source, root, out, dataset,
    splits, args)` plans a real dataset."""
    if args.split:
        raise LayoutError("synth builds every official split of each part; drop --split")
    for part in PART_SOURCES:  # before minutes of generation; plan_dataset checks again
        refuse_links(args.out / part)
    from shards.synth import generate_suite  # looked up at call time, so tests can stand a fake in
    try:
        roots = generate_suite(args.root, scale=args.scale, seed=args.seed, workers=args.workers)
    except ValueError as error:  # the generator's own argument checks
        raise LayoutError(f"synth generator: {error}") from None
    part_args = argparse.Namespace(**{**vars(args), "ucf_split": 1, "class_list": None})
    planned = []
    for part, source in PART_SOURCES.items():
        if part not in roots:
            raise LayoutError(f"{args.root}: the synth generator returned no {part!r} part; expected "
                              f"{', '.join(PART_SOURCES)}")
        out = args.out / part
        listing, splits, build_args = plan_dataset(source, Path(roots[part]), out, part, None, part_args)
        planned.append((listing, splits, build_args, out))
    return planned
