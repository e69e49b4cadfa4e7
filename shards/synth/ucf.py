"""synth-ucf: 20 camera-motion classes (8 pan directions x 2 speeds, zoom in/out, roll left/right), in the
UCF-101 on-disk layout.

Stands in for UCF-101. The label is a clip-global motion: how the camera moves over a scene, the kind of
factor a video JEPA can learn first because every token's future follows from its context (issue 23,
docs/learning.md "Calibration"). Object identity is left to synth-in (the ImageNet stand-in): here the
scene (a colour-graded photo crop with two or three handwritten digits lying in it) is drawn per clip and
never looks at the class, and neither do the colours, the sprites, the start of the camera, the exact
heading (±8° around the class's direction), the exact speed (inside the class's band) or the noise.

The camera looks at a world canvas three times the frame's size; each frame is the affine view of the
canvas at the camera's centre, zoom and roll at that time (PIL's bilinear affine transform), so panning,
zooming and rolling are one rendering path.

Layout written (as UCF-101 publishes it; class folders and classInd in alphabetical order):
    UCF-101/<Class>/v_<Class>_gGG_cCC.avi     MPEG-4 Part 2 in AVI, 25 fps
    ucfTrainTestlist/classInd.txt             "1 PanEastFast" ... (1-based)
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
from PIL import Image

from . import assets, draw, media, scenes, sprites
from .jobs import SampleJob, limit_classes, sample_rng, unit_time
from .scales import UCF_NUM_SPLITS, UCF_TEST_GROUPS_PER_SPLIT, SuiteScale

NAME = "synth-ucf"
CODE = 1
CANVAS = 3                      # world canvas side / frame side
HEADINGS = {"East": 0, "NorthEast": 45, "North": 90, "NorthWest": 135,
            "West": 180, "SouthWest": 225, "South": 270, "SouthEast": 315}  # degrees counter-clockwise
HEADING_JITTER = 8.0            # |heading - class heading| at most, degrees
PAN_SPEEDS = {"Slow": (0.20, 0.32), "Fast": (0.45, 0.60)}  # pan over the clip / frame's short side
ZOOM = (1.35, 1.6)              # zoom at the far end of a zoom (1 at the near end)
ROLL_DEG = (25.0, 40.0)         # roll over the whole clip
SPRITES_PER_SCENE = (6, 10)     # digits lying in the world canvas (6 to 9)
SPRITE_SIZE = (0.25, 0.40)      # sprite side / frame's short side


@dataclass(frozen=True)
class CameraMotion:
    """What one class does with the camera: a pan (heading, speed band), a zoom or a roll."""
    kind: str                   # "pan", "zoom" or "roll"
    heading: float = 0.0        # pan: degrees counter-clockwise from east (the camera's direction)
    speed: tuple = (0.0, 0.0)   # pan: path over the clip / frame's short side, a band
    sense: float = 1.0          # zoom: +1 in, -1 out; roll: +1 counter-clockwise (left), -1 right


def _classes() -> dict[str, CameraMotion]:
    classes = {f"Pan{name}{speed}": CameraMotion("pan", float(deg), band)
               for name, deg in HEADINGS.items() for speed, band in PAN_SPEEDS.items()}
    classes.update({"ZoomIn": CameraMotion("zoom", sense=1.0), "ZoomOut": CameraMotion("zoom", sense=-1.0),
                    "RollLeft": CameraMotion("roll", sense=1.0), "RollRight": CameraMotion("roll", sense=-1.0)})
    return classes


# Class name -> its camera motion; UCF-101 numbers its classes alphabetically.
CLASSES = _classes()
ALL_CLASSES = sorted(CLASSES)


@dataclass(frozen=True)
class ClipLook:
    """The appearance draws of one clip (no pixels yet): the scene and the digits lying in it."""
    scene: scenes.Scene
    tiles: tuple                # photo tiles of the world's CANVAS x CANVAS mosaic, row-major
    digit_indices: tuple        # into assets.digit_images(), any identity
    colors: tuple               # fill RGB per digit
    size_fracs: tuple           # sprite side / frame's short side, per digit
    positions: tuple            # (x, y) in [0, 1]² of the canvas, per digit
    tilts: tuple                # degrees counter-clockwise, per digit


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
def digit_pool(groups: int, group: int) -> np.ndarray:
    """Digit images (every identity) that group `group` (1-based) owns."""
    images, _ = assets.digit_images()
    return assets.pool_members(len(images), groups, group - 1)


def clip_look(job: SampleJob, scale: SuiteScale, seed: int) -> ClipLook:
    """The clip's appearance, drawn the same way for every class from the clip's own stream."""
    class_index, group, clip = job.stream
    groups = scale.ucf.groups
    rng = sample_rng(seed, CODE, 1, class_index, group, clip)
    scene = scenes.random_scene(rng)
    tile_pool = assets.pool_members(len(assets.photo_tiles()), groups, group - 1)
    tiles = tuple(int(rng.choice(tile_pool)) for _ in range(CANVAS * CANVAS))
    count = int(rng.integers(*SPRITES_PER_SCENE))
    pool = digit_pool(groups, group)
    return ClipLook(
        scene, tiles,
        digit_indices=tuple(int(rng.choice(pool)) for _ in range(count)),
        colors=tuple(tuple(float(c) for c in assets.random_color(rng)) for _ in range(count)),
        size_fracs=tuple(float(rng.uniform(*SPRITE_SIZE)) for _ in range(count)),
        positions=tuple((float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95))) for _ in range(count)),
        tilts=tuple(float(rng.uniform(-30.0, 30.0)) for _ in range(count)),
    )


def camera_path(motion: CameraMotion, rng: np.random.Generator, t: np.ndarray, width: int, height: int):
    """The camera over time t [T] in [0, 1]: (centre x, centre y) in canvas px, zoom, roll in degrees.

    The canvas is CANVAS times the frame; every path keeps the whole view inside it."""
    cw, ch = CANVAS * width, CANVAS * height
    short = min(width, height)
    ones = np.ones_like(t)
    if motion.kind == "pan":
        heading = np.deg2rad(motion.heading + rng.uniform(-HEADING_JITTER, HEADING_JITTER))
        length = rng.uniform(*motion.speed) * short
        dx, dy = length * np.cos(heading), -length * np.sin(heading)  # y grows downwards
        half_w, half_h = width / 2 + 1, height / 2 + 1
        x0 = rng.uniform(half_w - min(0.0, dx), cw - half_w - max(0.0, dx))
        y0 = rng.uniform(half_h - min(0.0, dy), ch - half_h - max(0.0, dy))
        return x0 + dx * t, y0 + dy * t, ones, 0.0 * t
    # Zoom and roll turn about a centre near the canvas's middle; the view's corners stay inside the canvas.
    cx, cy = cw / 2 + rng.uniform(-0.25, 0.25) * width, ch / 2 + rng.uniform(-0.25, 0.25) * height
    roll0 = rng.uniform(-10.0, 10.0)
    if motion.kind == "zoom":
        far = rng.uniform(*ZOOM)
        zoom = 1.0 + (far - 1.0) * (t if motion.sense > 0 else 1.0 - t)
        return cx * ones, cy * ones, zoom, roll0 * ones
    total = rng.uniform(*ROLL_DEG) * motion.sense
    return cx * ones, cy * ones, ones, roll0 + total * (t - 0.5)


def world_canvas(look: ClipLook, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """The scene the camera moves over: a mosaic of photo crops at about their own resolution (a single
    crop blown up to the canvas would leave flat regions where no motion can be seen), colour graded as
    one scene, with the clip's digits lying in it."""
    cw, ch = CANVAS * width, CANVAS * height
    cells = [assets.random_crop(rng, tile, width, height) for tile in look.tiles]  # [H, W, 3] each
    rows = [np.concatenate(cells[r * CANVAS:(r + 1) * CANVAS], axis=1) for r in range(CANVAS)]
    jitter = rng.uniform(0.9, 1.1, 3).astype(np.float32)  # no two clips share an exact grade
    graded = assets.tint(np.concatenate(rows, axis=0), np.asarray(look.scene.gain, np.float32) * jitter,
                         np.asarray(look.scene.offset, np.float32), look.scene.contrast)
    canvas = draw.to_image(graded)
    short = min(width, height)
    for index, color, size, (px, py), tilt in zip(look.digit_indices, look.colors, look.size_fracs,
                                                  look.positions, look.tilts):
        choice = sprites.SpriteChoice(digit_index=index, fill_kind="solid", color=color, second_color=color,
                                      period=8, vertical=False, tile_index=look.tiles[0], texture_seed=0)
        draw.place(canvas, sprites.draw_sprite(choice), px * cw, py * ch, size * short, tilt)
    return canvas


