"""3D token positions: fixed sin-cos embeddings (additive) and rotary embeddings (on queries and keys).

Both split the channels evenly between the time, height and width axes ("uniform power"), so no axis
gets a coarser code than another.
"""
from __future__ import annotations

import math

import torch


def grid_coordinates(flat_idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(t, h, w) coordinates of flat token indices in a (Tg, Hg, Wg) grid flattened with w fastest.

    flat_idx: int64 [...] -> float32 [..., 3]
    """
    _, height, width = grid
    t = flat_idx // (height * width)
    h = (flat_idx // width) % height
    w = flat_idx % width
    return torch.stack((t, h, w), dim=-1).float()


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos position table [N, dim] for the flattened grid."""
    axis_dim = 2 * math.ceil(dim / 6)  # even, and 3 * axis_dim >= dim; the excess is cut off
    half = axis_dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # [half]
    coords = grid_coordinates(torch.arange(math.prod(grid)), grid).double()  # [N, 3]
    angles = coords.unsqueeze(-1) * omega  # [N, 3, half]
    table = torch.cat((angles.sin(), angles.cos()), dim=-1).flatten(1)  # [N, 3 * axis_dim]
    return table[:, :dim].float()


class Rotary3D:
    """3D RoPE: each head's channels are cut into three equal even-sized bands rotated by t, h and w.

    Channels beyond 3 * band (at most 5 of them) pass through unrotated.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        self.band = 2 * (head_dim // 6)  # rotated channels per axis
        pairs = self.band // 2
        self.inv_freq = 1.0 / theta ** (torch.arange(pairs, dtype=torch.float32) / pairs)  # [pairs]
        self._inv_freq_by_device: dict[torch.device, torch.Tensor] = {}  # avoids a host-to-device copy per forward

    def angles(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords [B, L, 3] (float) -> (cos, sin), each [B, L, 1, 3 * band / 2], broadcast over heads."""
        inv_freq = self._inv_freq_by_device.get(coords.device)
        if inv_freq is None:
            inv_freq = self._inv_freq_by_device.setdefault(coords.device, self.inv_freq.to(coords.device))
        theta = (coords.unsqueeze(-1) * inv_freq).flatten(-2)  # [B, L, 3 * pairs]
        return theta.cos().unsqueeze(2), theta.sin().unsqueeze(2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, L, H, hd] by the angles behind cos/sin [B, L, 1, P]."""
    rotated = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rotated], x[..., rotated:]
    pairs = x_rot.float().unflatten(-1, (-1, 2))  # [B, L, H, P, 2]
    even, odd = pairs.unbind(-1)
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), x_pass), dim=-1)
