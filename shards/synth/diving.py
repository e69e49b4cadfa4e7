"""synth-diving: 48 dive classes = takeoff x somersaults x twists, in the Diving-48 V2 layout.

Stands in for Diving-48 (fine-grained motion). A diver (an elongated body with a head and a coloured
chest stripe that shows which way it faces) stands on a platform, takes off, flies a parabola and enters
the water. The class composes three primitives, each differing only a little between its values:
- takeoff (4): Forward (faces the water, rotates clockwise), Back (faces the board, clockwise),
  Reverse (faces the water, counter-clockwise), Inward (faces the board, counter-clockwise);
- somersaults (3): 1.5, 2 or 2.5 turns during the flight;
- twists (4): 0, 0.5, 1 or 1.5 turns about the long axis (the body narrows and the stripe changes side).
The flight position (the vocabulary's fourth word) follows from the other two, as a body length.
Random per clip: diver colours and texture, platform height, flight timing, length and height, the
background region and its grade, a small camera offset, and noise; the appearance is fixed within a clip.

Layout written:
    rgb/<vid_name>.mp4                  H.264 in MP4, 25 fps; vid_name like "aB3_x-Z9qLk_01234"
    Diving48_V2_train.json, Diving48_V2_test.json
        [{"vid_name": ..., "label": 7, "start_frame": 0, "end_frame": T-1}]
    Diving48_vocab.json                 [["Forward", "15som", "NoTwis", "PIKE"], ...] in label order
Train and test use disjoint photo tiles for backgrounds and textures (assets.HELD_OUT_POOLS).
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import assets, draw, media, scenes
from .jobs import SampleJob, limit_classes, sample_rng
from .scales import SuiteScale

NAME = "synth-diving"
CODE = 4
# takeoff -> (faces the water at takeoff, rotation sign: -1 clockwise on screen in PIL's ccw angles)
TAKEOFFS = {"Forward": (True, -1.0), "Back": (False, -1.0), "Reverse": (True, 1.0), "Inward": (False, 1.0)}
SOMERSAULTS = {"15som": 1.5, "2som": 2.0, "25som": 2.5}
TWISTS = {"NoTwis": 0.0, "05Twis": 0.5, "1Twis": 1.0, "15Twis": 1.5}
BODY_LENGTH = {"PIKE": 0.8, "TUCK": 0.62, "FREE": 1.0}  # fraction of the diver's full height mid-flight
DIVER_HEIGHT = 0.4   # fraction of the frame's short side
SPRITE_PX = 48
NAME_ALPHABET = string.ascii_letters + string.digits + "-_"


def flight_position(somersaults: float, twists: float) -> str:
    if twists > 0:
        return "FREE"
    return "TUCK" if somersaults > 2.0 else "PIKE"


def vocabulary() -> list[list[str]]:
    """All 48 classes in label order: label = 12 * takeoff + 4 * somersault + twist."""
    return [[takeoff, som, twist, flight_position(SOMERSAULTS[som], TWISTS[twist])]
            for takeoff in TAKEOFFS for som in SOMERSAULTS for twist in TWISTS]


def class_names(scale: SuiteScale) -> list[str]:
    return limit_classes([" ".join(words) for words in vocabulary()], scale.diving.class_limit)


def _video_names(rng: np.random.Generator, count: int) -> list[str]:
    """Diving-48-style names ("<11-char video id>_<5-digit clip>"), unique."""
    names, seen = [], set()
    while len(names) < count:
        video = "".join(NAME_ALPHABET[i] for i in rng.integers(len(NAME_ALPHABET), size=11))
        name = f"{video}_{int(rng.integers(100000)):05d}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def plan(scale: SuiteScale, seed: int) -> list[SampleJob]:
    slots = [(label, split, index)
             for label in range(len(class_names(scale)))
             for split, count in (("train", scale.diving.train_per_class), ("test", scale.diving.test_per_class))
             for index in range(count)]
    names = _video_names(sample_rng(seed, CODE, 99), len(slots))
    return [SampleJob(f"rgb/{name}.mp4", split, label, (label, 0 if split == "train" else 1, index), (name,))
            for (label, split, index), name in zip(slots, names)]


def _diver_sprite(rng, tiles: np.ndarray) -> Image.Image:
    """RGBA diver standing upright and facing right, SPRITE_PX square: body, head, chest stripe."""
    size = SPRITE_PX
    body = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(body)
    pen.ellipse((size * 0.36, size * 0.22, size * 0.64, size * 0.98), fill=255)
    alpha = np.asarray(body, np.float32) / 255.0
    head = Image.new("L", (size, size), 0)
    ImageDraw.Draw(head).ellipse((size * 0.37, size * 0.0, size * 0.63, size * 0.26), fill=255)
    head_alpha = np.asarray(head, np.float32) / 255.0
    stripe = np.zeros_like(alpha)
    stripe[int(size * 0.3):int(size * 0.75), int(size * 0.53):int(size * 0.66)] = 1.0
    stripe *= alpha
    if rng.random() < 0.5:
        fill = draw.texture_fill(rng, int(rng.choice(tiles)), size)
    else:
        fill = draw.solid_fill(assets.random_color(rng), size)
    fill = np.where(head_alpha[..., None] > 0.5, assets.random_color(rng), fill)
    fill = np.where(stripe[..., None] > 0.5, assets.hsv_color(rng.uniform(0, 1), 1.0, 1.0), fill)
    rim = np.clip(draw.dilate(np.maximum(alpha, head_alpha), 1) - np.maximum(alpha, head_alpha), 0, 1)
    fill = fill * (1.0 - 0.8 * rim[..., None])
    return draw.sprite_from(np.maximum(np.maximum(alpha, head_alpha), rim), fill)


def render_frames(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one dive."""
    size = scale.diving
    frames_total, width, height = size.frames, size.width, size.height
    takeoff, som_name, twist_name, flight = vocabulary()[job.label]
    faces_water, rotation_sign = TAKEOFFS[takeoff]
    somersaults, twists = SOMERSAULTS[som_name], TWISTS[twist_name]
    train = job.split == "train"
    tiles = assets.split_tile_indices(train)
    rng = sample_rng(seed, CODE, *job.stream)

    diver = _diver_sprite(rng, tiles)
    background = scenes.render_background(rng, int(rng.choice(tiles)), width, height, scenes.random_scene(rng))
    shift = rng.uniform(-0.04, 0.04, 2)                       # camera offset, unit square
    platform_top = rng.uniform(0.3, 0.4) + shift[1]
    water_line = rng.uniform(0.8, 0.86) + shift[1]
    edge = rng.uniform(0.2, 0.26) + shift[0]
    backdrop = draw.to_image(background)
    pen = ImageDraw.Draw(backdrop)
    pen.rectangle((0, platform_top * height, edge * width, (platform_top + 0.05) * height), fill=(150, 150, 140))
    water = np.asarray(assets.hsv_color(rng.uniform(0.52, 0.6), 0.7, rng.uniform(0.55, 0.8)))

    diver_px = DIVER_HEIGHT * min(width, height) * rng.uniform(0.9, 1.1)
    takeoff_frame = int(round(frames_total * rng.uniform(0.08, 0.18)))
    flight_frames = max(3, int(round(frames_total * rng.uniform(0.55, 0.68))))
    distance, apex = rng.uniform(0.3, 0.45), rng.uniform(0.1, 0.18)
    start_x = edge - rng.uniform(0.04, 0.08)
    start_y = platform_top - 0.5 * diver_px / height
    end_y = water_line + 0.1
    tuck = BODY_LENGTH[flight]
    splash_seed = int(rng.integers(2**31))

    frames = []
    for step in range(frames_total):
        frame = backdrop.copy()
        tau = (step - takeoff_frame) / flight_frames
        if tau < 0:  # standing, bouncing on the board before takeoff
            bounce = 0.02 * abs(np.sin(np.pi * step / max(1, takeoff_frame) * 2))
            draw.place(frame, diver, start_x * width, (start_y - bounce) * height, diver_px,
                       mirror=not faces_water)
        elif tau <= 1:
            x = start_x + distance * tau
            y = start_y * (1 - tau) + end_y * tau - apex * 4 * tau * (1 - tau)
            angle = rotation_sign * 360.0 * somersaults * tau
            turn = np.cos(2 * np.pi * twists * tau)
            # the body shortens into the flight position mid-air and opens again for the entry
            length = 1.0 - (1.0 - tuck) * np.sin(np.pi * tau)
            draw.place(frame, diver, x * width, y * height, diver_px * length, angle,
                       squash_x=max(0.2, abs(turn)) / length, mirror=(turn >= 0) != faces_water)
        frame = np.asarray(frame, np.float32).copy()
        rows = slice(int(water_line * height), height)
        frame[rows] = 0.25 * frame[rows] + 0.75 * water
        if tau > 1:
            _splash(frame, np.random.default_rng([splash_seed, step]), (start_x + distance) * width,
                    water_line * height, tau - 1, diver_px)
        frames.append(frame)
    return draw.with_noise(np.stack(frames), rng, scale.noise_std)


def _splash(frame: np.ndarray, rng, x: float, y: float, age: float, diver_px: float) -> None:
    """White droplets around the entry point that fade out (in place on a float [H, W, 3] frame)."""
    strength = max(0.0, 1.0 - 2.5 * age)
    height, width = frame.shape[:2]
    for _ in range(int(12 * strength)):
        px = int(x + rng.normal(0, diver_px * 0.25))
        py = int(y - abs(rng.normal(0, diver_px * 0.3)))
        if 0 <= px < width and 0 <= py < height:
            frame[max(0, py - 1):py + 1, max(0, px - 1):px + 1] = 240.0


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_video(render_frames(job, scale, seed), media.DIVING_MP4)


def write_metadata(root: Path, jobs: list[SampleJob], scale: SuiteScale, seed: int) -> None:
    media.write_json(root / "Diving48_vocab.json", vocabulary()[:len(class_names(scale))])
    for split, file_name in (("train", "Diving48_V2_train.json"), ("test", "Diving48_V2_test.json")):
        media.write_json(root / file_name, [
            {"vid_name": job.extra[0], "label": job.label, "start_frame": 0, "end_frame": scale.diving.frames - 1}
            for job in jobs if job.split == split])
