"""The small trainable projection that regularisers of the student embedding may read through (LeJEPA's
projector, VICReg's expander), sized by two term parameters: projection_dim (0 = none) and
projection_hidden (0 = one Linear, > 0 = a 2-layer MLP)."""
from __future__ import annotations

from torch import nn


def build_projection(feat_dim: int, dim: int, hidden: int) -> nn.Module:
    """Identity (dim 0), Linear(feat_dim, dim) (hidden 0), or Linear(feat_dim, hidden), GELU, Linear(hidden, dim)."""
    if dim == 0:
        return nn.Identity()
    if hidden == 0:
        return nn.Linear(feat_dim, dim)
    return nn.Sequential(nn.Linear(feat_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
