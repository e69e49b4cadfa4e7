"""`train_step` called directly on a tiny model (no DeepSpeed, no loader): what one optimizer step does and
what its metrics row says; the weight-decay policy of the model; the loop that calls it stays one page."""
from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
import torch

from engine.jepa import JEPA
from engine.masking import build_mask_generator
from engine.models import Predictor, VisionTransformer, make_ema_target
from engine.objectives.registry import resolve_variant
from engine.recipe import load_recipe
from engine.training.collapse import CollapseAlarm
from engine.training.step import StepParts, mask_seed, train_step
from engine.training.torch_engine import TorchEngine

REPO = Path(__file__).resolve().parents[1]
MICRO, ACCUM = 2, 2


def clips(fill=None):
    """Micro-batches of random clips [B, C, T, H, W] (or constant ones), the same sequence for the same call."""
    generator = torch.Generator().manual_seed(1)
    while True:
        video = torch.randn(MICRO, 3, 4, 32, 32, generator=generator)
        yield {"video": video if fill is None else torch.full_like(video, fill)}


def _parts(video_fill=None) -> StepParts:
    recipe = load_recipe(REPO / "recipes/demo/mixed_fwm.yaml", [
        "model.img_size=32", "model.num_frames=4", "model.patch_size=8", f"train.global_batch={MICRO * ACCUM}",
        f"train.micro_batch={MICRO}", "train.steps=4"], check_files=False)
    torch.manual_seed(0)
    masks = build_mask_generator(recipe.masking, default=resolve_variant(recipe.objective.spec()).mask_generator)
    encoder = VisionTransformer(recipe.model)
    predictor = Predictor(recipe.predictor, in_dim=encoder.out_dim, grid=recipe.model.grid,
                          num_mask_tokens=masks.num_mask_configs)
    jepa = JEPA(encoder, predictor, recipe.objective.spec(), recipe.loss)
    optimizer = torch.optim.AdamW(jepa.param_groups(recipe.optim.weight_decay), lr=recipe.optim.start_lr)
    return StepParts(TorchEngine(jepa, optimizer, accum=ACCUM), jepa, make_ema_target(encoder), masks,
                     clips(video_fill).__next__, recipe, ACCUM, torch.device("cpu"),
                     collapse=CollapseAlarm(recipe.collapse))


def test_one_step_trains_moves_the_ema_and_reports_the_mean_loss():
    parts = _parts()
    before = copy.deepcopy(parts.jepa)
    target_before = copy.deepcopy(parts.target)
    row = train_step(parts, 0)

    assert row["step"] == 1 and row["step_applied"] == 1 and row["nonfinite"] == 0.0
    assert row["lr"] == parts.recipe.optim.start_lr  # warmup starts there
    for column in ("loss", "loss.pred", "loss.ctx", "loss.fwm_static", "loss.fwm_orth", "lambda_ctx", "time.data",
                   "time.masks", "time.compute", "time.optimizer", "time.ema", "time.wall", "clips_per_s",
                   "tflops_per_s", "collapse.rank"):  # step 0 is one of the alarm's reference measurements
        assert column in row, column
    unchanged = {name for (name, a), b in zip(before.named_parameters(), parts.jepa.parameters()) if torch.equal(a, b)}
    assert unchanged == {"predictor.proj_context.bias"}  # only the context loss reaches it, and λ_ctx(0) = 0
    # EMA: target <- m * target + (1 - m) * online, with the step's momentum.
    m = row["ema_momentum"]
    for name, value in parts.target.state_dict().items():
        expected = m * target_before.state_dict()[name] + (1 - m) * parts.jepa.encoder.state_dict()[name]
        torch.testing.assert_close(value, expected)
    # The row's loss is the mean over the micro-batches of the JEPA total, same clips, same masks.
    totals, replay = [], clips()
    for micro in range(ACCUM):
        video = next(replay)["video"]
        generator = torch.Generator().manual_seed(mask_seed(parts.recipe.run.seed, 0, 0, micro))
        masks = parts.masks(MICRO, parts.recipe.model.grid, generator, video)
        with torch.no_grad():
            totals.append(float(before(video, masks, 0, target_encoder=target_before)["total"]))
    assert row["loss"] == pytest.approx(sum(totals) / ACCUM, rel=1e-5)


def test_a_non_finite_loss_skips_the_update_and_the_ema():
    parts = _parts(video_fill=float("nan"))
    before, target_before = copy.deepcopy(parts.jepa), copy.deepcopy(parts.target)
    row = train_step(parts, 0)
    assert row["nonfinite"] == 1.0 and row["step_applied"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), parts.jepa.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(target_before.parameters(), parts.target.parameters()))
    assert all(p.grad is None for p in parts.jepa.parameters())  # no gradient carried into the next step


def test_the_model_owns_its_weight_decay_policy():
    jepa = _parts().jepa
    exempt = jepa.no_weight_decay()
    named = dict(jepa.named_parameters())
    assert any(name.endswith("mask_tokens") for name in exempt) and any(name.endswith("bias") for name in exempt)
    assert all(named[name].ndim <= 1 or name.endswith("mask_tokens") for name in exempt)
    decay, no_decay = jepa.param_groups(0.04)
    assert decay["weight_decay"] == 0.04 and decay["apply_wd"] and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == sum(p.requires_grad for p in jepa.parameters())


def test_the_training_loop_reads_on_one_page():
    from engine.train import Trainer
    lines = [line for line in inspect.getsource(Trainer.run).splitlines() if line.strip()]
    assert len(lines) <= 40, len(lines)
