"""HW: hard-region weighting of the masked-prediction errors (docs/paper.md §3.1, "HW")."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kernels import hard_weighted_loss
from engine.fields import above, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs


@dataclass(frozen=True)
class HardRegionParams:
    tau: float = field_doc(1.0, "Softmax temperature of the weights K·softmax(e/τ) over the masked tokens of a "
                                "sample (per sample, as in the released code; the hard-weighted LD's softmax spans "
                                "the batch, see ld's weight_scope).", valid=above(0))


class HardRegionTerm(MaskViewTerm):
    """mean_i(w_i·e_i) with e_i = mean_d |ẑ_i − h_i| and w = K·softmax(e/τ) taken without gradient.

    It is added on top of the unchanged L_pred, so the masked prediction is pushed by (1 + coeff·w_i)."""

    Params = HardRegionParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        return hard_weighted_loss(view.pred_target, view.target_at_target, tau=self.params.tau)
