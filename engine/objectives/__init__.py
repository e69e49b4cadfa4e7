"""Objectives of the study: the JEPA loss, every auxiliary term family (one file each) and the
registry of named variants. See registry.py for the list and docs/paper.md §2–3 for the formulas."""
from engine.objectives.base import AuxTerm, MaskView, MaskViewTerm, StepInputs, Term, Variant
from engine.objectives.grid import FeatureGrid, masked_mean, scatter_to_grid
from engine.objectives.jepa_loss import (
    ContextLossConfig,
    context_distance_weights,
    context_loss,
    layer_norm_levels,
    prediction_loss,
)
from engine.objectives.registry import TERM_KINDS, VARIANTS, Objective, build_objective, resolve_variant

__all__ = [
    "AuxTerm", "MaskView", "MaskViewTerm", "StepInputs", "Term", "Variant", "FeatureGrid", "masked_mean", "scatter_to_grid",
    "ContextLossConfig", "context_distance_weights", "context_loss", "layer_norm_levels", "prediction_loss",
    "TERM_KINDS", "VARIANTS", "Objective", "build_objective", "resolve_variant",
]
