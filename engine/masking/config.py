"""Typed mask configuration: one MaskConfig per context/target split drawn for a clip, and the set of
them that a training step uses (MaskingConfig)."""
from __future__ import annotations

from dataclasses import dataclass, field

MOTION_MAPS = ("cell_mean", "trilinear")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _doc(default, doc: str):
    """A dataclass field whose one-line doc is kept in its metadata (recipe `--describe` prints it)."""
    return field(default=default, metadata={"doc": doc})


def _range(name: str, value, low: float, high: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    _check(len(pair) == 2 and low <= pair[0] <= pair[1] <= high,
           f"mask.{name}={value} must be [min, max] with {low} <= min <= max <= {high}")
    return pair


@dataclass(frozen=True)
class MaskConfig:
    """One mask config: a union of 3D blocks is the target, the rest (optionally time-limited) the context.
    Defaults are V-JEPA's short-range config."""

    num_blocks: int = _doc(8, "blocks per sample; the target is their union")
    spatial_scale: tuple[float, float] = _doc(
        (0.15, 0.15), "block area as a fraction of the H x W token grid, drawn once per batch")
    temporal_scale: tuple[float, float] = _doc(
        (1.0, 1.0), "block duration as a fraction of the token time steps (1.0 = full-length tubes)")
    aspect_ratio: tuple[float, float] = _doc((0.75, 1.5), "block height / width, drawn once per batch")
    max_temporal_keep: float = _doc(
        1.0, "context may use only the first max(1, int(Tg * this)) time steps; later tokens become targets")
    full_complement: bool = _doc(
        False, "targets = every token that is not context (after truncation), instead of the truncated block union")
    max_keep: int | None = _doc(None, "upper bound on context tokens per sample; None = no bound")
    motion_guided: bool = _doc(
        False, "draw block origins with p ~ (mean motion in block)^motion_strength instead of uniformly")
    motion_strength: float = _doc(2.0, "exponent sharpening the motion preference (paper: 2.0 MGM, 5.0 AMG)")
    motion_random_rate: float = _doc(
        0.1, "probability that a block's origin is uniform anyway (paper: 0.1 MGM, 0.0 AMG)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_scale", _range("spatial_scale", self.spatial_scale, 0.0, 1.0))
        object.__setattr__(self, "temporal_scale", _range("temporal_scale", self.temporal_scale, 0.0, 1.0))
        object.__setattr__(self, "aspect_ratio", _range("aspect_ratio", self.aspect_ratio, 1e-3, 1e3))
        _check(self.num_blocks >= 1, f"mask.num_blocks={self.num_blocks} must be at least 1")
        _check(self.spatial_scale[0] > 0, f"mask.spatial_scale={self.spatial_scale} must be above 0")
        _check(0.0 < self.max_temporal_keep <= 1.0,
               f"mask.max_temporal_keep={self.max_temporal_keep} must be in (0, 1]; 1.0 disables the limit")
        _check(self.max_keep is None or self.max_keep >= 1, f"mask.max_keep={self.max_keep} must be >= 1 or null")
        _check(self.motion_strength >= 0, f"mask.motion_strength={self.motion_strength} must be >= 0")
        _check(0.0 <= self.motion_random_rate <= 1.0,
               f"mask.motion_random_rate={self.motion_random_rate} must be in [0, 1]")


@dataclass(frozen=True)
class MaskingConfig:
    """The mask configs of a training step (one predictor mask token and one context pass each)."""

    name: str | None = _doc(
        None, "registry entry that supplies the mask configs when `masks` is empty; a label otherwise; "
        "null = the objective variant's own generator (multiblock outside a run)")
    masks: tuple[MaskConfig, ...] = _doc(
        (), "explicit mask configs (mappings are converted); empty = take them from `name`")
    motion_map: str = _doc(
        "cell_mean", "motion score map: 'cell_mean' (kernels.motion_scores: cell average, frame 0 static) or "
        "'trilinear' (the released code's: first difference repeated for frame 0, point-sampled at cell centres; "
        "the paper recipes set it, docs/paper-deviations.md)")
    max_attempts: int = _doc(
        20, "redraws of a sample whose blocks cover every allowed token, before one token is forced into the context")

    def __post_init__(self) -> None:
        masks = tuple(m if isinstance(m, MaskConfig) else MaskConfig(**m) for m in self.masks)
        object.__setattr__(self, "masks", masks)
        _check(self.motion_map in MOTION_MAPS,
               f"masking.motion_map={self.motion_map!r} is unknown; use one of {MOTION_MAPS}")
        _check(self.max_attempts >= 1, f"masking.max_attempts={self.max_attempts} must be at least 1")
