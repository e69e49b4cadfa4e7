"""synth-in: 100 appearance classes (digit identity x drawing style) as still JPEGs, ImageNet-100 layout.

Stands in for ImageNet-100 (appearance). Class = one of the ten digits drawn in one of ten styles; the
same digit in two styles, or two digits in one style, are different classes. Random per image: the
handwritten digit instance, the style's colours, position, scale, rotation, background photo region and
its colour grade, and noise. Some styles differ only in stroke (solid warm colour vs. bold stroke of any
colour), so the task needs shape and texture, not colour statistics alone.

Layout written:
    train/<wnid>/<wnid>_<n>.JPEG
    val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG    numbers are a seeded shuffle, as in ImageNet's val set
    Labels.json                                 {"n90000001": "zero, warm solid", ...}
Train and val use disjoint digit images and photo tiles (assets.HELD_OUT_POOLS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import assets, draw, media, scenes
from .jobs import SampleJob, limit_classes, sample_rng
from .scales import SuiteScale

NAME = "synth-in"
CODE = 3
RESOLUTION = 48   # px the styled digit is drawn at before placing
STYLES = ("warm solid", "cool solid", "outline", "bold", "photo texture", "horizontal stripes",
          "vertical stripes", "checkered", "cut-out plate", "glow")
JPEG_QUALITY = 90


def _style(rng, style: str, alpha: np.ndarray, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [S, S], fill [S, S, 3]) of one digit drawn in `style`."""
    size = alpha.shape[0]
    any_color, other = assets.random_color(rng), assets.random_color(rng)
    period = int(rng.integers(6, 12))
    if style == "warm solid":
        return alpha, draw.solid_fill(assets.random_color(rng, (-0.05, 0.12)), size)
    if style == "cool solid":
        return alpha, draw.solid_fill(assets.random_color(rng, (0.5, 0.68)), size)
    if style == "outline":
        return np.clip(draw.dilate(alpha, 1) - draw.dilate(alpha, -1), 0, 1), draw.solid_fill(any_color, size)
    if style == "bold":
        return draw.dilate(alpha, 3), draw.solid_fill(any_color, size)
    if style == "photo texture":
        return alpha, draw.texture_fill(rng, int(rng.choice(tiles)), size)
    if style == "horizontal stripes":
        return alpha, draw.stripe_fill(any_color, other, size, period, vertical=False)
    if style == "vertical stripes":
        return alpha, draw.stripe_fill(any_color, other, size, period, vertical=True)
    if style == "checkered":
        return alpha, draw.checker_fill(any_color, other, size, period)
    if style == "cut-out plate":
        plate = np.zeros_like(alpha)
        border = size // 10
        plate[border:size - border, border:size - border] = 1.0
        return plate * (1.0 - alpha), draw.solid_fill(any_color, size)
    # glow: a dark digit over a blurred halo of a bright colour
    halo = np.clip(draw.blur(draw.dilate(alpha, 3), 2.5) * 1.5, 0, 1)
    dark = any_color * 0.25
    bright = assets.hsv_color(rng.uniform(0, 1), rng.uniform(0.4, 0.8), 1.0)
    fill = np.where(alpha[..., None] > 0.5, dark, bright).astype(np.float32)
    return np.maximum(alpha, halo), fill


def wnid(label: int) -> str:
    return f"n{90000001 + label}"


def class_names(scale: SuiteScale) -> list[str]:
    """Readable names in label order: label = digit * 10 + style index."""
    names = [f"{assets.DIGIT_WORDS[digit]}, {style}" for digit in range(10) for style in STYLES]
    return limit_classes(names, scale.imagenet.class_limit)


def plan(scale: SuiteScale, seed: int) -> list[SampleJob]:
    count = len(class_names(scale))
    jobs = [SampleJob(f"train/{wnid(label)}/{wnid(label)}_{index + 1}.JPEG", "train", label, (label, 0, index))
            for label in range(count) for index in range(scale.imagenet.train_per_class)]
    val_slots = [(label, index) for label in range(count) for index in range(scale.imagenet.test_per_class)]
    numbers = sample_rng(seed, CODE, 99).permutation(len(val_slots)) + 1
    jobs += [SampleJob(f"val/{wnid(label)}/ILSVRC2012_val_{number:08d}.JPEG", "val", label, (label, 1, index))
             for (label, index), number in zip(val_slots, numbers)]
    return jobs


def render_image(job: SampleJob, scale: SuiteScale, seed: int) -> np.ndarray:
    """[H, W, 3] uint8 image of one sample."""
    size = scale.imagenet
    digit, style = divmod(job.label, len(STYLES))
    train = job.split == "train"
    tiles = assets.split_tile_indices(train)
    rng = sample_rng(seed, CODE, *job.stream)
    digit_index = int(rng.choice(assets.split_digit_indices(train, digit)))
    alpha, fill = _style(rng, STYLES[style], assets.digit_alpha(digit_index, RESOLUTION), tiles)
    background = scenes.render_background(rng, int(rng.choice(tiles)), size.width, size.height,
                                          scenes.random_scene(rng))
    frame = draw.to_image(background)
    short = min(size.width, size.height)
    side = short * rng.uniform(0.5, 0.85)
    center = [rng.uniform(side * 0.4, extent - side * 0.4) for extent in (size.width, size.height)]
    draw.place(frame, draw.sprite_from(alpha, fill), center[0], center[1], side, rng.uniform(-15, 15),
               squash_x=rng.uniform(0.85, 1.15))
    return draw.with_noise(np.asarray(frame), rng, scale.noise_std)


def render(job: SampleJob, scale: SuiteScale, seed: int) -> bytes:
    return media.encode_jpeg(render_image(job, scale, seed), JPEG_QUALITY)


def write_metadata(root: Path, jobs: list[SampleJob], scale: SuiteScale, seed: int) -> None:
    media.write_json(root / "Labels.json", {wnid(i): name for i, name in enumerate(class_names(scale))})
