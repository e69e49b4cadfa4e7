"""synth-ssv2: 16 temporal-relation classes of two objects, in the Something-Something V2 layout.

Stands in for SSv2 (temporal reasoning). Classes come in eight pairs whose frames have the same
distribution and differ only in order (A approaches B / moves away from B, enters / leaves the view,
spins then moves / moves then spins, ...), so a bag-of-frames model cannot tell the two members of a
pair apart. All appearance is random per video: both sprites, the photo region, its colour grade, the
scale and position of the layout, the start and end of the action, and the noise.

Layout written:
    20bn-something-something-v2/<id>.webm    VP9 in WebM, 12 fps; ids are a seeded shuffle of 1..N
    labels/labels.json                       {"Moving something closer to something": "0", ...}
    labels/train.json, labels/validation.json
        [{"id": "17", "label": "Moving a red three closer to a striped seven",
          "template": "Moving [something] closer to [something]", "placeholders": ["a red three", ...]}]
Train and validation use disjoint digit images and photo tiles (assets.HELD_OUT_POOLS).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import assets, draw, media, scenes, sprites
from .jobs import SampleJob, limit_classes, sample_rng, unit_time
from .scales import SuiteScale

NAME = "synth-ssv2"
CODE = 2
VIDEO_DIR = "20bn-something-something-v2"
OBJECT_SIZE = 0.3  # sprite side as a fraction of the frame's short side
EDGE = 0.14        # unit-square margin object centres keep when inside the view


@dataclass
class Tracks:
    """Per-frame layout of one video, unit-square coordinates, y down. Arrays are [T]."""
    a_xy: np.ndarray             # [T, 2] centre of object A (the one the template names first)
    b_xy: np.ndarray             # [T, 2] centre of object B
    a_angle: np.ndarray          # [T] degrees, counter-clockwise
    zoom: np.ndarray             # [T] camera zoom (1 = whole frame)
    b_on_top: bool = False       # B drawn over A (covering)
    b_size: float = 1.0          # B's size relative to A


def _progress(rng, t):
    """Eased 0->1 over a random window [t0, t1]; t0 and 1-t1 share one distribution, so reversing
    time maps the distribution of windows onto itself."""
    start, end = rng.uniform(0.0, 0.25), 1.0 - rng.uniform(0.0, 0.25)
    u = np.clip((t - start) / (end - start), 0.0, 1.0)
    return u * u * (3 - 2 * u)


def _inside(rng, n=1):
    return rng.uniform(0.25, 0.75, (n, 2)) if n > 1 else rng.uniform(0.25, 0.75, 2)


def _heading_within(rng, origin, distance):
    """A unit direction such that origin + distance * direction stays inside the view."""
    for _ in range(64):
        theta = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(theta), np.sin(theta)])
        end = origin + distance * direction
        if np.all(end > EDGE) and np.all(end < 1 - EDGE):
            return direction
    return (0.5 - origin) / (np.linalg.norm(0.5 - origin) + 1e-9)


def _still(t, xy):
    return np.repeat(np.asarray(xy, np.float64)[None], len(t), axis=0)


def _line(p, start, end):
    return start[None] + p[:, None] * (np.asarray(end) - np.asarray(start))[None]


def _approach(rng, t):
    """A moves from far to near B; reversed in time it is "away from"."""
    b = _inside(rng)
    far, near = rng.uniform(0.4, 0.55), rng.uniform(0.2, 0.26)
    direction = _heading_within(rng, b, far)
    a = _line(_progress(rng, t), b + far * direction, b + near * direction)
    return Tracks(a, _still(t, b), np.zeros_like(t), np.ones_like(t))


def _slide(axis: int, sign: float):
    def tracks(rng, t):
        length = rng.uniform(0.4, 0.6)
        start = rng.uniform(EDGE, 1 - EDGE, 2)
        start[axis] = rng.uniform(EDGE, 1 - EDGE - length) if sign > 0 else rng.uniform(EDGE + length, 1 - EDGE)
        end = start.copy()
        end[axis] += sign * length
        return Tracks(_line(_progress(rng, t), start, end), _still(t, _inside(rng)), np.zeros_like(t),
                      np.ones_like(t))
    return tracks


def _enter(rng, t):
    """A comes in from beyond a random edge and stops inside; reversed it leaves the view."""
    rest = rng.uniform(0.3, 0.7, 2)
    edge = int(rng.integers(4))
    outside = rest.copy()
    outside[edge // 2] = -0.25 if edge % 2 == 0 else 1.25
    a = _line(_progress(rng, t), outside, rest)
    return Tracks(a, _still(t, _inside(rng)), np.zeros_like(t), np.ones_like(t))


def _cover(rng, t):
    """B (larger, on top) moves from far onto A and rests there; reversed it uncovers A."""
    a = _inside(rng)
    far = rng.uniform(0.4, 0.55)
    direction = _heading_within(rng, a, far)
    b = _line(_progress(rng, t), a + far * direction, a + rng.normal(0, 0.02, 2))
    return Tracks(_still(t, a), b, np.zeros_like(t), np.ones_like(t), b_on_top=True, b_size=1.35)


def _together(rng, t):
    """A and B both move towards their midpoint; reversed they move apart."""
    middle = rng.uniform(0.4, 0.6, 2)
    far, near = rng.uniform(0.26, 0.34), rng.uniform(0.1, 0.13)
    direction = _heading_within(rng, middle, far)
    p = _progress(rng, t)
    a = _line(p, middle + far * direction, middle + near * direction)
    b = _line(p, middle - far * direction, middle - near * direction)
    return Tracks(a, b, np.zeros_like(t), np.ones_like(t))


def _camera_in(rng, t):
    """The camera zooms from the whole view to A; reversed it zooms out."""
    a, b = _inside(rng), _inside(rng)
    zoom = 1.0 + rng.uniform(0.5, 0.8) * _progress(rng, t)
    return Tracks(_still(t, a), _still(t, b), np.zeros_like(t), zoom)


def _spin_then_move(rng, t):
    """First A spins in place, then it slides; reversed it slides first, then spins."""
    start = _inside(rng)
    length = rng.uniform(0.3, 0.45)
    end = start + length * _heading_within(rng, start, length)
    p = _progress(rng, t)
    spin_phase, move_phase = np.clip(2 * p, 0, 1), np.clip(2 * p - 1, 0, 1)
    turn = (1 if rng.random() < 0.5 else -1) * rng.uniform(270, 450)
    angle = rng.uniform(-15, 15) + turn * spin_phase
    return Tracks(_line(move_phase, start, end), _still(t, _inside(rng)), angle, np.ones_like(t))


def _reversed(make):
    def tracks(rng, t):
        forward = make(rng, t)
        return Tracks(forward.a_xy[::-1].copy(), forward.b_xy[::-1].copy(), forward.a_angle[::-1].copy(),
                      forward.zoom[::-1].copy(), forward.b_on_top, forward.b_size)
    return tracks


# Template -> tracks(rng, t [T]). Consecutive entries are time-reversed pairs.
TEMPLATES = {
    "Moving [something] closer to [something]": _approach,
    "Moving [something] away from [something]": _reversed(_approach),
    "Pushing [something] from left to right": _slide(0, 1.0),
    "Pushing [something] from right to left": _slide(0, -1.0),
    "Lifting [something] up": _slide(1, -1.0),
    "Putting [something] down": _slide(1, 1.0),
    "Putting [something] into view": _enter,
    "Taking [something] out of view": _reversed(_enter),
    "Covering [something] with [something]": _cover,
    "Uncovering [something] from under [something]": _reversed(_cover),
    "Moving [something] and [something] closer to each other": _together,
    "Moving [something] and [something] away from each other": _reversed(_together),
    "Approaching [something] with your camera": _camera_in,
    "Moving away from [something] with your camera": _reversed(_camera_in),
    "Spinning [something] and then moving it": _spin_then_move,
    "Moving [something] and then spinning it": _reversed(_spin_then_move),
}
ALL_TEMPLATES = list(TEMPLATES)


def label_key(template: str) -> str:
    """SSv2's labels.json keys are the templates with the brackets dropped."""
    return template.replace("[", "").replace("]", "")


