"""Background scenes: a photo crop colour-graded into one of ten looks, optionally with a floor band.

A scene is a look, not a place: the photo region comes from the sample's instance pool (so held-out
samples never reuse training regions), the scene only sets the colour grade and the floor. Every part
draws scenes independently of the class, so a colour grade never tells the label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import assets


@dataclass(frozen=True)
class Scene:
    name: str
    gain: tuple          # per-channel multiplier of the graded photo
    offset: tuple        # per-channel offset (0..255 units)
    contrast: float      # 1 keeps the photo's contrast; < 1 washes it out
    floor_rgb: tuple | None  # colour of a floor band along the bottom, None for no floor
    floor_height: float = 0.0  # fraction of the frame height


SCENES: tuple[Scene, ...] = (
    Scene("daylight", (1.05, 1.05, 1.0), (10, 10, 5), 0.8, (120, 160, 80), 0.18),
    Scene("dusk", (1.1, 0.75, 0.6), (30, 5, 10), 0.7, (70, 40, 40), 0.15),
    Scene("night", (0.35, 0.4, 0.7), (0, 0, 20), 0.8, None),
    Scene("forest", (0.6, 0.95, 0.55), (0, 20, 0), 0.9, (60, 90, 40), 0.22),
    Scene("snow", (0.5, 0.5, 0.55), (120, 120, 130), 0.5, (235, 235, 245), 0.2),
    Scene("desert", (1.0, 0.85, 0.55), (40, 25, 0), 0.6, (210, 180, 120), 0.25),
    Scene("ocean", (0.45, 0.7, 1.0), (0, 20, 50), 0.7, (30, 70, 140), 0.3),
    Scene("studio", (0.3, 0.3, 0.3), (90, 90, 90), 0.4, (150, 150, 150), 0.12),
    Scene("sepia", (0.9, 0.75, 0.5), (30, 20, 0), 0.9, None),
    Scene("neon", (0.9, 0.3, 1.0), (10, 0, 40), 1.3, (20, 200, 180), 0.1),
)


def render_background(rng: np.random.Generator, tile_index: int, width: int, height: int,
                      scene: Scene) -> np.ndarray:
    """[height, width, 3] float32 background in 0..255."""
    photo = assets.random_crop(rng, tile_index, width, height)
    jitter = rng.uniform(0.9, 1.1, 3).astype(np.float32)  # no two clips share an exact grade
    image = assets.tint(photo, np.asarray(scene.gain, np.float32) * jitter,
                        np.asarray(scene.offset, np.float32), scene.contrast)
    if scene.floor_rgb is not None:
        floor_rows = max(1, int(round(height * scene.floor_height * rng.uniform(0.8, 1.2))))
        image[height - floor_rows:] = 0.3 * image[height - floor_rows:] + 0.7 * np.asarray(scene.floor_rgb)
    return image


def random_scene(rng: np.random.Generator) -> Scene:
    return SCENES[int(rng.integers(len(SCENES)))]
