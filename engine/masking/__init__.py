"""Mask generators for Video-JEPA: multi-block, motion-guided, future-predictive, motion-future (contracts §3)."""
from .config import MaskConfig, MaskingConfig
from .generator import MASKING_REGISTRY, MaskGenerator, MaskSet, build_mask_generator, register_masking
from .motion import motion_map

__all__ = [
    "MASKING_REGISTRY",
    "MaskConfig",
    "MaskGenerator",
    "MaskSet",
    "MaskingConfig",
    "build_mask_generator",
    "motion_map",
    "register_masking",
]
