"""Kinematic: velocity / acceleration sparsity of the target-branch features of the full clip
(docs/paper.md §3.2, "Kinematic", "-Accel", "-Huber", "-Split", "-Anneal").

All kinematic rows of the study disable the EMA, so the features penalised here are the online
encoder's output on the full clip, with gradient. With the EMA on, h is detached and the term would
train nothing; the registry never builds that combination."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from engine.fields import above, at_least, between, field_doc, one_of
from engine.objectives.base import AuxTerm, StepInputs

ORDERS = (1, 2)
PENALTIES = ("l1", "huber")


@dataclass(frozen=True)
class KinematicParams:
    order: int = field_doc(1, "1: velocity h(t+1) − h(t); 2: acceleration h(t+2) − 2h(t+1) + h(t) (velocity if "
                              "Tg < 3).", valid=one_of(*ORDERS))
    penalty: str = field_doc("l1", '"l1": mean |·|; "huber": Huber(·, 0) with threshold `huber_delta`.',
                             valid=one_of(*PENALTIES))
    huber_delta: float = field_doc(0.1, "Huber threshold δ.", valid=above(0))
    dim_fraction: float = field_doc(1.0, "Penalise only the first ⌊fraction·D⌋ dims (Kinematic-Split uses 0.5).",
                                    valid=between(0.0, 1.0, low_open=True))
    anneal: bool = field_doc(False, "Scale the coefficient by 0.5·(1 + cos(π·epoch/anneal_epochs)) "
                                    "(Kinematic-Anneal).")
    anneal_epochs: int = field_doc(100, "Epochs over which the cosine goes from 1 to 0.", valid=at_least(1))
    steps_per_epoch: int = field_doc(300, "Iterations per epoch; the anneal factor changes once per epoch, as in "
                                          "the study.", valid=at_least(1))


def temporal_difference(features: Tensor, order: int) -> Tensor:
    """features [B, Tg, S, D] -> the order-th finite difference along time [B, Tg-order, S, D]."""
    if order == 2 and features.shape[1] >= 3:
        return features[:, 2:] - 2 * features[:, 1:-1] + features[:, :-2]
    return features[:, 1:] - features[:, :-1]


def kinematic_loss(features: Tensor, order: int, penalty: str, huber_delta: float) -> Tensor:
    """Mean over all tokens and dims of the penalty of the temporal difference (no masks involved)."""
    change = temporal_difference(features, order)
    if penalty == "huber":
        return F.huber_loss(change, change.new_zeros(()).expand_as(change), delta=huber_delta)
    return change.abs().mean()


class KinematicTerm(AuxTerm):
    Params = KinematicParams
    reads_student = False

    def __init__(self, params: KinematicParams, feat_dim: int):
        super().__init__(params, feat_dim)
        self.width = max(1, int(math.floor(params.dim_fraction * feat_dim)))

    def step_loss(self, inputs: StepInputs) -> Tensor:
        features = inputs.target_grid[..., : self.width]  # [B, Tg, S, D']
        if features.shape[1] < 2:
            return features.sum() * 0.0
        return kinematic_loss(features, self.params.order, self.params.penalty, self.params.huber_delta)

    def schedule(self, step: int) -> float:
        if not self.params.anneal:
            return 1.0
        epoch = min(step // self.params.steps_per_epoch, self.params.anneal_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * epoch / self.params.anneal_epochs))
