"""LTC: latent temporal contrastive triplet on valid pairs (docs/paper.md §3.1, "LTC")."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from engine.fields import field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs
from engine.objectives.grid import masked_mean


@dataclass(frozen=True)
class ContrastiveParams:
    margin: float = field_doc(0.5, "Required gap between cos(z_t, h_t) and cos(z_t, h_{t+1}).")


def temporal_triplet_loss(student: Tensor, target: Tensor, pairs: Tensor, margin: float) -> Tensor:
    """mean over valid pairs of max(0, m − cos(z_t, h_t) + cos(z_t, h_{t+1})).

    student, target [B, Tg, S, D]; pairs [B, Tg-1, S]. The positive is the same step of the target,
    the negative the next step, so the student must keep time steps apart."""
    anchor = student[:, :-1]
    positive = F.cosine_similarity(anchor, target[:, :-1], dim=-1)  # [B, Tg-1, S]
    negative = F.cosine_similarity(anchor, target[:, 1:], dim=-1)
    return masked_mean(F.relu(margin - positive + negative), pairs)


class ContrastiveTerm(MaskViewTerm):
    Params = ContrastiveParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        return temporal_triplet_loss(grid.feats, inputs.target_grid, grid.pairs, self.params.margin)
