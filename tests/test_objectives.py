"""Formula tests: every loss term of engine/objectives against values worked out by hand on small tensors."""
import math

import numpy as np
import pytest
import torch

from engine.objectives import (
    ContextLossConfig,
    MaskView,
    StepInputs,
    context_distance_weights,
    context_loss,
    layer_norm_levels,
    prediction_loss,
    scatter_to_grid,
)
from engine.objectives.action import ActionParams, ActionTerm, action_targets
from engine.objectives.base import parse_params
from engine.objectives.contrastive import temporal_triplet_loss
from engine.objectives.delta import delta_loss
from engine.objectives.factorized import orthogonality_loss, static_loss
from engine.objectives.hamiltonian import symplectic_euler
from engine.objectives.hard_region import HardRegionParams, HardRegionTerm
from engine.objectives.kinematic import KinematicParams, KinematicTerm, kinematic_loss
from engine.objectives.latent_dynamics import LatentDynamicsParams, LatentDynamicsTerm
from engine.objectives.sigreg import epps_pulley, slice_directions, sliced_epps_pulley
from engine.objectives.spectral import spectral_loss
from engine.objectives.velgate import background_gate, gated_velocity_loss



def full_view(student: torch.Tensor, grid, target: torch.Tensor | None = None) -> MaskView:
    """A mask view whose context is the whole grid (every pair valid); student [B, N, D]."""
    b, n, _ = student.shape
    idx = torch.arange(n).expand(b, n)
    target = student.detach() if target is None else target
    return MaskView(idx, idx[:, :0], student, student[:, :0], student, target[:, :0], target, grid)


def inputs_for(view: MaskView, target: torch.Tensor, grid, video=None, step=0, tubelet=1, patch=1) -> StepInputs:
    video = torch.zeros(target.shape[0], 3, grid[0] * tubelet, grid[1] * patch, grid[2] * patch) if video is None else video
    return StepInputs(target, video, grid, tubelet, patch, step, [view])


# ---------------------------------------------------------------- baseline JEPA terms

def test_layer_norm_levels_normalises_each_level_separately():
    feats = torch.tensor([[[1.0, 3.0, 10.0, 30.0]]])  # two levels of width 2
    h = layer_norm_levels(feats, levels=2)
    expected = torch.tensor([[[-1.0, 1.0, -1.0, 1.0]]])  # each pair is (mean ∓ std) of its own level
    torch.testing.assert_close(h, expected, atol=1e-4, rtol=0)


def test_prediction_loss_is_mean_absolute_error():
    pred = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    assert prediction_loss(pred, target).item() == pytest.approx((1 + 2 + 0 + 2) / 4)


def test_context_weights_are_sqrt_of_nearest_masked_distance():
    grid = (2, 2, 2)  # index = t*4 + h*2 + w
    context = torch.tensor([[0, 1]])  # (0,0,0), (0,0,1)
    target = torch.tensor([[7]])  # (1,1,1)
    w = context_distance_weights(context, target, grid)
    expected = torch.tensor([[math.sqrt(math.sqrt(3.0)), math.sqrt(math.sqrt(2.0))]])
    torch.testing.assert_close(w, expected)
    # Nearest of several masked tokens wins: (0,0,0) is 1 step from (0,1,0) = index 2.
    w2 = context_distance_weights(torch.tensor([[0]]), torch.tensor([[2, 7]]), grid)
    assert w2.item() == pytest.approx(1.0)


def test_context_loss_divides_each_token_error_by_its_weight():
    pred = torch.tensor([[[2.0, 2.0], [4.0, 0.0]]])
    target = torch.zeros(1, 2, 2)
    weights = torch.tensor([[1.0, 4.0]])
    # token errors 2 and 2; divided by 1 and 4 -> (2 + 0.5) / 2
    assert context_loss(pred, target, weights).item() == pytest.approx(1.25)
    assert context_loss(pred, target, None).item() == pytest.approx(2.0)


def test_context_lambda_schedule():
    cfg = ContextLossConfig(lambda_value=0.5, lambda_start=100, lambda_end=300)
    assert cfg.lambda_at(0) == 0.0
    assert cfg.lambda_at(99) == 0.0
    assert cfg.lambda_at(100) == 0.0
    assert cfg.lambda_at(200) == pytest.approx(0.25)
    assert cfg.lambda_at(300) == 0.5
    assert cfg.lambda_at(10_000) == 0.5
    paper = ContextLossConfig()
    assert (paper.lambda_start, paper.lambda_end, paper.lambda_value) == (15_000, 30_000, 0.5)
    with pytest.raises(ValueError):
        ContextLossConfig(lambda_start=10, lambda_end=5)


