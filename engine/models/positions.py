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

    Channels beyond 3 * band (at most 5 of them) pass through unrotated. Within a band of 2P channels the
    frequencies are theta^(-i/P), i < P. `style` says which frequency each channel takes:
    - "pairwise": channel pair (2i, 2i+1) is rotated by the angle of frequency i (V-JEPA 2.1);
    - "vjepa2": channel j takes frequency j mod P, because the released V-JEPA 2 code (and transformers'
      VJEPA2Model, `rotate_queries_or_keys`) repeat the sin/cos tables end to end; so the even and the odd
      channel of pair i use frequencies 2i mod P and 2i+1 mod P.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, style: str = "pairwise"):
        if style not in ("pairwise", "vjepa2"):
            raise ValueError(f"unknown RoPE style {style!r}; choose 'pairwise' or 'vjepa2'")
        self.style = style
        self.band = 2 * (head_dim // 6)  # rotated channels per axis
        pairs = self.band // 2
        self.inv_freq = 1.0 / theta ** (torch.arange(pairs, dtype=torch.float32) / pairs)  # [pairs]
        self.even_freq = (2 * torch.arange(pairs)) % pairs  # vjepa2: frequency of each pair's even channel
        self.odd_freq = (2 * torch.arange(pairs) + 1) % pairs  # ... and of its odd channel
        self._inv_freq_by_device: dict[torch.device, torch.Tensor] = {}  # avoids a host-to-device copy per forward

    def angles(self, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """coords [B, L, 3] (float) -> (cos, sin), each [B, L, 1, 3 * band / 2], broadcast over heads; for the
        "vjepa2" style (cos_even, sin_even, cos_odd, sin_odd), the angles of each pair's even and odd channel."""
        inv_freq = self._inv_freq_by_device.get(coords.device)
        if inv_freq is None:
            inv_freq = self._inv_freq_by_device.setdefault(coords.device, self.inv_freq.to(coords.device))
        theta = coords.unsqueeze(-1) * inv_freq  # [B, L, 3, pairs]
        if self.style == "pairwise":
            theta = theta.flatten(-2)  # [B, L, 3 * pairs]
            return theta.cos().unsqueeze(2), theta.sin().unsqueeze(2)
        even = theta[..., self.even_freq.to(coords.device)].flatten(-2).unsqueeze(2)  # [B, L, 1, 3 * pairs]
        odd = theta[..., self.odd_freq.to(coords.device)].flatten(-2).unsqueeze(2)
        return even.cos(), even.sin(), odd.cos(), odd.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cos_odd: torch.Tensor | None = None,
                 sin_odd: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, L, H, hd] by the angles behind cos/sin [B, L, 1, P]; with
    cos_odd/sin_odd (the "vjepa2" style) the odd channel of each pair takes those instead."""
    if cos_odd is None:
        cos_odd, sin_odd = cos, sin
    rotated = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rotated], x[..., rotated:]
    pairs = x_rot.float().unflatten(-1, (-1, 2))  # [B, L, H, P, 2]
    even, odd = pairs.unbind(-1)
    out = torch.stack((even * cos - odd * sin, odd * cos_odd + even * sin_odd), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), x_pass), dim=-1)