def class_names(scale: SuiteScale) -> list[str]:
    return [label_key(t) for t in limit_classes(ALL_TEMPLATES, scale.ssv2.class_limit)]


def plan(scale: SuiteScale, seed: int) -> list[SampleJob]:
    templates = limit_classes(ALL_TEMPLATES, scale.ssv2.class_limit)
    slots = [(label, split, index)
             for label in range(len(templates))
             for split, count in (("train", scale.ssv2.train_per_class), ("val", scale.ssv2.test_per_class))
             for index in range(count)]
    # Like SSv2, ids do not reveal the class or the split.
    ids = sample_rng(seed, CODE, 99).permutation(len(slots)) + 1
    return [SampleJob(f"{VIDEO_DIR}/{video_id}.webm", split, label,
                      (label, 0 if split == "train" else 1, index), (int(video_id),))
            for (label, split, index), video_id in zip(slots, ids)]


def _choices(job: SampleJob, seed: int):
    train = job.split == "train"
    digits, tiles = assets.split_digit_indices(train), assets.split_tile_indices(train)
    rng = sample_rng(seed, CODE, 0, *job.stream)
    return rng, sprites.choose_digit_sprite(rng, digits, tiles), sprites.choose_digit_sprite(rng, digits, tiles), tiles


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_video(render_frames(job, scale, seed), media.SSV2_WEBM)


