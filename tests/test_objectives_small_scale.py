"""The small-scale objectives of issue 23: the LeJEPA form of SIGReg, VICReg with one shared encoder, and the
random-teacher control (a target frozen at init). Values against hand computations on tiny tensors,
gradients where they belong, none where they must not flow, and the weights visible in the total."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from engine.jepa import JEPA, JEPAConfig, trained_encoder_key
from engine.masking import build_mask_generator
from engine.models import Predictor, VisionTransformer, make_ema_target, model_preset, predictor_preset
from engine.objectives import VARIANTS, ContextLossConfig, MaskView, StepInputs, Term, Variant, resolve_variant
from engine.objectives.lejepa import LeJEPASIGRegParams, LeJEPASIGRegTerm
from engine.objectives.vicreg import VICRegParams, VICRegTerm

REPO = Path(__file__).resolve().parents[1]
CONTEXT = ContextLossConfig(lambda_value=0.5, lambda_start=0, lambda_end=10)  # λ_ctx(5) = 0.25
STEP = 5


# ---------------------------------------------------------------- helpers

def hand_epps_pulley(x: list[float], t_max: float, n_points: int) -> float:
    """n · 2 ∫_0^t_max |φ_n(t) − e^{−t²/2}|² e^{−t²/2} dt by the trapezoid rule, in plain Python floats."""
    n = len(x)
    nodes = [t_max * i / (n_points - 1) for i in range(n_points)]
    values = []
    for t in nodes:
        re = sum(math.cos(t * v) for v in x) / n
        im = sum(math.sin(t * v) for v in x) / n
        g = math.exp(-t * t / 2)
        values.append(((re - g) ** 2 + im ** 2) * g)
    h = nodes[1] - nodes[0]
    return n * 2 * sum(h * (a + b) / 2 for a, b in zip(values, values[1:]))


def view_of(student: torch.Tensor) -> MaskView:
    """A mask view holding only the student tokens [B, Kc, D] (the terms here read nothing else)."""
    b, k, d = student.shape
    idx = torch.arange(k).expand(b, k)
    empty = student.new_zeros(b, 0, d)
    return MaskView(idx, idx[:, :0], student, empty, student, empty, student.detach(), (1, 1, k))


def inputs_of(view: MaskView, step: int = 0) -> StepInputs:
    b, k, d = view.student.shape
    return StepInputs(view.student.detach(), torch.zeros(b, 3, 1, 1, k), (1, 1, k), 1, 1, step, [view])


def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    cfg = model_preset("tiny", img_size=32, patch_size=8, num_frames=8, embed_dim=24, depth=2, num_heads=2,
                       pos_embed="sincos")  # grid (4, 4, 4), out_dim 48
    encoder = VisionTransformer(cfg)
    predictor = Predictor(predictor_preset("tiny", width=24, num_heads=2, depth=1, pos_embed="sincos"),
                          encoder.out_dim, cfg.grid, num_mask_tokens=2)
    return cfg, encoder, predictor


def tiny_batch(cfg, mask_generator: str, seed: int = 0, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=gen)
    masks = build_mask_generator(mask_generator)(batch, cfg.grid, gen, video=video)
    return video, masks


# ---------------------------------------------------------------- LeJEPA SIGReg

# B = 2 clips of Kc = 3 one-dimensional tokens: a unit direction in 1-d is ±1, and the statistic is the same
# for x and −x (|φ_n(−t) − φ(−t)| = |φ_n(t) − φ(t)|), so the hand value does not depend on the slice.
TOKENS = [[0.3, -1.2, 2.0], [0.0, 0.7, -0.4]]


def test_lejepa_sigreg_matches_a_hand_computation():
    params = LeJEPASIGRegParams(num_slices=4, t_max=2.0, n_points=5, token_weight=0.7, pooled_weight=0.3)
    term = LeJEPASIGRegTerm(params, feat_dim=1)
    student = torch.tensor(TOKENS).unsqueeze(-1)  # [2, 3, 1]
    flat = [v for clip in TOKENS for v in clip]
    pooled = [sum(clip) / len(clip) for clip in TOKENS]
    expected = 0.7 * hand_epps_pulley(flat, 2.0, 5) + 0.3 * hand_epps_pulley(pooled, 2.0, 5)
    assert term.step_loss(inputs_of(view_of(student))).item() == pytest.approx(expected, rel=1e-5)


def test_lejepa_sigreg_through_a_projection_matches_a_hand_computation():
    params = LeJEPASIGRegParams(num_slices=3, t_max=3.0, n_points=7, projection_dim=1)
    term = LeJEPASIGRegTerm(params, feat_dim=1)
    with torch.no_grad():
        term.projection.weight.fill_(2.0)
        term.projection.bias.fill_(0.5)
    student = torch.tensor(TOKENS).unsqueeze(-1)
    flat = [2.0 * v + 0.5 for clip in TOKENS for v in clip]
    pooled = [2.0 * sum(clip) / len(clip) + 0.5 for clip in TOKENS]  # pool, then project
    expected = hand_epps_pulley(flat, 3.0, 7) + hand_epps_pulley(pooled, 3.0, 7)
    assert term.step_loss(inputs_of(view_of(student))).item() == pytest.approx(expected, rel=1e-5)


def test_lejepa_sigreg_gradient_reaches_the_student_and_every_projection_weight():
    term = LeJEPASIGRegTerm(LeJEPASIGRegParams(num_slices=8, projection_dim=4, projection_hidden=6), feat_dim=5)
    assert term.directions(0, torch.device("cpu")).shape == (4, 8)  # slices live in the projected space
    student = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    term.step_loss(inputs_of(view_of(student))).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    named = dict(term.named_parameters())
    assert set(named) == {"projection.0.weight", "projection.0.bias", "projection.2.weight", "projection.2.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in named.values()), named.keys()


def test_lejepa_sigreg_pooled_part_alone_reads_one_sample_per_clip():
    params = LeJEPASIGRegParams(num_slices=2, t_max=2.0, n_points=5, token_weight=0.0, pooled_weight=1.0)
    student = torch.tensor(TOKENS).unsqueeze(-1)
    value = LeJEPASIGRegTerm(params, feat_dim=1).step_loss(inputs_of(view_of(student))).item()
    assert value == pytest.approx(hand_epps_pulley([sum(c) / 3 for c in TOKENS], 2.0, 5), rel=1e-5)
    with pytest.raises(ValueError, match="both 0"):
        LeJEPASIGRegTerm(LeJEPASIGRegParams(token_weight=0.0, pooled_weight=0.0), feat_dim=1)


@pytest.mark.parametrize("name, masks", [("lejepa", "multiblock"), ("lejepa_future", "future_predictive")])
def test_lejepa_variants_use_the_demo_values_and_the_online_encoder(name, masks):
    variant = VARIANTS[name]
    (term,) = variant.terms
    assert (term.name, term.coeff, variant.prediction_weight) == ("lejepa_sigreg", 0.05, pytest.approx(0.95))
    assert term.params == {"num_slices": 256, "t_max": 3.0, "n_points": 17}
    assert variant.disable_ema and not variant.frozen_target and variant.mask_generator == masks
    # The study's own SIGReg rows keep the paper's values.
    assert VARIANTS["sigreg_no_ema"].terms[0].params["num_slices"] == 1024
    assert VARIANTS["sigreg_no_ema"].prediction_weight == 1.0


def test_lejepa_total_is_one_minus_lambda_prediction_plus_lambda_sigreg():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, "lejepa", JEPAConfig(context_loss=CONTEXT))
    video, masks = tiny_batch(cfg, jepa.mask_generator)
    losses = jepa(video, masks, STEP, target_encoder)
    prediction = losses["pred"] + CONTEXT.lambda_at(STEP) * losses["ctx"]
    expected = 0.95 * prediction + 0.05 * losses["lejepa_sigreg"]
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(losses["total"].item() - (prediction + 0.05 * losses["lejepa_sigreg"]).item()) > 1e-4
    # The weight is the variant's: 0 leaves only the regulariser.
    only_sigreg = JEPA(encoder, predictor, {"name": "w0", "disable_ema": True, "prediction_weight": 0.0,
                                             "terms": [{"name": "lejepa_sigreg", "coeff": 0.05}]},
                       JEPAConfig(context_loss=CONTEXT))
    again = only_sigreg(video, masks, STEP, target_encoder)
    assert again["total"].item() == pytest.approx(0.05 * again["lejepa_sigreg"].item(), rel=1e-6)
    assert again["pred"].item() > 0


def test_lejepa_trains_the_online_encoder_through_prediction_targets_and_regulariser():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, "lejepa", JEPAConfig(context_loss=CONTEXT))
    assert jepa.trained_encoder == "encoder" and jepa.encoder_for_eval(target_encoder) is encoder
    video, masks = tiny_batch(cfg, jepa.mask_generator)
    assert jepa.targets(video, None).requires_grad  # the shared encoder gives the targets, with gradient
    losses = jepa(video, masks, STEP, None)  # no EMA target needed
    (grad,) = torch.autograd.grad(losses["lejepa_sigreg"], encoder.patch_embed.weight, retain_graph=True)
    assert grad.abs().sum() > 0
    losses["total"].backward()
    assert all(p.grad is None for p in target_encoder.parameters())


def test_prediction_weight_and_frozen_target_come_from_a_listing_and_are_checked():
    variant = resolve_variant({"name": "mine", "prediction_weight": 0.9, "frozen_target": True})
    assert variant.prediction_weight == 0.9 and variant.frozen_target and not variant.disable_ema
    with pytest.raises(ValueError, match="exclude each other"):
        Variant("both", frozen_target=True, disable_ema=True)
    with pytest.raises(ValueError, match="prediction_weight"):
        Variant("negative", prediction_weight=-0.1)


# ---------------------------------------------------------------- VICReg (EB-JEPA form)

def hand_vicreg(rows: list[list[float]], std_weight: float, cov_weight: float, gamma: float, eps: float) -> float:
    """std_weight·mean_d max(0, γ − sqrt(var_d + ε)) + cov_weight·Σ_{i≠j} C_ij² / D, plain Python, n − 1."""
    n, dim = len(rows), len(rows[0])
    mean = [sum(r[d] for r in rows) / n for d in range(dim)]
    cov = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) / (n - 1) for j in range(dim)] for i in range(dim)]
    variance = sum(max(0.0, gamma - math.sqrt(cov[d][d] + eps)) for d in range(dim)) / dim
    covariance = sum(cov[i][j] ** 2 for i in range(dim) for j in range(dim) if i != j) / dim
    return std_weight * variance + cov_weight * covariance


# 2 clips of 3 context tokens of 2 dims; small spread, so the hinge is active, and correlated dims.
VIC = [[[0.1, 0.4], [0.3, -0.2], [-0.5, 0.1]], [[0.2, 0.3], [0.6, 0.5], [-0.1, -0.3]]]


@pytest.mark.parametrize("on", ["tokens", "pooled", "both"])
def test_vicreg_matches_a_hand_computation(on):
    params = VICRegParams(std_weight=0.7, cov_weight=2.0, gamma=1.0, eps=1e-4, on=on)
    tokens = [row for clip in VIC for row in clip]
    pooled = [[sum(r[d] for r in clip) / 3 for d in range(2)] for clip in VIC]
    expected = {"tokens": hand_vicreg(tokens, 0.7, 2.0, 1.0, 1e-4), "pooled": hand_vicreg(pooled, 0.7, 2.0, 1.0, 1e-4)}
    expected["both"] = expected["tokens"] + expected["pooled"]
    assert expected["tokens"] > 0 and expected["pooled"] > 0
    value = VICRegTerm(params, feat_dim=2).step_loss(inputs_of(view_of(torch.tensor(VIC)))).item()
    assert value == pytest.approx(expected[on], rel=1e-5)


def test_vicreg_is_zero_for_decorrelated_unit_spread_and_refuses_one_sample():
    # Two dims, four samples: ±2 on each axis: std > γ, covariance 0 off the diagonal.
    spread = torch.tensor([[[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]])
    term = VICRegTerm(VICRegParams(on="tokens"), feat_dim=2)
    assert term.step_loss(inputs_of(view_of(spread))).item() == 0.0
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        VICRegTerm(VICRegParams(on="pooled"), feat_dim=2).step_loss(inputs_of(view_of(spread)))


def test_vicreg_gradient_reaches_the_student_and_every_projection_weight():
    term = VICRegTerm(VICRegParams(projection_dim=4, projection_hidden=6), feat_dim=5)
    student = 0.1 * torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(0))
    student.requires_grad_(True)
    term.step_loss(inputs_of(view_of(student))).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    named = dict(term.named_parameters())
    assert len(named) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in named.values())


@pytest.mark.parametrize("name, masks", [("vicreg", "multiblock"), ("vicreg_future", "future_predictive")])
def test_vicreg_variants_add_the_regulariser_with_one_shared_encoder(name, masks):
    variant = VARIANTS[name]
    assert variant.disable_ema and variant.mask_generator == masks and variant.prediction_weight == 1.0
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, name, JEPAConfig(context_loss=CONTEXT))
    assert jepa.trained_encoder == "encoder"
    video, masks_ = tiny_batch(cfg, jepa.mask_generator)
    losses = jepa(video, masks_, STEP, None)
    expected = losses["pred"] + CONTEXT.lambda_at(STEP) * losses["ctx"] + losses["vicreg"]
    assert losses["vicreg"].item() > 0
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(losses["vicreg"], encoder.patch_embed.weight, retain_graph=True)
    assert grad.abs().sum() > 0
    losses["total"].backward()
    assert all(p.grad is None for p in target_encoder.parameters())


# ---------------------------------------------------------------- random teacher (positive control)

def test_random_teacher_variant_and_its_trained_encoder():
    variant = VARIANTS["random_teacher"]
    assert variant.frozen_target and not variant.disable_ema and variant.terms == ()
    assert variant.prediction_weight == 1.0 and variant.mask_generator == "multiblock"
    for paper_compat in (False, True):  # the study had no frozen row: paper_compat changes nothing here
        assert trained_encoder_key(False, paper_compat, frozen_target=True) == "encoder"
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, "random_teacher", JEPAConfig(context_loss=CONTEXT))
    assert jepa.trained_encoder == "encoder" and jepa.encoder_for_eval(target_encoder) is encoder
    with pytest.raises(ValueError, match="frozen target"):
        JEPA(encoder, predictor, "random_teacher", JEPAConfig(context_loss=CONTEXT, disable_ema=True))


def test_random_teacher_targets_come_from_the_teacher_without_gradient():
    cfg, encoder, predictor = tiny_parts()
    teacher = make_ema_target(encoder)
    with torch.no_grad():
        for p in encoder.parameters():  # make student and teacher differ, as after a step of training
            p.add_(0.01 * torch.randn_like(p))
    jepa = JEPA(encoder, predictor, "random_teacher", JEPAConfig(context_loss=CONTEXT))
    video, masks = tiny_batch(cfg, jepa.mask_generator)
    h = jepa.targets(video, teacher)
    assert not h.requires_grad
    torch.testing.assert_close(h, torch.nn.functional.layer_norm(teacher(video).view(3, -1, 2, 24), (24,)).view_as(h))
    jepa(video, masks, STEP, teacher)["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert encoder.patch_embed.weight.grad.abs().sum() > 0


def test_random_teacher_target_stays_bit_equal_to_its_init_through_training_steps():
    """Three real optimizer steps (engine.training.step.train_step, the trainer's step and EMA update): the
    teacher's weights are bit-equal to the student's initial weights, while the student moved."""
    from engine.recipe import load_recipe
    from engine.training.step import StepParts, train_step
    from engine.training.torch_engine import TorchEngine

    recipe = load_recipe(REPO / "recipes/demo/ucf_random_teacher.yaml", [
        "model.img_size=32", "model.num_frames=4", "model.patch_size=8", "model.depth=1", "train.global_batch=2",
        "train.micro_batch=2", "train.steps=3", "optim.start_lr=1e-3", "optim.lr=1e-3", "ema.momentum=0.5",
        "ema.final_momentum=0.5"], check_files=False)
    torch.manual_seed(0)
    masks = build_mask_generator(recipe.masking, default=resolve_variant(recipe.objective.spec()).mask_generator)
    encoder = VisionTransformer(recipe.model)
    predictor = Predictor(recipe.predictor, in_dim=encoder.out_dim, grid=recipe.model.grid,
                          num_mask_tokens=masks.num_mask_configs)
    jepa = JEPA(encoder, predictor, recipe.objective.spec(), recipe.loss)
    init = copy.deepcopy(encoder.state_dict())
    target = make_ema_target(encoder)
    generator = torch.Generator().manual_seed(1)
    batches = iter(lambda: {"video": torch.randn(2, 3, 4, 32, 32, generator=generator)}, None)
    optimizer = torch.optim.AdamW(jepa.param_groups(recipe.optim.weight_decay), lr=recipe.optim.start_lr)
    parts = StepParts(TorchEngine(jepa, optimizer, accum=1), jepa, target, masks, batches.__next__, recipe, 1,
                      torch.device("cpu"))
    for step in range(3):
        assert train_step(parts, step)["step_applied"] == 1
    for name, value in target.state_dict().items():
        assert torch.equal(value, init[name]), name
    moved = [name for name, value in encoder.state_dict().items() if not torch.equal(value, init[name])]
    assert "patch_embed.weight" in moved and len(moved) > len(init) // 2


@pytest.mark.slow  # one DeepSpeed run of 2 steps: ~1 min on a busy 2-core machine
def test_random_teacher_run_keeps_the_teacher_at_init_and_exports_the_student(tmp_path):
    """`python -m engine.train` end to end: the checkpoint's target is bit-equal to the model's seeded init,
    trainer.json names the online encoder, and both the run's export and an export of its checkpoint hold
    the student's trained weights."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    from data_fixtures import FixtureSpec, write_dataset
    from proc_helpers import free_port

    from engine.export import export_checkpoint, load_encoder, read_metadata
    from engine.recipe import read_resolved_recipe

    shards = write_dataset(tmp_path / "shards", FixtureSpec(dataset="tiny", num_samples=8, num_frames=16, height=32,
                                                            width=32, samples_per_shard=8))
    recipe = {
        "run": {"name": "teacher", "out_dir": str(tmp_path / "runs"), "seed": 3},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2, "depth": 1},
        "predictor": {"preset": "tiny"},
        "objective": {"variant": "random_teacher"},
        "data": {"datasets": [{"root": str(shards), "frame_step": 1}], "num_workers": 1, "num_threads": 1},
        "train": {"steps": 2, "global_batch": 2, "micro_batch": 2, "checkpoint_every": 2, "progress_bar": False},
        "optim": {"lr": 3.0e-3, "start_lr": 3.0e-3, "final_lr": 3.0e-3, "warmup_steps": 0},
        "ema": {"momentum": 0.5, "final_momentum": 0.5},  # an EMA update would move the target a lot
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
    }
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "engine.train", "--recipe", str(path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run_dir = tmp_path / "runs" / "teacher"
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "trainer.json").read_text())["trained_encoder"] == "encoder"
    resolved = read_resolved_recipe(ckpt / "recipe.yaml")
    torch.manual_seed(resolved.run.seed)  # the trainer's init is a function of the seed alone
    init = VisionTransformer(resolved.model).state_dict()
    teacher = torch.load(ckpt / "trainer.pt", weights_only=True)["ema_target"]
    assert teacher.keys() == init.keys() and all(torch.equal(teacher[k], init[k]) for k in init)
    module = torch.load(ckpt / "ds" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    student = {k[len("encoder."):]: v for k, v in module.items() if k.startswith("encoder.")}
    assert not torch.equal(student["patch_embed.weight"], init["patch_embed.weight"])  # the student trained
    for exported in (run_dir / "encoder.safetensors", export_checkpoint(ckpt, tmp_path / "from_checkpoint.safetensors")):
        assert read_metadata(exported)["trained_encoder"] == "encoder"
        state = load_encoder(exported).state_dict()
        assert state.keys() == student.keys() and all(torch.equal(state[k], student[k]) for k in student), exported


def test_sigreg_small_is_prediction_plus_005_sigreg_of_the_context_tokens_with_online_targets():
    """The demo's variant: L_pred at weight 1 plus 0.05 × the sliced Epps–Pulley statistic of every context
    token (256 slices, the step's directions), computed here from the view's student tokens; the targets
    come from the online encoder, with gradient, and the EMA copy gets none."""
    from engine.objectives.sigreg import slice_directions, sliced_epps_pulley

    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, "sigreg_small", JEPAConfig(context_loss=CONTEXT))
    assert jepa.disable_ema and jepa.trained_encoder == "encoder"
    video, masks = tiny_batch(cfg, jepa.mask_generator)
    losses = jepa(video, masks, STEP, None)
    directions = slice_directions(encoder.out_dim, 256, STEP, video.device)
    by_view = []
    for mask in masks:
        student = encoder(video, keep_idx=mask.context_idx).float()  # [B, Kc, D]
        by_view.append(sliced_epps_pulley(student.reshape(-1, student.shape[-1]), directions))
    assert losses["sigreg"].item() == pytest.approx(torch.stack(by_view).mean().item(), rel=1e-5)
    prediction = losses["pred"] + CONTEXT.lambda_at(STEP) * losses["ctx"]
    assert losses["total"].item() == pytest.approx((prediction + 0.05 * losses["sigreg"]).item(), rel=1e-6)
    losses["total"].backward()
    assert encoder.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target_encoder.parameters())
