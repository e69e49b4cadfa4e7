"""Pixel target: the predictor's output at the masked tokens also reconstructs their normalised pixels.

Not a term of the studied paper. It anchors the JEPA targets to the input (MAE's normalised-pixel
target), an option for small-scale runs where latent targets alone drift towards the clip's mean token
(see docs/learning.md). The head is a Linear from the predictor's output width to one tubelet's pixels.

    L_pix = mean over masked tokens and pixels of (head(ẑ_i) − norm(x_i))²,
    norm(x_i) = (x_i − mean(x_i)) / sqrt(var(x_i) + 1e-6) per tubelet (MAE's norm_pix_loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.fields import field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs


@dataclass(frozen=True)
class PixelTargetParams:
    """Parameters of the pixel target."""

    normalize: bool = field_doc(True, "Standardise each tubelet's pixels before the loss (MAE's norm_pix_loss); "
                                      "False regresses raw values.")


def tubelet_pixels(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """[B, C, T, H, W] -> [B, N, C * tubelet * patch * patch] in the encoder's (t, h, w) token order."""
    batch, channels, frames, height, width = video.shape
    grid_t, grid_h, grid_w = frames // tubelet, height // patch, width // patch
    x = video.reshape(batch, channels, grid_t, tubelet, grid_h, patch, grid_w, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, Tg, Hg, Wg, C, tubelet, patch, patch]
    return x.reshape(batch, grid_t * grid_h * grid_w, -1)


class PixelTargetTerm(MaskViewTerm):
    Params = PixelTargetParams

    def __init__(self, params: PixelTargetParams, feat_dim: int):
        super().__init__(params, feat_dim)
        self.head: nn.Linear | None = None  # sized by configure(): the term alone does not know the tubelet

    def configure(self, pixels_per_token: int) -> None:
        """Build the head for tubelets of C * tubelet * patch² values (JEPA calls this before training)."""
        self.head = nn.Linear(self.feat_dim, pixels_per_token)

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        pixels = tubelet_pixels(inputs.video.float(), inputs.tubelet, inputs.patch)  # [B, N, P]
        index = view.target_idx.unsqueeze(-1).expand(-1, -1, pixels.shape[-1])
        target = torch.gather(pixels, 1, index)  # [B, Kt, P]
        if self.params.normalize:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        if self.head is None or self.head.out_features != pixels.shape[-1]:
            raise ValueError(f"pixel target: the head predicts {None if self.head is None else self.head.out_features} "
                             f"values per token, the clip's tubelets hold {pixels.shape[-1]}")
        prediction = self.head(view.pred_target.float())  # [B, Kt, P]
        return (prediction - target).pow(2).mean()
