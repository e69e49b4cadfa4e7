"""Spectral: match the temporal spectrum of student and target, high frequencies weighted up
(docs/paper.md §3.1, "Spectral")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import at_least, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs


@dataclass(frozen=True)
class SpectralParams:
    low_weight: float = field_doc(0.1, "Weight of the zero-frequency bin; bins are weighted "
                                       "linspace(low_weight, high_weight).")
    high_weight: float = field_doc(1.0, "Weight of the highest-frequency bin.")
    min_steps: int = field_doc(4, "With fewer temporal tokens than this the term is zero (too few bins to mean "
                                  "anything).", valid=at_least(1))


def spectral_loss(student: Tensor, target: Tensor, locations: Tensor, low: float, high: float) -> Tensor:
    """mean over full-time locations, frequency bins and dims of w_f·|FFT_t(z) − FFT_t(h)|.

    student, target [B, Tg, S, D]; locations [B, S] bool, True where all Tg steps are visible.
    The FFT runs in fp32: bf16 has too little precision for it."""
    if not locations.any():
        return student.sum() * 0.0
    student_seq = student.float().transpose(1, 2)[locations]  # [L, Tg, D]
    target_seq = target.float().transpose(1, 2)[locations]
    diff = torch.fft.rfft(student_seq, dim=1) - torch.fft.rfft(target_seq, dim=1)  # [L, F, D] complex
    weights = torch.linspace(low, high, diff.shape[1], device=diff.device)  # [F]
    return (diff.abs() * weights[None, :, None]).mean()


class SpectralTerm(MaskViewTerm):
    Params = SpectralParams

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        if grid.feats.shape[1] < self.params.min_steps:
            return grid.feats.sum() * 0.0
        return spectral_loss(grid.feats, inputs.target_grid, grid.full_time, self.params.low_weight,
                             self.params.high_weight)
