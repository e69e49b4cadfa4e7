"""VelGate: suppress student change where the target barely moves (docs/paper.md §3.2, "VelGate")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import between, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs
from engine.objectives.grid import masked_mean


@dataclass(frozen=True)
class VelocityGateParams:
    quantile: float = field_doc(0.5, "Per (clip, t), locations whose target speed is at or below this spatial "
                                     "quantile are gated.", valid=between(0.0, 1.0))


def background_gate(target: Tensor, quantile: float) -> Tensor:
    """target [B, Tg, S, D] -> bool [B, Tg-1, S]: True where ||h(t+1) − h(t)||₂ is at or below the
    `quantile` of the speeds at that (clip, t) over all spatial locations ("background")."""
    speed = (target[:, 1:] - target[:, :-1]).float().norm(dim=-1)  # [B, Tg-1, S]
    threshold = torch.quantile(speed, quantile, dim=-1, keepdim=True)  # [B, Tg-1, 1]
    return speed <= threshold


def gated_velocity_loss(student: Tensor, gate: Tensor, pairs: Tensor) -> Tensor:
    """mean over valid pairs of gate·mean_d|z(t+1) − z(t)|. student [B, Tg, S, D]."""
    change = (student[:, 1:] - student[:, :-1]).abs().mean(dim=-1)  # [B, Tg-1, S]
    return masked_mean(change * gate.to(change.dtype), pairs)


class VelocityGateTerm(MaskViewTerm):
    Params = VelocityGateParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        with torch.no_grad():
            gate = background_gate(inputs.target_grid, self.params.quantile)
        return gated_velocity_loss(grid.feats, gate, grid.pairs)
