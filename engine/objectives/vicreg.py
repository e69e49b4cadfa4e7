"""VICReg's variance and covariance terms on the student's embeddings (Bardes, Ponce & LeCun, 2022), in the
EB-JEPA form: one shared encoder gives both the context features and the targets (EMA off), and the
regulariser keeps its features from collapsing. Variants `vicreg`, `vicreg_future`.

For a set of n embeddings X [n, D] (the context tokens of the batch, B·Kc of them, and/or one clip-pooled
embedding per clip, the mean over its context tokens, B of them), optionally through a trainable projection:

    variance   = (1/D) Σ_d max(0, γ − sqrt(Var_d(X) + ε))            Var with n − 1 (unbiased), as VICReg
    covariance = (1/D) Σ_{i≠j} C_ij²,   C = (X − mean)ᵀ(X − mean) / (n − 1)
    term       = std_weight · variance + cov_weight · covariance      (summed over tokens and pooled)

The default weights keep VICReg's ratio (invariance 25 : variance 25 : covariance 1) with the prediction
loss in the invariance role at weight 1. The pooled set has one sample per clip: with batches of 8–16 clips
its covariance has rank ≤ B − 1 and is a noisy estimate; it is what acts on the clip-level embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import above, at_least, field_doc, one_of
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs
from engine.objectives.projection import build_projection

SETS = ("both", "tokens", "pooled")


@dataclass(frozen=True)
class VICRegParams:
    std_weight: float = field_doc(1.0, "Weight of the variance hinge.", valid=at_least(0))
    cov_weight: float = field_doc(0.04, "Weight of the off-diagonal covariance (VICReg's 1/25 of the variance "
                                        "weight).", valid=at_least(0))
    gamma: float = field_doc(1.0, "Target standard deviation of every dimension (the hinge's threshold).",
                             valid=above(0))
    eps: float = field_doc(1e-4, "Added to the variance before the square root (a finite gradient at 0).",
                           valid=above(0))
    on: str = field_doc("both", '"tokens": the context tokens of the batch; "pooled": one mean embedding per '
                                'clip; "both": the sum of the two.', valid=one_of(*SETS))
    projection_dim: int = field_doc(0, "0: the terms read the student features directly; > 0: through a "
                                       "trainable projection to this width.", valid=at_least(0))
    projection_hidden: int = field_doc(0, "With projection_dim > 0: 0 = one Linear; > 0 = a 2-layer MLP with "
                                          "this hidden width.", valid=at_least(0))


def variance_covariance(x: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """(variance hinge, off-diagonal covariance) of embeddings x [n, D], n >= 2; fp32 scalars."""
    x = x.float()
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"VICReg needs at least 2 embeddings per set, got {n} (a batch of one clip has one "
                         "pooled embedding); fix: a batch of 2 or more clips, or on: tokens")
    centred = x - x.mean(dim=0)  # [n, D]
    cov = centred.T @ centred / (n - 1)  # [D, D]
    std = torch.sqrt(cov.diagonal() + eps)  # [D]
    variance = torch.relu(gamma - std).mean()
    off_diagonal = cov.square().sum() - cov.diagonal().square().sum()
    return variance, off_diagonal / dim


class VICRegTerm(MaskViewTerm):
    """VICReg variance + covariance on the (projected) student context tokens and/or clip-pooled embeddings."""

    Params = VICRegParams

    def __init__(self, params: VICRegParams, feat_dim: int):
        super().__init__(params, feat_dim)
        self.projection = build_projection(feat_dim, params.projection_dim, params.projection_hidden)

    def _regularise(self, x: Tensor) -> Tensor:
        variance, covariance = variance_covariance(x, self.params.gamma, self.params.eps)
        return self.params.std_weight * variance + self.params.cov_weight * covariance

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        loss = view.student.new_zeros(())
        if self.params.on in ("both", "tokens"):
            tokens = self.projection(view.student)  # [B, Kc, P]
            loss = loss + self._regularise(tokens.reshape(-1, tokens.shape[-1]))
        if self.params.on in ("both", "pooled"):
            loss = loss + self._regularise(self.projection(view.student.mean(dim=1)))  # [B, P]
        return loss
