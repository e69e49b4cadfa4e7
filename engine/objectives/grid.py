"""Student features on the full token grid, and the "valid pairs" most temporal terms average over.

The context encoder sees only the visible tokens. Terms that compare a token at step t with the same
location at t+1 scatter those features back onto the (Tg, Hg·Wg) grid and use only the locations where
both t and t+1 are visible (docs/paper.md §3, "valid pair").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def token_grid(x: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """[B, N, ...] with N = Tg·Hg·Wg in (t, h, w) order -> [B, Tg, Hg·Wg, ...]."""
    tg, hg, wg = grid
    if x.shape[1] != tg * hg * wg:
        raise ValueError(f"expected {tg * hg * wg} tokens for grid {grid}, got {x.shape[1]}")
    return x.reshape(x.shape[0], tg, hg * wg, *x.shape[2:])


@dataclass
class FeatureGrid:
    """Features scattered onto the grid, zero where not visible."""

    feats: Tensor
    """[B, Tg, S, D] with S = Hg·Wg."""
    visible: Tensor
    """[B, Tg, S] bool, True where the context encoder saw the token."""

    @property
    def pairs(self) -> Tensor:
        """[B, Tg-1, S] bool, True where both step t and step t+1 are visible."""
        return self.visible[:, :-1] & self.visible[:, 1:]

    @property
    def full_time(self) -> Tensor:
        """[B, S] bool, True at locations visible at every time step."""
        return self.visible.all(dim=1)


def scatter_to_grid(feats: Tensor, idx: Tensor, grid: tuple[int, int, int]) -> FeatureGrid:
    """Place [B, K, D] features at their flattened indices [B, K] of the grid; gradient flows to feats."""
    b, k, d = feats.shape
    n = grid[0] * grid[1] * grid[2]
    dense = feats.new_zeros(b, n, d).scatter(1, idx.unsqueeze(-1).expand(b, k, d), feats)  # [B, N, D]
    visible = torch.zeros(b, n, dtype=torch.bool, device=feats.device)
    visible.scatter_(1, idx, True)
    return FeatureGrid(token_grid(dense, grid), token_grid(visible, grid))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the positions where `mask` holds (and over any trailing dims of `values`).

    values [B, T, S] or [B, T, S, D]; mask [B, T, S]. An empty mask gives 0 that still belongs to the
    graph, so the caller's backward stays well defined."""
    weights = mask.to(values.dtype)
    if values.dim() == mask.dim() + 1:
        per_position = values.mean(dim=-1)
    else:
        per_position = values
    count = weights.sum().clamp_min(1.0)
    return (per_position * weights).sum() / count


def grid_positions(idx: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Flattened indices [B, K] -> (t, h, w) coordinates [B, K, 3] as floats in token-grid units."""
    _, hg, wg = grid
    t = torch.div(idx, hg * wg, rounding_mode="floor")
    h = torch.div(idx, wg, rounding_mode="floor") % hg
    w = idx % wg
    return torch.stack([t, h, w], dim=-1).float()
