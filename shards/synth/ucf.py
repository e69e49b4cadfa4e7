"""synth-ucf: 20 action classes = 10 digit identities x 2 motion families, in the UCF-101 on-disk layout.

Stands in for UCF-101. The label is *what* moves (the handwritten digit's identity) and *how* (`Slide`: a
straight line in a direction drawn over the full circle; `Spin`: rotation in place, either sense), so
neither appearance statistics nor motion energy decide it: the digit's shape must be read, and the two
families tell apart only by how that shape moves. Everything else is drawn per clip and never looks at
the class: the scene (colour grade and floor), the photo crop behind the sprite, the sprite's fill
colour, size, tilt and start position, the slide direction and speed, the spin sense and angle, noise.

Layout written (as UCF-101 publishes it; class folders and classInd in alphabetical order):
    UCF-101/<Class>/v_<Class>_gGG_cCC.avi     MPEG-4 Part 2 in AVI, 25 fps
    ucfTrainTestlist/classInd.txt             "1 EightSlide" ... (1-based)
    ucfTrainTestlist/trainlist0{1,2,3}.txt    "<Class>/v_<Class>_g08_c01.avi 1"
    ucfTrainTestlist/testlist0{1,2,3}.txt     "<Class>/v_<Class>_g01_c01.avi"
Groups own disjoint instances (group g draws its digit images and photo tiles among those with
index % groups == g-1, a fresh draw per clip), and split k tests on groups 7(k-1)+1 .. 7k, as in UCF-101.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import assets, draw, media, scenes, sprites
from .jobs import SampleJob, limit_classes, sample_rng, unit_time
from .scales import UCF_NUM_SPLITS, UCF_TEST_GROUPS_PER_SPLIT, SuiteScale

NAME = "synth-ucf"
CODE = 1
FAMILIES = ("Slide", "Spin")
SPRITE_SIZE = (0.40, 0.50)    # sprite side / frame's short side: 3-4 patches of 8 px at 64 px
TILT_DEG = 15.0               # |tilt| at most (a Spin's orientation at mid-clip)
SLIDE_LENGTH = (0.25, 0.40)   # path over the whole clip / frame's short side: visible in 8 of 32 frames
SPIN_DEG = (30.0, 60.0)       # rotation over the whole clip; <= 60 so 6 and 9 never meet (max |angle| 45)
SPIN_REACH = 1.13             # the ink box (80 % of the sprite's side) turned 45 deg reaches 1.13 half sides


def _class_name(digit: int, family: str) -> str:
    return f"{assets.DIGIT_WORDS[digit].capitalize()}{family}"


# Class name -> (digit identity, motion family); UCF-101 numbers its classes alphabetically.
CLASSES = {_class_name(d, f): (d, f) for d in range(10) for f in FAMILIES}
ALL_CLASSES = sorted(CLASSES)


@dataclass(frozen=True)
class ClipLook:
    """The appearance draws of one clip (no pixels yet): what the sprite and the scene look like."""
    scene: scenes.Scene
    tile: int            # photo tile the background is cropped from
    color: tuple         # sprite fill RGB
    digit_index: int     # into assets.digit_images(), of the class's digit identity
    size_frac: float     # sprite side / frame's short side
    tilt: float          # degrees counter-clockwise


def class_names(scale: SuiteScale) -> list[str]:
    return limit_classes(ALL_CLASSES, scale.ucf.class_limit)


def clip_name(class_name: str, group: int, clip: int) -> str:
    return f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def test_groups(split: int) -> range:
    first = UCF_TEST_GROUPS_PER_SPLIT * (split - 1) + 1
    return range(first, first + UCF_TEST_GROUPS_PER_SPLIT)


def plan(scale: SuiteScale, seed: int) -> list[SampleJob]:
    jobs = []
    for label, name in enumerate(class_names(scale)):
        for group in range(1, scale.ucf.groups + 1):
            split = "test" if group in test_groups(1) else "train"
            for clip in range(1, scale.ucf.clips_per_group + 1):
                jobs.append(SampleJob(f"UCF-101/{name}/{clip_name(name, group, clip)}", split, label,
                                      (ALL_CLASSES.index(name), group, clip), (group, clip)))
    return jobs


@functools.lru_cache(maxsize=None)
def digit_pool(groups: int, group: int, digit: int) -> np.ndarray:
    """Digit images of identity `digit` that group `group` (1-based) owns."""
    images, labels = assets.digit_images()
    members = assets.pool_members(len(images), groups, group - 1)
    chosen = members[labels[members] == digit]
    if not len(chosen):
        raise ValueError(f"synth-ucf: {groups} groups leave group {group} no image of digit {digit}")
    return chosen


def clip_look(job: SampleJob, scale: SuiteScale, seed: int) -> ClipLook:
    """The clip's appearance. Scene, tile and colour come first from the clip's own stream and are drawn
    the same way for every class; the class only picks which digit identity the image is drawn from."""
    class_index, group, clip = job.stream
    groups = scale.ucf.groups
    rng = sample_rng(seed, CODE, 1, class_index, group, clip)
    scene = scenes.random_scene(rng)
    tile = int(rng.choice(assets.pool_members(len(assets.photo_tiles()), groups, group - 1)))
    color = tuple(float(c) for c in assets.random_color(rng))
    size_frac = float(rng.uniform(*SPRITE_SIZE))
    tilt = float(rng.uniform(-TILT_DEG, TILT_DEG))
    digit = CLASSES[ALL_CLASSES[class_index]][0]
    digit_index = int(rng.choice(digit_pool(groups, group, digit)))
    return ClipLook(scene, tile, color, digit_index, size_frac, tilt)


def _slide(rng, t, width: int, height: int, half: float, tilt: float):
    """A straight line of random direction and length; the sprite stays whole in frame throughout."""
    heading = rng.uniform(0.0, 2 * np.pi)
    length = rng.uniform(*SLIDE_LENGTH) * min(width, height)
    dx, dy = length * np.cos(heading), -length * np.sin(heading)  # y grows downwards
    x0 = rng.uniform(half - min(0.0, dx), width - half - max(0.0, dx))
    y0 = rng.uniform(half - min(0.0, dy), height - half - max(0.0, dy))
    return x0 + dx * t, y0 + dy * t, np.full_like(t, tilt)


def _spin(rng, t, width: int, height: int, half: float, tilt: float):
    """Rotation in place, either sense, centred on the tilt so |angle| <= TILT_DEG + SPIN_DEG[1] / 2."""
    sense = 1.0 if rng.random() < 0.5 else -1.0
    total = rng.uniform(*SPIN_DEG)
    reach = half * SPIN_REACH
    cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
    return np.full_like(t, cx), np.full_like(t, cy), tilt + sense * total * (t - 0.5)


# Motion family -> motion(rng, t [T], width, height, half side px, tilt) -> (x px, y px, angle_deg_ccw).
MOTIONS = {"Slide": _slide, "Spin": _spin}


def sprite_image(look: ClipLook):
    """The clip's sprite: its digit image filled with one colour, with the dark rim `sprites` draws."""
    choice = sprites.SpriteChoice(digit_index=look.digit_index, fill_kind="solid", color=look.color,
                                  second_color=look.color, period=8, vertical=False, tile_index=look.tile,
                                  texture_seed=0)
    return sprites.draw_sprite(choice)


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_video(render_frames(job, scale, seed), media.UCF_AVI)