def render_frames(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one video."""
    size = scale.ssv2
    rng, choice_a, choice_b, tiles = _choices(job, seed)
    sprite_a, sprite_b = sprites.draw_sprite(choice_a), sprites.draw_sprite(choice_b)
    background = scenes.render_background(rng, int(rng.choice(tiles)), size.width, size.height,
                                          scenes.random_scene(rng))
    tracks = TEMPLATES[ALL_TEMPLATES[job.label]](rng, unit_time(size.frames))
    object_px = OBJECT_SIZE * min(size.width, size.height) * rng.uniform(0.85, 1.15)
    b_angle = rng.uniform(-20, 20)
    focus = tracks.a_xy[0] * (size.width, size.height)  # the camera zooms towards A
    backdrop = draw.to_image(background)
    frames = []
    for step in range(size.frames):
        frame = backdrop.copy()
        a = (frame, sprite_a, *(tracks.a_xy[step] * (size.width, size.height)), object_px, tracks.a_angle[step])
        b = (frame, sprite_b, *(tracks.b_xy[step] * (size.width, size.height)), object_px * tracks.b_size, b_angle)
        for args in ((a, b) if tracks.b_on_top else (b, a)):
            draw.place(*args)
        frames.append(np.asarray(_zoomed(frame, tracks.zoom[step], focus)))
    return draw.with_noise(np.stack(frames), rng, scale.noise_std)


def _zoomed(frame: Image.Image, zoom: float, focus: np.ndarray) -> Image.Image:
    if zoom <= 1.0:
        return frame
    width, height = frame.size
    crop_w, crop_h = width / zoom, height / zoom
    left = float(np.clip(focus[0] - crop_w / 2, 0, width - crop_w))
    top = float(np.clip(focus[1] - crop_h / 2, 0, height - crop_h))
    return frame.resize((width, height), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def describe(job: SampleJob, seed: int) -> dict:
    """The SSv2 annotation of one video (same random stream as its frames, without drawing them)."""
    template = ALL_TEMPLATES[job.label]
    _, choice_a, choice_b, _ = _choices(job, seed)
    placeholders = [choice_a.description, choice_b.description][:template.count("[something]")]
    text = template
    for name in placeholders:
        text = text.replace("[something]", name, 1)
    text = text[0].upper() + text[1:]
    return {"id": str(job.extra[0]), "label": text, "template": template, "placeholders": placeholders}


def write_metadata(root: Path, jobs: list[SampleJob], scale: SuiteScale, seed: int) -> None:
    labels = root / "labels"
    media.write_json(labels / "labels.json", {name: str(i) for i, name in enumerate(class_names(scale))})
    for split, file_name in (("train", "train.json"), ("val", "validation.json")):
        media.write_json(labels / file_name, [describe(job, seed) for job in jobs if job.split == split])