# ---------------------------------------------------------------- the shared grid helper

def test_scatter_to_grid_places_features_and_finds_valid_pairs():
    grid = (3, 1, 2)  # S = 2 locations, 3 steps; index = t*2 + s
    idx = torch.tensor([[0, 1, 2, 5]])  # visible: (t0,s0) (t0,s1) (t1,s0) (t2,s1)
    feats = torch.arange(1.0, 5.0).view(1, 4, 1)
    g = scatter_to_grid(feats, idx, grid)
    assert g.feats[0, :, :, 0].tolist() == [[1.0, 2.0], [3.0, 0.0], [0.0, 4.0]]
    assert g.pairs[0].tolist() == [[True, False], [False, False]]
    assert g.full_time[0].tolist() == [False, False]


# ---------------------------------------------------------------- HW

def test_hw_weights_are_k_softmax_without_gradient():
    torch.manual_seed(0)
    pred = torch.randn(2, 5, 3, requires_grad=True)
    target = torch.randn(2, 5, 3)
    tau = 0.7
    view = MaskView(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long), pred[:, :0], pred,
                    pred[:, :0], target, target[:, :0], (1, 1, 5))
    term = HardRegionTerm(HardRegionParams(tau=tau), feat_dim=3)
    loss = term.view_loss(view, None)
    errors = (pred - target).abs().mean(-1).detach()  # [B, K]
    weights = 5 * torch.softmax(errors / tau, dim=-1)
    assert loss.item() == pytest.approx((weights * errors).mean().item(), rel=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.full((2,), 5.0))
    # The weights act as constants: d loss / d pred = w · sign(pred − target) / (D · B·K).
    loss.backward()
    implied = pred.grad * 3 * 10 / torch.sign(pred - target).detach()
    torch.testing.assert_close(implied, weights.unsqueeze(-1).expand(-1, -1, 3), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Delta, FWM, LTC, Spectral, VelGate

def test_delta_loss_hand_value():
    student = torch.tensor([[[[0.0]], [[3.0]]]])  # [B=1, Tg=2, S=1, D=1]: Δz = 3
    target = torch.tensor([[[[1.0]], [[2.0]]]])  # Δh = 1
    pairs = torch.tensor([[[True]]])
    assert delta_loss(student, target, pairs).item() == pytest.approx(2.0)
    assert delta_loss(student, target, ~pairs).item() == 0.0


def test_fwm_static_loss_hand_value():
    app = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[2.0, 0.0], [5.0, 5.0]]]])  # [1, Tg=2, S=2, 2]
    pairs = torch.tensor([[[True, False]]])  # only location 0 is a valid pair
    assert static_loss(app, pairs).item() == pytest.approx((1 + 2) / 2)


def test_fwm_orthogonality_is_zero_for_independent_subspaces():
    app = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [0.0, -2.0], [0.0, -2.0]])
    dyn = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])  # varies only where app is constant per pair
    assert orthogonality_loss(app, dyn).item() == pytest.approx(0.0, abs=1e-12)
    # Correlated: app = dyn = [1, -1, 1, -1] -> centred, cov = 4/3, squared = 16/9.
    x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    assert orthogonality_loss(x, x).item() == pytest.approx(16 / 9)


def test_ltc_triplet_hand_values():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    student = torch.stack([e0, e0]).view(1, 2, 1, 2)
    pairs = torch.tensor([[[True]]])
    good = torch.stack([e0, e1]).view(1, 2, 1, 2)  # pos = 1, neg = 0 -> max(0, 0.5 − 1 + 0) = 0
    bad = torch.stack([e1, e0]).view(1, 2, 1, 2)  # pos = 0, neg = 1 -> 0.5 + 1 = 1.5
    assert temporal_triplet_loss(student, good, pairs, 0.5).item() == pytest.approx(0.0)
    assert temporal_triplet_loss(student, bad, pairs, 0.5).item() == pytest.approx(1.5)


def test_spectral_loss_hand_value():
    student = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)  # rFFT of an impulse = [1, 1, 1]
    target = torch.zeros(1, 4, 1, 1)
    locations = torch.tensor([[True]])
    # bins weighted linspace(0.1, 1, 3) = [0.1, 0.55, 1.0]; mean = 0.55
    assert spectral_loss(student, target, locations, 0.1, 1.0).item() == pytest.approx(0.55)
    assert spectral_loss(student, target, ~locations, 0.1, 1.0).item() == 0.0


