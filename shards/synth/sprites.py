"""Random digit sprites: a handwritten digit shape filled with a colour, a pattern or a photo texture.

`choose_digit_sprite` serves synth-ssv2, where appearance is a nuisance; synth-ucf, whose label includes
the digit's identity, picks the image itself and draws a solid fill with `draw_sprite`. The digit image
and texture tile come from the caller's instance pools, so held-out samples get unseen sprites.
Choosing a sprite (cheap, gives its description) is separate from drawing it (costs a few ms).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import assets, draw

SPRITE_RESOLUTION = 48  # px side the sprite is drawn at; `draw.place` rescales it to the frame
FILL_KINDS = ("solid", "striped", "checkered", "patterned")


@dataclass(frozen=True)
class SpriteChoice:
    digit_index: int     # into assets.digit_images()
    fill_kind: str       # one of FILL_KINDS
    color: tuple         # main RGB
    second_color: tuple  # stripes / checks
    period: int          # px period of stripes / checks
    vertical: bool       # stripe orientation
    tile_index: int      # photo tile for the "patterned" fill
    texture_seed: int    # where in the tile the texture is cut

    @property
    def description(self) -> str:
        """E.g. "a red seven" or "a striped two", for SSv2-style filled-in labels."""
        look = assets.color_name(np.asarray(self.color)) if self.fill_kind == "solid" else self.fill_kind
        digit = int(assets.digit_images()[1][self.digit_index])
        return f"a {look} {assets.DIGIT_WORDS[digit]}"


def choose_digit_sprite(rng: np.random.Generator, digit_indices: np.ndarray,
                        tile_indices: np.ndarray) -> SpriteChoice:
    return SpriteChoice(
        digit_index=int(rng.choice(digit_indices)),
        fill_kind=FILL_KINDS[int(rng.integers(len(FILL_KINDS)))],
        color=tuple(float(c) for c in assets.random_color(rng)),
        second_color=tuple(float(c) for c in assets.random_color(rng)),
        period=int(rng.integers(6, 16)),
        vertical=bool(rng.random() < 0.5),
        tile_index=int(rng.choice(tile_indices)),
        texture_seed=int(rng.integers(2**31)),
    )


def draw_sprite(choice: SpriteChoice) -> Image.Image:
    """RGBA image of the chosen sprite, SPRITE_RESOLUTION square."""
    size = SPRITE_RESOLUTION
    alpha = assets.digit_alpha(choice.digit_index, size)
    color, second = np.asarray(choice.color, np.float32), np.asarray(choice.second_color, np.float32)
    if choice.fill_kind == "solid":
        fill = draw.solid_fill(color, size)
    elif choice.fill_kind == "striped":
        fill = draw.stripe_fill(color, second, size, choice.period, choice.vertical)
    elif choice.fill_kind == "checkered":
        fill = draw.checker_fill(color, second, size, choice.period)
    else:
        fill = draw.texture_fill(np.random.default_rng(choice.texture_seed), choice.tile_index, size)
    # A dark rim keeps light sprites visible on light backgrounds.
    rim = np.clip(draw.dilate(alpha, 2) - alpha, 0, 1)
    fill = fill * (1.0 - 0.85 * rim[..., None])
    return draw.sprite_from(np.maximum(alpha, rim), fill)
