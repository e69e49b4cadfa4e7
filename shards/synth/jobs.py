"""What one part generator looks like to the suite runner: a plan of sample jobs, a renderer, metadata.

A part module (`ucf`, `ssv2`, `imagenet`, `diving`) exposes:

- `NAME` (the raw tree's folder name) and `CODE` (an int mixed into every random stream of the part);
- `class_names(scale) -> list[str]` in label order;
- `plan(scale, seed) -> list[SampleJob]`: every file to write, cheap to compute;
- `render(job, scale, seed) -> bytes`: the encoded file of one job, a pure function of its arguments;
- `write_metadata(root, jobs, scale, seed)`: split lists / label files, written after all media.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleJob:
    relpath: str            # file path relative to the part's root
    split: str              # "train", "test" or "val"
    label: int              # index into class_names(scale)
    stream: tuple           # ints naming this sample's random stream inside the part
    extra: tuple = ()       # part-specific fields (UCF: group and clip numbers; SSv2: video id)


def sample_rng(seed: int, part_code: int, *stream: int) -> np.random.Generator:
    """Independent generator per (seed, part, sample): results never depend on worker count or order."""
    return np.random.default_rng([int(seed), int(part_code), *map(int, stream)])


def unit_time(frames: int) -> np.ndarray:
    """[T] times in [0, 1], first frame at 0 and last at 1."""
    return np.linspace(0.0, 1.0, frames, dtype=np.float64)


def limit_classes(names: list, class_limit: int | None) -> list:
    return list(names) if class_limit is None else list(names)[:class_limit]