def test_velgate_gates_slow_locations_only():
    # target speeds at t=0 over 4 locations: 0, 1, 2, 3 -> median 1.5 -> locations 0 and 1 gated
    target = torch.zeros(1, 2, 4, 1)
    target[0, 1, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    gate = background_gate(target, 0.5)
    assert gate[0, 0].tolist() == [True, True, False, False]
    student = torch.zeros(1, 2, 4, 1)
    student[0, 1, :, 0] = torch.tensor([4.0, 8.0, 100.0, 100.0])
    pairs = torch.ones(1, 1, 4, dtype=torch.bool)
    assert gated_velocity_loss(student, gate, pairs).item() == pytest.approx((4 + 8) / 4)


# ---------------------------------------------------------------- LD and HW-LD

def _ld_setup(hard_weighted: bool, paper_compat: bool = False, weight_scope: str = "batch"):
    torch.manual_seed(1)
    grid = (3, 1, 2)
    student = torch.randn(2, 6, 4, requires_grad=True)
    target = torch.randn(2, 6, 4)
    params = LatentDynamicsParams(hidden_dim=5, hard_weighted=hard_weighted, tau=0.5, weight_scope=weight_scope,
                                  paper_compat=paper_compat)
    term = LatentDynamicsTerm(params, 4)
    view = full_view(student, grid, target)
    return term, view, inputs_for(view, target, grid), student, target


def test_ld_loss_matches_formula():
    term, view, inputs, student, target = _ld_setup(hard_weighted=False)
    z = student.view(2, 3, 2, 4)
    h = target.view(2, 3, 2, 4)
    expected = (term.dyn_head(z[:, :-1]) - (h[:, 1:] - h[:, :-1])).abs().mean()
    assert term.view_loss(view, inputs).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weight_scope", ["batch", "sample"])
def test_hw_ld_weights_detached_but_loss_trains_the_head(weight_scope):
    term, view, inputs, student, target = _ld_setup(hard_weighted=True, weight_scope=weight_scope)
    loss = term.view_loss(view, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in term.dyn_head.parameters()]
    assert all(g.abs().sum() > 0 for g in grads)
    # Reference: the same weighted loss with the weights explicitly detached.
    term.zero_grad()
    z, h = student.view(2, 3, 2, 4), target.view(2, 3, 2, 4)
    err = (term.dyn_head(z[:, :-1]) - (h[:, 1:] - h[:, :-1])).abs().mean(-1).flatten(1)  # [B, pairs]
    if weight_scope == "sample":
        weights = err.shape[1] * torch.softmax(err.detach() / 0.5, dim=-1)
    else:
        weights = err.numel() * torch.softmax(err.detach().flatten() / 0.5, dim=0).view_as(err)
    reference = (weights * err).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for g, p in zip(grads, term.dyn_head.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_hw_ld_paper_compat_trains_nothing():
    term, view, inputs, student, _ = _ld_setup(hard_weighted=True, paper_compat=True)
    loss = term.view_loss(view, inputs)
    assert not loss.requires_grad
    fixed, *_ = _ld_setup(hard_weighted=True, paper_compat=False)
    fixed.load_state_dict(term.state_dict())
    assert fixed.view_loss(view, inputs).item() == pytest.approx(loss.item(), rel=1e-6)


def _hw_ld_on_clips_of_varying_difficulty(weight_scope: str, seed: int = 4):
    """HW-LD on 8 clips whose target changes grow from clip 0 to clip 7; each clip sees its own 11 of 16
    tokens, so clips differ in their number of valid (t, t+1) pairs too."""
    torch.manual_seed(seed)
    grid, b, d, visible = (4, 2, 2), 8, 6, 11
    n = grid[0] * grid[1] * grid[2]
    context_idx = torch.stack([torch.randperm(n)[:visible].sort().values for _ in range(b)])  # [B, Kc]
    student = torch.randn(b, visible, d)
    scale = torch.linspace(0.1, 3.0, b).view(b, 1, 1)
    target = scale * torch.randn(b, n, d).cumsum(1)                       # easy clips change little
    view = MaskView(context_idx, context_idx[:, :0], student, student[:, :0], student, target[:, :0],
                    target.gather(1, context_idx.unsqueeze(-1).expand(-1, -1, d)), grid)
    params = LatentDynamicsParams(hidden_dim=5, hard_weighted=True, tau=1.0, weight_scope=weight_scope)
    torch.manual_seed(0)
    term = LatentDynamicsTerm(params, d)
    return term, view, inputs_for(view, target, grid), view.student_grid


def test_hw_ld_batch_scope_is_the_released_flattened_softmax():
    term, view, inputs, grid_feats = _hw_ld_on_clips_of_varying_difficulty("batch")
    loss = term.view_loss(view, inputs)
    # The released code: ld_err[valid_pairs] flattens the batch, w = softmax(err_mean/τ)·P over all P pairs.
    target = inputs.target_grid
    ld_err = (term.dyn_head(grid_feats.feats[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs()
    valid_pairs = grid_feats.pairs
    with torch.no_grad():
        err_valid = ld_err[valid_pairs]                                    # [P, D]
        err_mean = err_valid.mean(dim=-1)
        w = torch.softmax(err_mean / 1.0, dim=-1)
        w = w * w.shape[-1]
        released = (err_valid * w.unsqueeze(-1)).mean()
    assert loss.item() == pytest.approx(released.item(), rel=1e-5)
    # Per sample, the weight moves between clips: easy clips get less, hard ones more, than per-sample.
    per_sample, *_ = _hw_ld_on_clips_of_varying_difficulty("sample")
    per_sample.load_state_dict(term.state_dict())
    assert abs(per_sample.view_loss(view, inputs).item() - released.item()) > 0.05 * released.item()
    clip_of_pair = torch.arange(8).view(8, 1, 1).expand_as(valid_pairs)[valid_pairs]
    share_batch = torch.zeros(8).index_add_(0, clip_of_pair, w) / w.sum()
    share_sample = valid_pairs.flatten(1).sum(1) / valid_pairs.sum()     # per-sample softmax: mean weight 1 a clip
    ratio = share_batch / share_sample
    assert ratio[0] < 0.9 and ratio[-1] > 1.1


def test_ld_weight_scope_is_checked():
    assert LatentDynamicsParams().weight_scope == "batch"
    with pytest.raises(ValueError, match="weight_scope"):
        LatentDynamicsTerm(LatentDynamicsParams(hard_weighted=True, weight_scope="row"), feat_dim=8)


def test_ld_reads_only_z_dyn():
    term = LatentDynamicsTerm(LatentDynamicsParams(input="dyn", app_ratio=0.5, hidden_dim=3), feat_dim=8)
    assert term.dyn_head[0].in_features == 4 and term.dyn_head[-1].out_features == 8
    with pytest.raises(ValueError):
        LatentDynamicsTerm(LatentDynamicsParams(input="both"), feat_dim=8)


# ---------------------------------------------------------------- AC

def test_action_targets_are_mean_colour_changes():
    video = torch.zeros(1, 3, 4, 2, 2)  # tubelet 2, patch 2 -> grid (2, 1, 1)
    video[:, :, 2:] = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1, 1)
    video[:, 0, 3, 0, 0] = 4.5  # one pixel of the second tubelet: red mean (0.5·7 + 4.5)/8 = 1.0
    actions = action_targets(video, tubelet=2, patch=2)
    torch.testing.assert_close(actions, torch.tensor([[[[1.0, -1.0, 2.0]]]]))


def test_action_loss_with_a_silent_head_is_mean_abs_action():
    grid = (2, 1, 1)
    video = torch.zeros(1, 3, 4, 2, 2)
    video[:, :, 2:] = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1, 1)
    term = ActionTerm(ActionParams(hidden_dim=4), feat_dim=6)
    torch.nn.init.zeros_(term.action_head[-1].weight)
    torch.nn.init.zeros_(term.action_head[-1].bias)
    student = torch.randn(1, 2, 6)
    view = full_view(student, grid)
    loss = term.view_loss(view, inputs_for(view, student, grid, video=video, tubelet=2, patch=2))
    assert loss.item() == pytest.approx((0.5 + 1.0 + 2.0) / 3)


# ---------------------------------------------------------------- Kinematic

def test_kinematic_velocity_acceleration_huber_split():
    h = torch.tensor([0.0, 1.0, 4.0]).view(1, 3, 1, 1)  # velocities 1, 3; acceleration 2
    assert kinematic_loss(h, 1, "l1", 0.1).item() == pytest.approx(2.0)
    assert kinematic_loss(h, 2, "l1", 0.1).item() == pytest.approx(2.0)
    assert kinematic_loss(h[:, :2], 2, "l1", 0.1).item() == pytest.approx(1.0)  # T < 3 falls back to velocity
    small = torch.tensor([0.0, 0.05]).view(1, 2, 1, 1)  # |Δ| ≤ δ: 0.5Δ²
    assert kinematic_loss(small, 1, "huber", 0.1).item() == pytest.approx(0.5 * 0.05**2)
    assert kinematic_loss(h[:, :2], 1, "huber", 0.1).item() == pytest.approx(0.1 * (1.0 - 0.05))
    features = torch.zeros(1, 2, 1, 4)
    features[0, 1] = torch.tensor([1.0, 1.0, 9.0, 9.0])
    split = KinematicTerm(KinematicParams(dim_fraction=0.5), feat_dim=4)
    view = full_view(features.view(1, 2, 4), (2, 1, 1))
    inputs = inputs_for(view, features.view(1, 2, 4), (2, 1, 1))
    assert split.step_loss(inputs).item() == pytest.approx(1.0)


def test_kinematic_anneal_schedule_is_a_per_epoch_cosine():
    term = KinematicTerm(KinematicParams(order=2, anneal=True, anneal_epochs=100, steps_per_epoch=300), 4)
    assert term.schedule(0) == pytest.approx(1.0)
    assert term.schedule(299) == pytest.approx(1.0)
    assert term.schedule(50 * 300) == pytest.approx(0.5)
    assert term.schedule(100 * 300) == pytest.approx(0.0)
    assert term.schedule(10**7) == pytest.approx(0.0)
    assert KinematicTerm(KinematicParams(), 4).schedule(12345) == 1.0


# ---------------------------------------------------------------- SIGReg

def _epps_pulley_numpy(x: np.ndarray, t_max: float, n_points: int) -> float:
    """Independent check: complex ECF on the symmetric grid over [−t_max, t_max]."""
    t = np.linspace(-t_max, t_max, 2 * n_points - 1)
    ecf = np.exp(1j * np.outer(x, t)).mean(axis=0)
    integrand = np.abs(ecf - np.exp(-t**2 / 2)) ** 2 * np.exp(-t**2 / 2)
    return len(x) * float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t)))


