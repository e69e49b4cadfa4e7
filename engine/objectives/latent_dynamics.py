"""LD: a dynamics head predicts the target's latent change from the student feature at t
(paper-spec §3.1 "LD", "FWM-LD", and with hard-region weighting "HW-LD", "FWM-HW-LD")."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernels import hard_weighted_loss
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs, split_dims
from engine.objectives.grid import masked_mean

INPUTS = ("all", "dyn")
WEIGHT_SCOPES = ("batch", "sample")


@dataclass(frozen=True)
class LatentDynamicsParams:
    input: str = "all"
    """"all": the head reads the whole student feature; "dyn": only Z_dyn (FWM-LD, FWM-HW-LD)."""
    app_ratio: float = 0.5
    """Fraction of dims in Z_app when input is "dyn"; Z_dyn is the rest."""
    hidden_dim: int = 256
    """Width of the dynamics head's hidden layer."""
    hard_weighted: bool = False
    """Reweight the per-pair LD errors by K·softmax(e/τ) over valid pairs, without gradient (HW-LD)."""
    tau: float = 1.0
    """Temperature of that softmax."""
    weight_scope: str = "batch"
    """With hard_weighted: "batch" = one softmax over all valid pairs of the batch, K = their count (the
    released code; docs/paper-deviations.md); "sample" = one softmax per sample over its own valid pairs."""


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class LatentDynamicsTerm(MaskViewTerm):
    """L_LD = mean over valid pairs of |dyn_head(z_t) − (h_{t+1} − h_t)|.

    With `hard_weighted` the errors are reweighted per valid pair; the weights carry no gradient, the
    weighted loss does. `paper_compat` reproduces the released code, which built the whole weighted LD
    loss under no_grad so that it trained nothing (paper-spec §8.1)."""

    Params = LatentDynamicsParams

    def __init__(self, params: LatentDynamicsParams, feat_dim: int, paper_compat: bool = False):
        super().__init__(params, feat_dim, paper_compat)
        if params.input not in INPUTS:
            raise ValueError(f"term 'ld': input must be one of {INPUTS}, got {params.input!r}")
        if params.weight_scope not in WEIGHT_SCOPES:
            raise ValueError(f"term 'ld': weight_scope must be one of {WEIGHT_SCOPES}, got {params.weight_scope!r}")
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
        no_grad_like_release = torch.no_grad() if self.paper_compat else contextlib.nullcontext()
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
