"""FWM: the factorized world model's two regularisers on the Z_app / Z_dyn split of the student feature
(docs/paper.md §3.1, "FWM"). Z_app is the first ⌊ratio·D⌋ dims and Z_dyn the rest; with the multi-level
feature of blocks [2, 5, 8, 11] that is a split across layers (docs/paper.md §6.2)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from engine.fields import between, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs, split_dims
from engine.objectives.grid import masked_mean


@dataclass(frozen=True)
class FactorizedParams:
    app_ratio: float = field_doc(0.5, "Fraction of the feature dims that form Z_app (the appearance subspace).",
                                 valid=between(0.0, 1.0, low_open=True, high_open=True))


def static_loss(app: Tensor, pairs: Tensor) -> Tensor:
    """L_static: mean over valid pairs and dims of |Z_app(t+1) − Z_app(t)|. app [B, Tg, S, Da]."""
    return masked_mean((app[:, 1:] - app[:, :-1]).abs(), pairs)


def orthogonality_loss(app: Tensor, dyn: Tensor) -> Tensor:
    """L_orth: mean of the squared entries of the cross-covariance of Z_app and Z_dyn, in fp32.

    app [n, Da], dyn [n, Dd] are the same n visible tokens; zero when the subspaces are uncorrelated."""
    app = app.float()
    dyn = dyn.float()
    n = app.shape[0]
    if n < 2:
        return (app.sum() + dyn.sum()) * 0.0
    app_centred = app - app.mean(dim=0, keepdim=True)
    dyn_centred = dyn - dyn.mean(dim=0, keepdim=True)
    cross_cov = app_centred.transpose(0, 1) @ dyn_centred / (n - 1)  # [Da, Dd]
    return cross_cov.square().mean()


class FactorizedStaticTerm(MaskViewTerm):
    """Appearance should not change between consecutive steps."""

    Params = FactorizedParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        width = split_dims(self.feat_dim, self.params.app_ratio)
        grid = view.student_grid
        if grid.feats.shape[1] < 2:
            return grid.feats.sum() * 0.0
        return static_loss(grid.feats[..., :width], grid.pairs)


class FactorizedOrthogonalityTerm(MaskViewTerm):
    """Appearance and dynamics subspaces should be decorrelated over all visible tokens of the batch."""

    Params = FactorizedParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        width = split_dims(self.feat_dim, self.params.app_ratio)
        tokens = view.student.reshape(-1, view.student.shape[-1])  # [B·Kc, D]
        return orthogonality_loss(tokens[:, :width], tokens[:, width:])
