"""Scale presets of the synth suite: resolution, clip length and counts of every part.

One frozen dataclass per scale (`SuiteScale`) bundles the per-part sizes, so every number that makes a
suite small or large lives here and nowhere else. `SCALES` maps the names the CLI accepts to presets.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# UCF-101 split k tests on groups 7(k-1)+1 .. 7k (g01-g07, g08-g14, g15-g21); the rest train.
UCF_TEST_GROUPS_PER_SPLIT = 7
UCF_NUM_SPLITS = 3


@dataclass(frozen=True)
class UcfScale:
    """synth-ucf: `groups` disjoint pools of digit images and photo tiles, `clips_per_group` clips per class each."""
    width: int
    height: int
    frames: int
    groups: int
    clips_per_group: int
    class_limit: int | None = None  # keep only the first N classes (tiny test suites)

    def __post_init__(self):
        needed = UCF_TEST_GROUPS_PER_SPLIT * UCF_NUM_SPLITS + 1
        if self.groups < needed:
            raise ValueError(f"UcfScale.groups={self.groups}: UCF's three splits need at least {needed} groups")
        _check_video(self)


@dataclass(frozen=True)
class VideoScale:
    """A video part with a train split and one held-out split (SSv2 validation, Diving-48 test)."""
    width: int
    height: int
    frames: int
    train_per_class: int
    test_per_class: int
    class_limit: int | None = None

    def __post_init__(self):
        _check_video(self)
        _check_counts(self)


@dataclass(frozen=True)
class ImageScale:
    """synth-in: still images per class in train/ and val/."""
    width: int
    height: int
    train_per_class: int
    test_per_class: int
    class_limit: int | None = None

    def __post_init__(self):
        if self.width < 16 or self.height < 16:
            raise ValueError(f"ImageScale: width/height must be >= 16, got {self.width}x{self.height}")
        _check_counts(self)


@dataclass(frozen=True)
class SuiteScale:
    """Everything that sizes one generation of the four parts."""
    name: str
    ucf: UcfScale
    ssv2: VideoScale
    imagenet: ImageScale
    diving: VideoScale
    noise_std: float  # per-pixel Gaussian noise, in 0..255 units, added to every rendered frame

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_video(scale) -> None:
    # Even sizes: yuv420p needs them; 8 frames is the least that carries a two-phase motion.
    if scale.width < 16 or scale.height < 16 or scale.width % 2 or scale.height % 2:
        raise ValueError(f"{type(scale).__name__}: width/height must be even and >= 16, "
                         f"got {scale.width}x{scale.height}")
    if scale.frames < 8:
        raise ValueError(f"{type(scale).__name__}.frames={scale.frames}: use at least 8 frames")


def _check_counts(scale) -> None:
    if scale.train_per_class < 1 or scale.test_per_class < 1:
        raise ValueError(f"{type(scale).__name__}: train_per_class and test_per_class must be >= 1")


# UCF: 25 groups x 7 clips x 20 classes = 3,500 clips, 2,520 train (18 groups) / 980 test (7 groups).
DEMO = SuiteScale(
    name="demo",
    ucf=UcfScale(width=64, height=64, frames=32, groups=25, clips_per_group=7),
    ssv2=VideoScale(width=64, height=64, frames=32, train_per_class=40, test_per_class=12),
    imagenet=ImageScale(width=64, height=64, train_per_class=20, test_per_class=5),
    diving=VideoScale(width=64, height=64, frames=32, train_per_class=20, test_per_class=6),
    noise_std=6.0,
)

# Counts in the order of the real datasets (UCF-101 13k, SSv2 220k, IN-100 131k, Diving-48 17k),
# scaled to this suite's class counts; meant for a many-core machine.
GPU = SuiteScale(
    name="gpu",
    ucf=UcfScale(width=288, height=224, frames=64, groups=25, clips_per_group=21),
    ssv2=VideoScale(width=288, height=224, frames=48, train_per_class=1500, test_per_class=200),
    imagenet=ImageScale(width=224, height=224, train_per_class=600, test_per_class=50),
    diving=VideoScale(width=288, height=224, frames=64, train_per_class=300, test_per_class=40),
    noise_std=6.0,
)

# A sliver of the gpu scale for the GPU check (benchmarks/gpu): the gpu scale's frame size with 32 frames
# (a 16-frame clip at frame step 2 needs 31), a few classes and samples, about 12 MB of shards, so that it
# travels to an offline GPU machine beside the wheels. The 64 px demo shards cannot stand in: NVDEC decodes
# VP9 only from 128x128 up (DALI: "Video is too small in at least one dimension").
GPU_MINI = SuiteScale(
    name="gpu-mini",
    ucf=UcfScale(width=288, height=224, frames=32, groups=22, clips_per_group=1, class_limit=2),
    ssv2=VideoScale(width=288, height=224, frames=32, train_per_class=4, test_per_class=1, class_limit=4),
    imagenet=ImageScale(width=224, height=224, train_per_class=4, test_per_class=1, class_limit=8),
    diving=VideoScale(width=288, height=224, frames=32, train_per_class=1, test_per_class=1, class_limit=2),
    noise_std=6.0,
)

# For the test suite only: tiny frames, few classes, one or two samples per class.
TEST = SuiteScale(
    name="test",
    ucf=UcfScale(width=32, height=32, frames=8, groups=22, clips_per_group=1, class_limit=2),
    ssv2=VideoScale(width=32, height=32, frames=8, train_per_class=2, test_per_class=1, class_limit=4),
    imagenet=ImageScale(width=32, height=32, train_per_class=2, test_per_class=1, class_limit=6),
    diving=VideoScale(width=32, height=32, frames=8, train_per_class=2, test_per_class=1, class_limit=4),
    noise_std=6.0,
)

SCALES: dict[str, SuiteScale] = {s.name: s for s in (DEMO, GPU, GPU_MINI, TEST)}


def resolve_scale(scale: str | SuiteScale) -> SuiteScale:
    if isinstance(scale, SuiteScale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is unknown; use one of {sorted(SCALES)} or pass a SuiteScale")
    return SCALES[scale]