def camera_view(canvas: Image.Image, cx: float, cy: float, zoom: float, roll_deg: float,
                width: int, height: int) -> np.ndarray:
    """[height, width, 3] uint8: the canvas seen by a camera centred at (cx, cy), zoomed, rolled."""
    # PIL's affine maps each output pixel (u, v) to the input point (a·u + b·v + c, d·u + e·v + f).
    angle = np.deg2rad(roll_deg)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    u0, v0 = width / 2.0, height / 2.0
    a, b, d, e = cos, sin, -sin, cos
    c = cx - a * u0 - b * v0
    f = cy - d * u0 - e * v0
    view = canvas.transform((width, height), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    return np.asarray(view)


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_video(render_frames(job, scale, seed), media.UCF_AVI)


def render_frames(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one clip."""
    class_index, group, clip = job.stream
    size = scale.ucf
    look = clip_look(job, scale, seed)
    rng = sample_rng(seed, CODE, 2, class_index, group, clip)  # background crop, camera path, noise
    canvas = world_canvas(look, rng, size.width, size.height)
    motion = CLASSES[ALL_CLASSES[class_index]]
    xs, ys, zooms, rolls = camera_path(motion, rng, unit_time(size.frames), size.width, size.height)
    frames = [camera_view(canvas, x, y, z, r, size.width, size.height) for x, y, z, r in zip(xs, ys, zooms, rolls)]
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
