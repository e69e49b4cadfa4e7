"""Drawing block origins from per-origin scores, for a whole batch at once on the scores' device.

Shared by the reference and the Triton path of ``motion_mask``: only the per-origin score differs.
"""
from __future__ import annotations

import torch


def check_block_shape(scores: torch.Tensor, block_shape) -> tuple[int, int, int]:
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B,Tg,Hg,Wg], got {tuple(scores.shape)}")
    bt, bh, bw = (int(s) for s in block_shape)
    grid = tuple(scores.shape[1:])
    if min(bt, bh, bw) < 1 or bt > grid[0] or bh > grid[1] or bw > grid[2]:
        raise ValueError(f"block {(bt, bh, bw)} does not fit the token grid {grid}")
    return bt, bh, bw


def origin_probabilities(block_scores: torch.Tensor, strength: float, random_rate: float) -> torch.Tensor:
    """[B,Ot,Oh,Ow] -> [B,O] float64: (1−r)·p + r/O with p ∝ clamp(score, 1e-6)^strength.

    Drawing from this mixture is the same distribution as "uniform with probability r, else p".
    The power is taken in log space so that large strengths cannot underflow to all-zero rows.
    """
    if not 0.0 <= random_rate <= 1.0:
        raise ValueError(f"random_rate must be in [0, 1], got {random_rate}")
    flat = block_scores.flatten(1).double()                                # [B,O]
    guided = torch.softmax(strength * flat.clamp_min(1e-6).log(), dim=-1)  # [B,O]
    return (1.0 - random_rate) * guided + random_rate / flat.shape[1]


def sample_origins(block_scores: torch.Tensor, num_blocks: int, strength: float, random_rate: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat origin index of each block: int64 [B, num_blocks], blocks drawn independently (may overlap)."""
    probs = origin_probabilities(block_scores, strength, random_rate)
    return torch.multinomial(probs, num_blocks, replacement=True, generator=generator)


def sample_block_union(block_scores: torch.Tensor, grid: tuple[int, int, int], block_shape, num_blocks: int,
                       strength: float, random_rate: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [B, Tg*Hg*Wg]: True on every token covered by one of the drawn blocks."""
    Tg, Hg, Wg = grid
    bt, bh, bw = (int(s) for s in block_shape)
    B, Ot, Oh, Ow = block_scores.shape
    device = block_scores.device
    origin = sample_origins(block_scores, num_blocks, strength, random_rate, generator)  # [B,nb]
    ot = origin // (Oh * Ow)
    oh = (origin // Ow) % Oh
    ow = origin % Ow
    start = (ot * Hg + oh) * Wg + ow                                       # [B,nb] token of the block corner
    dt = torch.arange(bt, device=device).view(bt, 1, 1)
    dh = torch.arange(bh, device=device).view(1, bh, 1)
    dw = torch.arange(bw, device=device).view(1, 1, bw)
    offsets = ((dt * Hg + dh) * Wg + dw).flatten()                         # [bt*bh*bw]
    tokens = (start.unsqueeze(-1) + offsets).flatten(1)                    # [B, nb*bt*bh*bw]
    mask = torch.zeros(B, Tg * Hg * Wg, dtype=torch.bool, device=device)
    return mask.scatter_(1, tokens, True)
