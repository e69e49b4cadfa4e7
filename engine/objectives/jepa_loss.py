"""The baseline objective (docs/paper.md §2): L1 prediction of the masked targets and the V-JEPA 2.1
distance-weighted context loss with its λ schedule."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import at_least, check_fields, field_doc
from engine.objectives.grid import grid_positions


def layer_norm_levels(feats: Tensor, levels: int) -> Tensor:
    """Parameter-free LayerNorm applied separately to each of the `levels` concatenated block outputs.

    feats [B, N, L·Dl] -> [B, N, L·Dl]; the targets h of the paper (LN₄ for 4 levels)."""
    b, n, d = feats.shape
    if d % levels:
        raise ValueError(f"feature width {d} is not a multiple of {levels} levels")
    per_level = feats.reshape(b, n, levels, d // levels)
    normed = torch.nn.functional.layer_norm(per_level, (d // levels,))
    return normed.reshape(b, n, d)


def prediction_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_pred of one mask config: mean over masked tokens and dims of |ẑ − h|. pred, target [B, Kt, D]."""
    return (pred - target).abs().mean()


def context_distance_weights(context_idx: Tensor, target_idx: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """w_i = sqrt(min_j ||pos_i − pos_j||₂) over masked tokens j, in (t, h, w) grid units. [B, Kc].

    Context and target are disjoint, so every distance is at least 1 and w_i ≥ 1."""
    ctx_pos = grid_positions(context_idx, grid)  # [B, Kc, 3]
    tgt_pos = grid_positions(target_idx, grid)  # [B, Kt, 3]
    nearest = torch.cdist(ctx_pos, tgt_pos).amin(dim=-1)  # [B, Kc]
    return nearest.clamp_min(1.0).sqrt()


def context_loss(pred: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """L_ctx of one mask config: mean over context tokens of mean_d |ẑ_i − h_i| / w_i.

    pred, target [B, Kc, D]; weights [B, Kc] from `context_distance_weights`, or None for the
    unweighted form (`weight_distance: false`)."""
    per_token = (pred - target).abs().mean(dim=-1)  # [B, Kc]
    if weights is not None:
        per_token = per_token / weights.to(per_token.dtype)
    return per_token.mean()


@dataclass(frozen=True)
class ContextLossConfig:
    """The dense context loss of V-JEPA 2.1 and its weight schedule."""

    weight_distance: bool = field_doc(True, "Divide each context token's error by sqrt of its distance to the "
                                            "nearest masked token.")
    lambda_value: float = field_doc(0.5, "λ_ctx reached at `lambda_end` and held after it.", valid=at_least(0))
    lambda_start: int = field_doc(15_000, "Iteration before which λ_ctx is 0 (the context loss is off for the "
                                          "first half of 30k steps).", valid=at_least(0))
    lambda_end: int = field_doc(30_000, "Iteration at which λ_ctx reaches `lambda_value` after a linear ramp "
                                        "from 0; not before lambda_start.", valid=at_least(0))

    def __post_init__(self):
        check_fields(self, "context_loss.")
        if self.lambda_end < self.lambda_start:
            raise ValueError("context_loss.lambda_end must not precede lambda_start")

    def lambda_at(self, step: int) -> float:
        """λ_ctx(step): 0 before start, linear from 0 to `lambda_value` on [start, end], then held."""
        if step < self.lambda_start:
            return 0.0
        if step >= self.lambda_end:
            return self.lambda_value
        return self.lambda_value * (step - self.lambda_start) / (self.lambda_end - self.lambda_start)
