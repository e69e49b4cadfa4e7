"""Hamiltonian: one symplectic-Euler step of a learned energy carries the student's (q, p) at t to
the target's halves at t+1 (docs/paper.md §3.2, "Hamiltonian"). q is the first half of the feature and p
the second, which with the multi-level feature is a split across layers (docs/paper.md §6.2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.fields import above, at_least, field_doc
from engine.objectives.base import MaskView, MaskViewTerm, StepInputs


@dataclass(frozen=True)
class HamiltonianParams:
    dt: float = field_doc(0.1, "Integration step of the symplectic Euler update.", valid=above(0))
    hidden_dim: int = field_doc(256, "Width of the two hidden layers of the energy network.", valid=at_least(1))


class EnergyNet(nn.Module):
    """H(q, p) per token: MLP(D→hidden→hidden→1, GELU). The output layer has no bias: a constant shift
    of H changes no derivative, so such a bias could never receive a gradient."""

    def __init__(self, feat_dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feat_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, 1, bias=False),
        )

    def forward(self, q: Tensor, p: Tensor) -> Tensor:
        """q, p [P, D/2] -> total energy (scalar): H summed over tokens, so ∂H/∂q is per token."""
        return self.net(torch.cat([q, p], dim=-1)).sum()


def symplectic_euler(energy: EnergyNet, q: Tensor, p: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """q' = q + dt·∂H/∂p(q, p);  p' = p − dt·∂H/∂q(q', p). The graph is kept for the backward."""
    (dh_dp,) = torch.autograd.grad(energy(q, p), p, create_graph=True)
    q_next = q + dt * dh_dp
    (dh_dq,) = torch.autograd.grad(energy(q_next, p), q_next, create_graph=True)
    p_next = p - dt * dh_dq
    return q_next, p_next


class HamiltonianTerm(MaskViewTerm):
    """mean|q' − h_q(t+1)| + mean|p' − h_p(t+1)| over valid pairs and dims."""

    Params = HamiltonianParams

    def __init__(self, params: HamiltonianParams, feat_dim: int):
        super().__init__(params, feat_dim)
        if feat_dim % 2:
            raise ValueError(f"term 'hamiltonian' needs an even feature width, got {feat_dim}")
        self.half = feat_dim // 2
        self.energy = EnergyNet(feat_dim, params.hidden_dim)

    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        grid = view.student_grid
        pairs = grid.pairs  # [B, Tg-1, S]
        state = grid.feats[:, :-1][pairs]  # [P, D]
        following = inputs.target_grid[:, 1:][pairs]  # [P, D]
        if state.shape[0] == 0:
            return state.sum() * 0.0
        # Differentiating H needs a graph even in an evaluation pass under no_grad.
        with torch.enable_grad():
            if not state.requires_grad:
                state = state.detach().requires_grad_(True)
            q, p = state[:, : self.half], state[:, self.half:]
            q_next, p_next = symplectic_euler(self.energy, q, p, self.params.dt)
            return ((q_next - following[:, : self.half]).abs().mean()
                    + (p_next - following[:, self.half:]).abs().mean())
