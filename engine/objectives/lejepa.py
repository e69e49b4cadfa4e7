"""The LeJEPA form of SIGReg (Balestriero & LeCun, 2025), for pretraining at small scale: the sliced
Epps–Pulley statistic of engine/objectives/sigreg.py on the student's context tokens AND on the clip-pooled
student embedding, optionally through a small trainable projection. Its variants (`lejepa`,
`lejepa_future`) weight it λ beside a prediction loss weighted 1−λ (Variant.prediction_weight) and take
their targets from the online encoder (EMA off):

    total = (1−λ)·(L_pred + λ_ctx·L_ctx) + λ·(token_weight·SIGReg(P(z)) + pooled_weight·SIGReg(P(mean_k z_k)))

z [B, Kc, D] is the student's output on the context tokens of one mask config, mean_k its mean over them
(one embedding per clip), P the projection (identity when projection_dim is 0). Both statistics use the
same slice directions, drawn per step as in SIGRegTerm.

The pooled statistic has one sample per clip: with the demo's batches of 8–16 clips it is the Epps–Pulley
test on 8–16 points, a noisy estimate whose size scales with n (EP = n·∫|φ_n − φ|²w), so it is small beside
the token statistic over B·Kc samples. It is the LeJEPA objective (one embedding per view) all the same, and
at GPU batch sizes it is the well-sampled one.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from engine.fields import at_least, field_doc
from engine.objectives.base import MaskView, StepInputs
from engine.objectives.projection import build_projection
from engine.objectives.sigreg import SIGRegParams, SIGRegTerm, sliced_epps_pulley


@dataclass(frozen=True)
class LeJEPASIGRegParams(SIGRegParams):
    # Demo-scale defaults (issue 23: 256 slices learned at λ=0.05 on the 2-core CPU); t_max, n_points, seed
    # are SIGReg's.
    num_slices: int = field_doc(256, "Random unit directions the features are projected on.", valid=at_least(1))
    token_weight: float = field_doc(1.0, "Weight of the statistic over all context tokens of the batch "
                                         "(B·Kc samples).", valid=at_least(0))
    pooled_weight: float = field_doc(1.0, "Weight of the statistic over the clip-pooled embeddings (mean over "
                                          "each clip's context tokens: B samples, noisy for B of 8–16).",
                                     valid=at_least(0))
    projection_dim: int = field_doc(0, "0: the statistics read the student features directly; > 0: through a "
                                       "trainable projection to this width.", valid=at_least(0))
    projection_hidden: int = field_doc(0, "With projection_dim > 0: 0 = one Linear(D, projection_dim); > 0 = a "
                                          "2-layer MLP Linear(D, hidden), GELU, Linear(hidden, projection_dim).",
                                       valid=at_least(0))


class LeJEPASIGRegTerm(SIGRegTerm):
    """SIGReg on the (projected) context tokens and on the (projected) clip-pooled embedding."""

    Params = LeJEPASIGRegParams

    def __init__(self, params: LeJEPASIGRegParams, feat_dim: int):
        super().__init__(params, feat_dim)
        if params.token_weight == 0 and params.pooled_weight == 0:
            raise ValueError("LeJEPASIGRegTerm: token_weight and pooled_weight are both 0; the term would be 0")
        self.projection = build_projection(feat_dim, params.projection_dim, params.projection_hidden)
        self.slice_dim = params.projection_dim or feat_dim

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        p = self.params
        directions = self.directions(inputs.step, view.student.device)  # [P, M]
        loss = view.student.new_zeros(())
        if p.token_weight > 0:
            tokens = self.projection(view.student)  # [B, Kc, P]
            loss = loss + p.token_weight * sliced_epps_pulley(tokens.reshape(-1, tokens.shape[-1]), directions,
                                                              p.t_max, p.n_points)
        if p.pooled_weight > 0:
            pooled = self.projection(view.student.mean(dim=1))  # [B, P]: one embedding per clip
            loss = loss + p.pooled_weight * sliced_epps_pulley(pooled, directions, p.t_max, p.n_points)
        return loss
