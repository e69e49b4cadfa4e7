"""Drawing primitives: sprites (RGBA images), their fills, placing them in a frame, and sensor noise.

All geometry is in pixels of the frame being drawn; callers convert from the unit square. Everything is
a pure function of its arguments (and of the `rng` passed in), which keeps generation deterministic.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from . import assets


def sprite_from(alpha: np.ndarray, fill: np.ndarray) -> Image.Image:
    """RGBA sprite from alpha [S, S] in [0, 1] and fill [S, S, 3] in 0..255."""
    rgba = np.concatenate([fill, alpha[..., None] * 255.0], axis=-1)
    return Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA")


def solid_fill(color: np.ndarray, size: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.float32), (size, size, 3)).copy()


def texture_fill(rng: np.random.Generator, tile_index: int, size: int) -> np.ndarray:
    """A photo crop, contrast-boosted so the texture reads against photo backgrounds."""
    return assets.tint(assets.random_crop(rng, tile_index, size, size), np.ones(3, np.float32),
                       np.zeros(3, np.float32), contrast=1.6)


def stripe_fill(color_a: np.ndarray, color_b: np.ndarray, size: int, period: int, vertical: bool,
                phase: int = 0) -> np.ndarray:
    coord = np.arange(size)
    band = ((coord + phase) // max(1, period // 2)) % 2  # [S]
    band = band[None, :] if vertical else band[:, None]
    band = np.broadcast_to(band, (size, size))[..., None]
    return np.where(band == 0, color_a, color_b).astype(np.float32)


def checker_fill(color_a: np.ndarray, color_b: np.ndarray, size: int, period: int) -> np.ndarray:
    coord = np.arange(size) // max(1, period // 2)
    cells = ((coord[:, None] + coord[None, :]) % 2)[..., None]  # [S, S, 1]
    return np.where(cells == 0, color_a, color_b).astype(np.float32)


def dilate(alpha: np.ndarray, pixels: int) -> np.ndarray:
    """Grow (pixels > 0) or shrink (pixels < 0) a stroke mask by about `pixels`."""
    if pixels == 0:
        return alpha
    size = 2 * abs(pixels) + 1
    image = Image.fromarray((alpha * 255).astype(np.uint8))
    grown = image.filter(ImageFilter.MaxFilter(size) if pixels > 0 else ImageFilter.MinFilter(size))
    return np.asarray(grown, dtype=np.float32) / 255.0


def blur(alpha: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray((np.clip(alpha, 0, 1) * 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def place(frame: Image.Image, sprite: Image.Image, center_x: float, center_y: float, size: float,
          angle: float = 0.0, squash_x: float = 1.0, mirror: bool = False) -> None:
    """Paste `sprite` into `frame` (in place): scaled so its side is `size` px (width times `squash_x`),
    optionally mirrored, rotated `angle` degrees counter-clockwise, centred at (center_x, center_y).
    Parts outside the frame are clipped."""
    width = max(1, int(round(size * abs(squash_x))))
    height = max(1, int(round(size)))
    shape = sprite.transpose(Image.FLIP_LEFT_RIGHT) if mirror else sprite
    shape = shape.resize((width, height), Image.BILINEAR)
    if angle % 360.0:
        shape = shape.rotate(angle, resample=Image.BILINEAR, expand=True)
    left = int(round(center_x - shape.width / 2.0))
    top = int(round(center_y - shape.height / 2.0))
    frame.paste(shape, (left, top), shape)


def with_noise(frames: np.ndarray, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    """uint8 frames (any shape ending in 3, e.g. [T, H, W, 3]) plus i.i.d. Gaussian pixel noise of
    `noise_std` (0..255 units), drawn for the whole stack at once (per-frame draws cost 3x more)."""
    pixels = np.asarray(frames, dtype=np.float32)
    if noise_std > 0:
        pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(noise_std)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
