"""Real image content the synth suite draws from, and its fixed instance partition.

Appearance comes from scikit-learn's bundled data: the 1,797 handwritten 8x8 digits (`load_digits`) give
sprite shapes, and the two sample photos (`load_sample_images`) give backgrounds and textures. Both are
cut into *pools* by a fixed rule that does not depend on the seed, so held-out samples always use digit
images and photo regions that no training sample uses:

- digits: image `i` belongs to pool `i % n_pools` (train/test uses 5 pools: pool 0 is held out);
- photos: each photo is cut into square tiles; tile `j` (row-major over both photos) belongs to pool
  `j % n_pools`. A background or texture is a random crop inside one tile of the sample's pool.
"""
from __future__ import annotations

import colorsys
import functools

import numpy as np
from PIL import Image

HELD_OUT_POOLS = 5  # train/test partitions: pool 0 of 5 (20 %) is held out, pools 1-4 train
PHOTO_TILE = 80     # px side of a photo tile; 427x640 photos give 5x8 tiles each, 80 in all
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.lru_cache(maxsize=None)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """([N, 8, 8] float32 ink in [0, 1], [N] int labels) of scikit-learn's digits."""
    from sklearn.datasets import load_digits  # imported lazily: costs ~1 s, only workers need it
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def photo_tiles() -> np.ndarray:
    """[n_tiles, PHOTO_TILE, PHOTO_TILE, 3] uint8 tiles of the sample photos, row-major per photo."""
    from sklearn.datasets import load_sample_images
    tiles = []
    for photo in load_sample_images().images:  # [427, 640, 3] each
        rows, cols = photo.shape[0] // PHOTO_TILE, photo.shape[1] // PHOTO_TILE
        for r in range(rows):
            for c in range(cols):
                tiles.append(photo[r * PHOTO_TILE:(r + 1) * PHOTO_TILE, c * PHOTO_TILE:(c + 1) * PHOTO_TILE])
    return np.stack(tiles)


def pool_members(n_items: int, n_pools: int, pool: int) -> np.ndarray:
    """Indices of the items in `pool` under the fixed rule `index % n_pools`."""
    return np.arange(pool, n_items, n_pools)


def split_digit_indices(train: bool, digit: int | None = None) -> np.ndarray:
    """Digit image indices for the train or held-out side, optionally of one digit class."""
    images, labels = digit_images()
    members = np.arange(len(images))
    held_out = members % HELD_OUT_POOLS == 0
    chosen = members[~held_out] if train else members[held_out]
    if digit is not None:
        chosen = chosen[labels[chosen] == digit]
    return chosen


def split_tile_indices(train: bool) -> np.ndarray:
    members = np.arange(len(photo_tiles()))
    held_out = members % HELD_OUT_POOLS == 0
    return members[~held_out] if train else members[held_out]


def digit_alpha(index: int, size: int) -> np.ndarray:
    """[size, size] float32 alpha of digit image `index`, upscaled smoothly and given crisp strokes."""
    ink = np.pad(digit_images()[0][index], 1)  # [10, 10]: a margin so strokes never touch the edge
    big = Image.fromarray((ink * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    alpha = np.asarray(big, dtype=np.float32) / 255.0
    return np.clip((alpha - 0.2) / 0.4, 0.0, 1.0)


def random_crop(rng: np.random.Generator, tile_index: int, width: int, height: int,
                min_frac: float = 0.5) -> np.ndarray:
    """[height, width, 3] uint8: a random square-ish crop of one photo tile, resized, maybe mirrored."""
    tile = photo_tiles()[tile_index]
    side = int(rng.integers(int(PHOTO_TILE * min_frac), PHOTO_TILE + 1))
    y0 = int(rng.integers(0, PHOTO_TILE - side + 1))
    x0 = int(rng.integers(0, PHOTO_TILE - side + 1))
    crop = tile[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BILINEAR))


def hsv_color(hue: float, sat: float, val: float) -> np.ndarray:
    """[3] float32 RGB in 0..255."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255.0


def random_color(rng: np.random.Generator, hue_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    return hsv_color(rng.uniform(*hue_range), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))


def color_name(rgb: np.ndarray) -> str:
    """A coarse English name of an RGB colour (for SSv2-style filled-in labels)."""
    hue, sat, val = colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=np.float64) / 255.0))
    if val < 0.25:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.8 else "grey"
    names = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.45, "green"), (0.55, "cyan"),
             (0.72, "blue"), (0.86, "purple"), (0.96, "pink"), (1.01, "red"))
    return next(name for limit, name in names if hue < limit)


def tint(image: np.ndarray, gain: np.ndarray, offset: np.ndarray, contrast: float = 1.0) -> np.ndarray:
    """[H, W, 3] float32: a colour grade `mean + contrast*(x-mean)` per channel, times gain, plus offset."""
    x = image.astype(np.float32)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((mean + contrast * (x - mean)) * gain + offset, 0, 255)