def test_epps_pulley_matches_independent_computation():
    x = np.array([0.3, -1.2, 2.0, 0.0, 0.7])
    ours = epps_pulley(torch.tensor(x, dtype=torch.float64).view(-1, 1), 3.0, 17)
    assert ours.item() == pytest.approx(_epps_pulley_numpy(x, 3.0, 17), rel=1e-5)
    # One sample at 0: |1 − e^{−t²/2}|² e^{−t²/2}, integrated by hand with numpy's trapezoid.
    assert epps_pulley(torch.zeros(1, 1), 3.0, 17).item() == pytest.approx(_epps_pulley_numpy(np.zeros(1), 3.0, 17),
                                                                           rel=1e-5)


def test_sigreg_small_for_gaussian_large_for_collapse():
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(512, 16, generator=gen)
    collapsed = torch.zeros(512, 16) + 0.01 * torch.randn(512, 16, generator=gen)
    directions = slice_directions(16, 64, seed=3, device=torch.device("cpu"))
    torch.testing.assert_close(directions.norm(dim=0), torch.ones(64))
    torch.testing.assert_close(directions, slice_directions(16, 64, seed=3, device=torch.device("cpu")))
    small = sliced_epps_pulley(gaussian, directions)
    large = sliced_epps_pulley(collapsed, directions)
    assert small.item() < 2.0 < 50.0 < large.item()


