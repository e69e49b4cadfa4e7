"""SIGReg: push the student's token distribution towards an isotropic Gaussian with a sliced
Epps–Pulley normality test (docs/paper.md §3.2, "SIGReg"; LeJEPA's regulariser, implemented here).

For a unit direction a, the projections x·a of n tokens have the empirical characteristic function
φ_n(t) = (1/n) Σ_k exp(i·t·x_k·a). The Epps–Pulley statistic measures its weighted squared distance to
the standard normal's φ(t) = exp(−t²/2):

    EP = n · ∫ |φ_n(t) − φ(t)|² · w(t) dt,   w(t) = exp(−t²/2),   t ∈ [−t_max, t_max].

|φ_n(−t) − φ(−t)| = |φ_n(t) − φ(t)| (complex conjugates), so the integral is twice the one over
[0, t_max], computed by the trapezoid rule on `n_points` nodes. The loss is the mean of EP over
`num_slices` random unit directions, drawn from a generator seeded by the step so every rank of a
data-parallel job uses the same directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import above, at_least, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs


@dataclass(frozen=True)
class SIGRegParams:
    num_slices: int = field_doc(1024, "Random unit directions the features are projected on.", valid=at_least(1))
    t_max: float = field_doc(3.0, "Upper end of the integration range of t.", valid=above(0))
    n_points: int = field_doc(17, "Trapezoid nodes on [0, t_max].", valid=at_least(1))
    seed: int = field_doc(0, "Added to the step to seed the slice directions.")


def epps_pulley(samples: Tensor, t_max: float = 3.0, n_points: int = 17) -> Tensor:
    """Epps–Pulley statistic of each column of samples [n, M] against N(0, 1) -> [M]."""
    samples = samples.float()
    n = samples.shape[0]
    t = torch.linspace(0.0, t_max, n_points, device=samples.device)  # [P]
    gaussian = torch.exp(-0.5 * t.square())  # [P]: both φ(t) and the weight w(t)
    phase = samples.unsqueeze(-1) * t  # [n, M, P]
    real = torch.cos(phase).mean(dim=0)  # [M, P]
    imag = torch.sin(phase).mean(dim=0)
    distance = (real - gaussian).square() + imag.square()  # |φ_n(t) − φ(t)|²
    half_integral = torch.trapezoid(distance * gaussian, t, dim=-1)  # [M]
    return n * 2.0 * half_integral


def slice_directions(dim: int, num_slices: int, seed: int, device: torch.device) -> Tensor:
    """[dim, num_slices] unit columns, identical for a given seed on any device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    directions = torch.randn(dim, num_slices, generator=generator).to(device)
    return directions / directions.norm(dim=0, keepdim=True)


def sliced_epps_pulley(tokens: Tensor, directions: Tensor, t_max: float = 3.0, n_points: int = 17) -> Tensor:
    """Mean Epps–Pulley statistic of tokens [n, D] projected on directions [D, M]; scalar, fp32."""
    return epps_pulley(tokens.float() @ directions, t_max, n_points).mean()


class SIGRegTerm(MaskViewTerm):
    """SIGReg on all flattened student context tokens of a mask config."""

    Params = SIGRegParams

    def __init__(self, params: SIGRegParams, feat_dim: int):
        super().__init__(params, feat_dim)
        # The mask configs of one step share the directions; drawing them once saves a D×M randn.
        self._cached: tuple[int, Tensor] | None = None
        self.slice_dim = feat_dim  # width of the features the directions act on (a projection may change it)

    def directions(self, step: int, device: torch.device) -> Tensor:
        seed = self.params.seed + step
        if self._cached is None or self._cached[0] != seed or self._cached[1].device != device:
            self._cached = (seed, slice_directions(self.slice_dim, self.params.num_slices, seed, device))
        return self._cached[1]

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        tokens = view.student.reshape(-1, view.student.shape[-1])  # [B·Kc, D]
        directions = self.directions(inputs.step, tokens.device)  # [D, M]
        return sliced_epps_pulley(tokens, directions, self.params.t_max, self.params.n_points)
