"""Typed mask configuration: one MaskConfig per context/target split drawn for a clip, and the set of
them that a training step uses (MaskingConfig)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.fields import at_least, between, check_fields, field_doc, one_of

MOTION_MAPS = ("cell_mean", "trilinear")


def _ordered_pair(name: str, value) -> tuple[float, float]:
    """[min, max] as floats; each end's range is the field's own, the order is checked here."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"mask.{name}={value} must be [min, max] with min <= max")
    return pair


@dataclass(frozen=True)
class MaskConfig:
    """One mask config: a union of 3D blocks is the target, the rest (optionally time-limited) the context.
    Defaults are V-JEPA's short-range config."""

    num_blocks: int = field_doc(8, "blocks per sample; the target is their union", valid=at_least(1))
    spatial_scale: tuple[float, float] = field_doc(
        (0.15, 0.15), "block area as a fraction of the H x W token grid, drawn once per batch",
        valid=between(0.0, 1.0, low_open=True))
    temporal_scale: tuple[float, float] = field_doc(
        (1.0, 1.0), "block duration as a fraction of the token time steps (1.0 = full-length tubes)",
        valid=between(0.0, 1.0))
    aspect_ratio: tuple[float, float] = field_doc(
        (0.75, 1.5), "block height / width, drawn once per batch", valid=between(1e-3, 1e3))
    max_temporal_keep: float = field_doc(
        1.0, "context may use only the first max(1, int(Tg * this)) time steps; later tokens become targets; "
        "1.0 = no limit", valid=between(0.0, 1.0, low_open=True))
    full_complement: bool = field_doc(
        False, "targets = every token that is not context (after truncation), instead of the truncated block union")
    max_keep: int | None = field_doc(
        None, "upper bound on context tokens per sample; None = no bound", valid=at_least(1))
    motion_guided: bool = field_doc(
        False, "draw block origins with p ~ (mean motion in block)^motion_strength instead of uniformly")
    motion_strength: float = field_doc(
        2.0, "exponent sharpening the motion preference (paper: 2.0 MGM, 5.0 AMG)", valid=at_least(0))
    motion_random_rate: float = field_doc(
        0.1, "probability that a block's origin is uniform anyway (paper: 0.1 MGM, 0.0 AMG)", valid=between(0.0, 1.0))

    def __post_init__(self) -> None:
        for name in ("spatial_scale", "temporal_scale", "aspect_ratio"):
            object.__setattr__(self, name, _ordered_pair(name, getattr(self, name)))
        check_fields(self, "mask.")


@dataclass(frozen=True)
class MaskingConfig:
    """The mask configs of a training step (one predictor mask token and one context pass each)."""

    name: str | None = field_doc(
        None, "registry entry that supplies the mask configs when `masks` is empty; a label otherwise; "
        "null = the objective variant's own generator (multiblock outside a run)")
    masks: tuple[MaskConfig, ...] = field_doc(
        (), "explicit mask configs (mappings are converted); empty = take them from `name`")
    motion_map: str = field_doc(
        "cell_mean", "motion score map: 'cell_mean' (kernels.motion_scores: cell average, frame 0 static) or "
        "'trilinear' (the released code's: first difference repeated for frame 0, point-sampled at cell centres; "
        "the paper recipes set it, docs/paper-deviations.md)", valid=one_of(*MOTION_MAPS))
    max_attempts: int = field_doc(
        20, "redraws of a sample whose blocks cover every allowed token, before one token is forced into the context",
        valid=at_least(1))

    def __post_init__(self) -> None:
        masks = tuple(m if isinstance(m, MaskConfig) else MaskConfig(**m) for m in self.masks)
        object.__setattr__(self, "masks", masks)
        check_fields(self, "masking.")