# ---------------------------------------------------------------- Hamiltonian

def test_symplectic_euler_step_with_a_quadratic_energy():
    def energy(q, p):  # harmonic oscillator H = (q² + p²) / 2: ∂H/∂p = p, ∂H/∂q = q
        return 0.5 * (q.square() + p.square()).sum()

    q = torch.tensor([[1.0, 2.0]], requires_grad=True)
    p = torch.tensor([[0.5, -1.0]], requires_grad=True)
    q_next, p_next = symplectic_euler(energy, q, p, dt=0.1)
    torch.testing.assert_close(q_next, torch.tensor([[1.05, 1.9]]))  # q + dt·p
    torch.testing.assert_close(p_next, torch.tensor([[0.5 - 0.105, -1.0 - 0.19]]))  # p − dt·q'
    (q_next.sum() + p_next.sum()).backward()
    assert q.grad is not None and p.grad is not None


# ---------------------------------------------------------------- parameters

def test_parse_params_names_unknown_keys_and_wrong_types():
    assert parse_params(HardRegionParams, {"tau": 2}, "hw").tau == 2.0
    with pytest.raises(ValueError, match="hw.*temperature"):
        parse_params(HardRegionParams, {"temperature": 1.0}, "hw")
    with pytest.raises(TypeError, match="tau"):
        parse_params(HardRegionParams, {"tau": "warm"}, "hw")
