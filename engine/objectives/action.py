"""AC / FAC: an action head predicts a pixel-space "action", the per-token mean-RGB change between
consecutive token steps (docs/paper.md §3.1, "AC", "AC+HW", "FAC")."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from engine.fields import at_least, between, field_doc, one_of
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs, split_dims
from engine.objectives.latent_dynamics import INPUTS, mlp


@dataclass(frozen=True)
class ActionParams:
    input: str = field_doc("all", '"all": the head reads the whole student feature; "dyn": only Z_dyn (FAC).',
                           valid=one_of(*INPUTS))
    app_ratio: float = field_doc(0.5, 'Fraction of dims in Z_app when input is "dyn".',
                                 valid=between(0.0, 1.0, low_open=True, high_open=True))
    hidden_dim: int = field_doc(256, "Width of the action head's hidden layer.", valid=at_least(1))
    target_dim: int = field_doc(3, "Channels of the action target (RGB); must match the clip's channels.",
                                valid=at_least(1))


def token_mean_colour(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """Mean of each channel over every tubelet×patch×patch cell. video [B, C, T, H, W] -> [B, Tg, S, C]."""
    b, c, t, h, w = video.shape
    cells = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    means = cells.float().mean(dim=(3, 5, 7))  # [B, C, Tg, Hg, Wg]
    return means.flatten(3).permute(0, 2, 3, 1)  # [B, Tg, S, C]


def action_targets(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """a_t = mean colour at step t+1 minus at step t, per token location. -> [B, Tg-1, S, C]."""
    colour = token_mean_colour(video, tubelet, patch)
    return colour[:, 1:] - colour[:, :-1]


class ActionTerm(MaskViewTerm):
    """mean over valid pairs of |action_head(z_t) − a_t|: L1, as the released code computes it."""

    Params = ActionParams

    def __init__(self, params: ActionParams, feat_dim: int):
        super().__init__(params, feat_dim)
        self.input_start = split_dims(feat_dim, params.app_ratio) if params.input == "dyn" else 0
        self.channels = params.target_dim
        self.action_head = mlp(feat_dim - self.input_start, params.hidden_dim, self.channels)

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        pairs = grid.pairs  # [B, Tg-1, S]
        actions = action_targets(inputs.video, inputs.tubelet, inputs.patch)  # [B, Tg-1, S, C]
        if actions.shape[-1] != self.channels:
            raise ValueError(f"term 'ac': the head predicts {self.channels} channels, the clip has {actions.shape[-1]}")
        predicted = self.action_head(grid.feats[:, :-1][pairs][:, self.input_start:])  # [P, C]
        if predicted.shape[0] == 0:
            return predicted.sum() * 0.0
        return (predicted - actions[pairs].to(predicted.dtype)).abs().mean()
