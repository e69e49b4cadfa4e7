"""Block geometry and bool-mask to index conversion for multi-block 3D masks (V-JEPA style).

All functions work on a whole batch at once, on the device of their inputs, and draw every random
number from the torch.Generator they are given.
"""
from __future__ import annotations

import math

import torch

from .config import MaskConfig


def sample_block_shape(cfg: MaskConfig, grid: tuple[int, int, int],
                       generator: torch.Generator) -> tuple[int, int, int]:
    """Block (t, h, w) in tokens, drawn once per batch: duration, area and aspect ratio are uniform in
    their ranges; h and w follow from area and aspect ratio and are clipped to the grid."""
    duration, height, width = grid
    u_time, u_area, u_aspect = torch.rand(3, generator=generator, device=generator.device).tolist()
    t_scale = cfg.temporal_scale[0] + u_time * (cfg.temporal_scale[1] - cfg.temporal_scale[0])
    s_scale = cfg.spatial_scale[0] + u_area * (cfg.spatial_scale[1] - cfg.spatial_scale[0])
    aspect = cfg.aspect_ratio[0] + u_aspect * (cfg.aspect_ratio[1] - cfg.aspect_ratio[0])
    t = max(1, int(duration * t_scale))
    area = int(height * width * s_scale)
    # At least one token per side: tiny CPU grids would otherwise give empty blocks.
    h = min(max(1, round(math.sqrt(area * aspect))), height)
    w = min(max(1, round(math.sqrt(area / aspect))), width)
    return t, h, w


def token_coordinates(grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, h, w) of every flat token, each int64 [N]."""
    _, height, width = grid
    flat = torch.arange(math.prod(grid), device=device)
    return flat // (height * width), (flat // width) % height, flat % width


def uniform_block_union(batch_size: int, grid: tuple[int, int, int], block: tuple[int, int, int], num_blocks: int,
                        generator: torch.Generator) -> torch.Tensor:
    """bool [B, N], True on tokens inside any of num_blocks blocks with uniform, independent origins."""
    device = generator.device
    coords = token_coordinates(grid, device)
    inside = torch.ones(batch_size, num_blocks, math.prod(grid), dtype=torch.bool, device=device)  # [B, nb, N]
    for axis_coord, extent, size in zip(coords, grid, block):
        start = torch.randint(0, extent - size + 1, (batch_size, num_blocks, 1), generator=generator, device=device)
        inside &= (axis_coord >= start) & (axis_coord < start + size)
    return inside.any(dim=1)


def future_time_steps(grid: tuple[int, int, int], max_temporal_keep: float, device) -> torch.Tensor | None:
    """bool [N], True on tokens past the context's time limit (None when there is no limit)."""
    context_steps = max(1, int(grid[0] * max_temporal_keep))
    if context_steps >= grid[0]:
        return None
    t, _, _ = token_coordinates(grid, device)
    return t >= context_steps


def first_true_indices(flags: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending indices of the first `count` True entries of each row: flags bool [B, N] -> int64 [B, count].

    Every row must hold at least `count` True entries. Sorting keys that put False entries after all True
    ones keeps the whole batch in one tensor op.
    """
    num_tokens = flags.shape[1]
    position = torch.arange(num_tokens, device=flags.device)
    keys = torch.where(flags, position, position + num_tokens)  # [B, N]
    return keys.sort(dim=1).values[:, :count]


def complement_indices(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Ascending indices of the tokens not in idx, per row: int64 [B, K] -> [B, N - K] (rows of idx are unique)."""
    present = torch.zeros(idx.shape[0], num_tokens, dtype=torch.bool, device=idx.device)
    present.scatter_(1, idx, True)
    return first_true_indices(~present, num_tokens - idx.shape[1])
