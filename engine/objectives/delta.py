"""Delta: match the student's temporal change to the target's (docs/paper.md §3.1, "Delta")."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from engine.objectives.base import MaskView, MaskViewTerm, StepInputs
from engine.objectives.grid import masked_mean


@dataclass(frozen=True)
class DeltaParams:
    """Delta has no parameters beyond its coefficient."""


def delta_loss(student: Tensor, target: Tensor, pairs: Tensor) -> Tensor:
    """mean over valid pairs and dims of |Δz − Δh|, Δ = step t+1 minus step t.

    student, target [B, Tg, S, D]; pairs [B, Tg-1, S]."""
    student_change = student[:, 1:] - student[:, :-1]  # [B, Tg-1, S, D]
    target_change = target[:, 1:] - target[:, :-1]
    return masked_mean((student_change - target_change).abs(), pairs)


class DeltaTerm(MaskViewTerm):
    Params = DeltaParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        return delta_loss(grid.feats, inputs.target_grid, grid.pairs)
