"""synth-ucf: 20 action classes, each a motion pattern of a sprite, in the UCF-101 on-disk layout.

Stands in for UCF-101 (actions with scene context). The label is the motion pattern; the background
*scene* is correlated with it (each class prefers one of ten scenes half of the time, two classes share a
preferred scene) but never decides it. Random per group: the sprite (digit image and fill), the photo
region, the scene draw. Random per clip: speed within a band, start position, direction jitter, noise.

Layout written (as UCF-101 publishes it; class folders and classInd in alphabetical order):
    UCF-101/<Class>/v_<Class>_gGG_cCC.avi     MPEG-4 Part 2 in AVI, 25 fps
    ucfTrainTestlist/classInd.txt             "1 BounceFloor" ... (1-based)
    ucfTrainTestlist/trainlist0{1,2,3}.txt    "<Class>/v_<Class>_g08_c01.avi 1"
    ucfTrainTestlist/testlist0{1,2,3}.txt     "<Class>/v_<Class>_g01_c01.avi"
Groups are disjoint sprite instances and photo regions (group g uses digit images and photo tiles
with index % groups == g-1), and split k tests on groups 7(k-1)+1 .. 7k, as in UCF-101.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import assets, draw, media, scenes, sprites
from .jobs import SampleJob, limit_classes, sample_rng, unit_time
from .scales import UCF_NUM_SPLITS, UCF_TEST_GROUPS_PER_SPLIT, SuiteScale

NAME = "synth-ucf"
CODE = 1
SPRITE_SIZE = 0.34         # sprite side as a fraction of the frame's short side
PREFERRED_SCENE_P = 0.5    # chance a group uses its class's preferred scene instead of a random one
MARGIN = 0.18              # unit-square margin the sprite centre stays inside on straight paths


def _speed(rng) -> float:
    return float(rng.uniform(0.75, 1.25))


def _slide(direction_deg: float):
    def motion(rng, t):
        heading = np.deg2rad(direction_deg + rng.uniform(-12, 12))
        length = 0.5 * _speed(rng)
        step = np.array([np.cos(heading), -np.sin(heading)]) * length  # y grows downwards
        start = [rng.uniform(MARGIN - min(0.0, d), 1 - MARGIN - max(0.0, d)) for d in step]
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        return x, y, np.full_like(t, rng.uniform(-10, 10)), np.ones_like(t)
    return motion


def _spin(sign: float):
    def motion(rng, t):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        angle = rng.uniform(0, 360) + sign * 360.0 * _speed(rng) * t
        return np.full_like(t, cx), np.full_like(t, cy), angle, np.ones_like(t)
    return motion


def _zoom(inward: bool):
    def motion(rng, t):
        cx, cy = rng.uniform(0.35, 0.65, 2)
        spread = 0.45 * _speed(rng)
        scale = 1.0 + spread * (2 * t - 1) * (1 if inward else -1)
        return np.full_like(t, cx), np.full_like(t, cy), np.full_like(t, rng.uniform(-10, 10)), scale
    return motion


def _bounce_floor(rng, t):
    bounces = 2.0 * _speed(rng)
    x = rng.uniform(0.3, 0.7) + rng.uniform(-0.15, 0.15) * t
    y = 0.78 - 0.5 * np.abs(np.sin(np.pi * bounces * t + rng.uniform(0, np.pi)))
    return x, y, np.zeros_like(t), np.ones_like(t)


def _bounce_walls(rng, t):
    travel = 1.5 * _speed(rng) * t + rng.uniform(0, 2)   # in wall-to-wall traversals
    triangle = np.abs((travel % 2.0) - 1.0)              # 0..1..0
    x = MARGIN + (1 - 2 * MARGIN) * triangle
    return x, np.full_like(t, rng.uniform(0.3, 0.7)), np.zeros_like(t), np.ones_like(t)


def _orbit(sign: float):
    def motion(rng, t):
        cx, cy = rng.uniform(0.42, 0.58, 2)
        radius = rng.uniform(0.2, 0.28)
        phase = rng.uniform(0, 2 * np.pi) + sign * 2 * np.pi * _speed(rng) * t  # sign>0: clockwise on screen
        return cx + radius * np.cos(phase), cy + radius * np.sin(phase), np.zeros_like(t), np.ones_like(t)
    return motion


def _swing(horizontal: bool):
    def motion(rng, t):
        centre = rng.uniform(0.4, 0.6)
        other = np.full_like(t, rng.uniform(0.3, 0.7))
        wave = centre + 0.25 * np.sin(2 * np.pi * 1.5 * _speed(rng) * t + rng.uniform(0, 2 * np.pi))
        return (wave, other, np.zeros_like(t), np.ones_like(t)) if horizontal else \
            (other, wave, np.zeros_like(t), np.ones_like(t))
    return motion


def _zigzag(rng, t):
    x = rng.uniform(MARGIN, 0.35) + 0.45 * t
    teeth = 3.0 * _speed(rng) * t + rng.uniform(0, 2)
    y = rng.uniform(0.35, 0.65) + 0.3 * (np.abs((teeth % 2.0) - 1.0) - 0.5)
    return x, y, np.zeros_like(t), np.ones_like(t)


def _pulse(rng, t):
    cx, cy = rng.uniform(0.35, 0.65, 2)
    scale = 1.0 + 0.35 * np.sin(2 * np.pi * 2.0 * _speed(rng) * t + rng.uniform(0, 2 * np.pi))
    return np.full_like(t, cx), np.full_like(t, cy), np.zeros_like(t), scale


def _spiral_out(rng, t):
    cx, cy = rng.uniform(0.42, 0.58, 2)
    radius = 0.03 + 0.27 * t
    sign = 1.0 if rng.random() < 0.5 else -1.0
    phase = rng.uniform(0, 2 * np.pi) + sign * 2 * np.pi * 1.2 * _speed(rng) * t
    return cx + radius * np.cos(phase), cy + radius * np.sin(phase), np.zeros_like(t), np.ones_like(t)


def _wobble(rng, t):
    cx, cy = rng.uniform(0.35, 0.65, 2)
    angle = 35.0 * np.sin(2 * np.pi * 1.5 * _speed(rng) * t + rng.uniform(0, 2 * np.pi))
    return np.full_like(t, cx), np.full_like(t, cy), angle, np.ones_like(t)


# Class name -> motion(rng, t [T]) -> (x, y, angle_deg_ccw, scale), positions in the unit square.
MOTIONS = {
    "SlideRight": _slide(0), "SlideLeft": _slide(180), "SlideUp": _slide(90), "SlideDown": _slide(270),
    "SlideUpRight": _slide(45), "SlideDownLeft": _slide(225),
    "SpinClockwise": _spin(-1.0), "SpinCounterClockwise": _spin(1.0),
    "ZoomIn": _zoom(True), "ZoomOut": _zoom(False),
    "BounceFloor": _bounce_floor, "BounceWalls": _bounce_walls,
    "OrbitClockwise": _orbit(1.0), "OrbitCounterClockwise": _orbit(-1.0),
    "SwingHorizontal": _swing(True), "SwingVertical": _swing(False),
    "Zigzag": _zigzag, "Pulse": _pulse, "SpiralOut": _spiral_out, "Wobble": _wobble,
}
ALL_CLASSES = sorted(MOTIONS)  # UCF-101 numbers its classes alphabetically


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


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_video(render_frames(job, scale, seed), media.UCF_AVI)


def render_frames(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one clip."""
    class_index, group, clip = job.stream
    size = scale.ucf
    group_rng = sample_rng(seed, CODE, 0, class_index, group)  # shared by every clip of the group
    digits = assets.pool_members(len(assets.digit_images()[0]), size.groups, group - 1)
    tiles = assets.pool_members(len(assets.photo_tiles()), size.groups, group - 1)
    sprite = sprites.draw_sprite(sprites.choose_digit_sprite(group_rng, digits, tiles))
    preferred = scenes.SCENES[class_index % len(scenes.SCENES)]
    scene = preferred if group_rng.random() < PREFERRED_SCENE_P else scenes.random_scene(group_rng)
    tile = int(group_rng.choice(tiles))

    rng = sample_rng(seed, CODE, 1, class_index, group, clip)
    background = scenes.render_background(rng, tile, size.width, size.height, scene)
    x, y, angle, zoom = MOTIONS[ALL_CLASSES[class_index]](rng, unit_time(size.frames))
    short = min(size.width, size.height)
    sprite_px = SPRITE_SIZE * short * rng.uniform(0.85, 1.15)
    backdrop = draw.to_image(background)
    frames = []
    for step in range(size.frames):
        frame = backdrop.copy()
        draw.place(frame, sprite, x[step] * size.width, y[step] * size.height,
                   sprite_px * zoom[step], angle[step])
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