def render_frames(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one clip."""
    class_index, group, clip = job.stream
    size = scale.ucf
    look = clip_look(job, scale, seed)
    rng = sample_rng(seed, CODE, 2, class_index, group, clip)  # background crop, path, noise
    background = scenes.render_background(rng, look.tile, size.width, size.height, look.scene)
    sprite_px = look.size_frac * min(size.width, size.height)
    family = CLASSES[ALL_CLASSES[class_index]][1]
    x, y, angle = MOTIONS[family](rng, unit_time(size.frames), size.width, size.height, sprite_px / 2, look.tilt)
    sprite = sprite_image(look)
    backdrop = draw.to_image(background)
    frames = []
    for step in range(size.frames):
        frame = backdrop.copy()
        draw.place(frame, sprite, x[step], y[step], sprite_px, angle[step])
        frames.append(np.asarray(frame))
    return draw.with_noise(np.stack(frames), rng, scale.noise_std)


def write_metadata(root: Path, jobs: list[SampleJob], scale: SuiteScale, seed: int) -> None:
    names = class_names(scale)
    lists = root / "ucfTrainTestlist"
    media.write_text(lists / "classInd.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    for split in range(1, UCF_NUM_SPLITS + 1):
        held_out = test_groups(split)
        train_lines, test_lines = [], []
        for job in jobs:
            relative = job.relpath.removeprefix("UCF-101/")
            if job.extra[0] in held_out:
                test_lines.append(f"{relative}\n")
            else:
                train_lines.append(f"{relative} {job.label + 1}\n")
        media.write_text(lists / f"trainlist{split:02d}.txt", "".join(train_lines))
        media.write_text(lists / f"testlist{split:02d}.txt", "".join(test_lines))
