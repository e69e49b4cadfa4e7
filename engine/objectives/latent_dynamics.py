"""LD: a dynamics head predicts the target's latent change from the student feature at t
(docs/paper.md §3.1 "LD", "FWM-LD", and with hard-region weighting "HW-LD", "FWM-HW-LD")."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernels import hard_weighted_loss
from engine.fields import above, at_least, between, field_doc, one_of
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs, split_dims
from engine.objectives.grid import masked_mean

INPUTS = ("all", "dyn")
WEIGHT_SCOPES = ("batch", "sample")


@dataclass(frozen=True)
class LatentDynamicsParams:
    input: str = field_doc("all", '"all": the head reads the whole student feature; "dyn": only Z_dyn (FWM-LD, '
                                  'FWM-HW-LD).', valid=one_of(*INPUTS))
    app_ratio: float = field_doc(0.5, 'Fraction of dims in Z_app when input is "dyn"; Z_dyn is the rest.',
                                 valid=between(0.0, 1.0, low_open=True, high_open=True))
    hidden_dim: int = field_doc(256, "Width of the dynamics head's hidden layer.", valid=at_least(1))
    hard_weighted: bool = field_doc(False, "Reweight the per-pair LD errors by K·softmax(e/τ) over valid pairs, "
                                           "without gradient (HW-LD).")
    tau: float = field_doc(1.0, "Temperature of that softmax.", valid=above(0))
    weight_scope: str = field_doc(
        "batch", 'With hard_weighted: "batch" = one softmax over all valid pairs of the batch, K = their count (the '
        'released code; docs/paper-deviations.md); "sample" = one softmax per sample over its own valid pairs.',
        valid=one_of(*WEIGHT_SCOPES))
    paper_compat: bool = field_doc(
        False, "With hard_weighted: build the weighted loss under no_grad, as the released code did, so that it "
        "trains nothing (docs/paper-deviations.md). A recipe's loss.paper_compat sets it on every LD term.")


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class LatentDynamicsTerm(MaskViewTerm):
    """L_LD = mean over valid pairs of |dyn_head(z_t) − (h_{t+1} − h_t)|.

    With `hard_weighted` the errors are reweighted per valid pair; the weights carry no gradient, the
    weighted loss does. `params.paper_compat` reproduces the released code, which built the whole weighted
    LD loss under no_grad so that it trained nothing (docs/paper-deviations.md)."""

    Params = LatentDynamicsParams

    def __init__(self, params: LatentDynamicsParams, feat_dim: int):
        super().__init__(params, feat_dim)
        self.input_start = split_dims(feat_dim, params.app_ratio) if params.input == "dyn" else 0
        self.dyn_head = mlp(feat_dim - self.input_start, params.hidden_dim, feat_dim)

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        target = inputs.target_grid  # [B, Tg, S, D]
        target_change = target[:, 1:] - target[:, :-1]  # [B, Tg-1, S, D]
        pairs = grid.pairs  # [B, Tg-1, S]
        if not self.params.hard_weighted:
            # Only valid pairs go through the head: cheaper than the dense grid and the same mean.
            predicted = self.dyn_head(grid.feats[:, :-1][pairs][:, self.input_start:])  # [P, D]
            if predicted.shape[0] == 0:
                return predicted.sum() * 0.0
            return (predicted - target_change[pairs]).abs().mean()
        # The softmax over pairs (per sample, or over the whole batch) takes the rectangular [B, pairs, D]
        # layout and a validity mask.
        b, steps, s, _ = target_change.shape
        no_grad_like_release = torch.no_grad() if self.params.paper_compat else contextlib.nullcontext()
        with no_grad_like_release:
            predicted = self.dyn_head(grid.feats[:, :-1, :, self.input_start:])  # [B, Tg-1, S, D]
            if not pairs.any():
                return masked_mean(predicted, pairs) * 0.0
            return hard_weighted_loss(
                predicted.reshape(b, steps * s, -1),
                target_change.reshape(b, steps * s, -1),
                tau=self.params.tau,
                valid=pairs.reshape(b, steps * s),
                scope=self.params.weight_scope,
            )
