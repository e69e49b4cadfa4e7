"""The composed JEPA step on a tiny model, for every registered variant, with the real mask generators."""
import math

import pytest
import torch

from engine.jepa import JEPA, JEPAConfig, trained_encoder_key
from engine.masking import build_mask_generator
from engine.models import Predictor, VisionTransformer, make_ema_target, model_preset, predictor_preset
from engine.objectives import VARIANTS, ContextLossConfig

# λ_ctx > 0 at the test step, so the predictor's context projection is trained too.
CONTEXT = ContextLossConfig(lambda_value=0.5, lambda_start=0, lambda_end=10)
STEP = 5
HW_LD_VARIANTS = ("hw_ld", "fwm_hw_ld")



def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    cfg = model_preset("tiny", img_size=32, patch_size=8, num_frames=8, embed_dim=24, depth=2, num_heads=2,
                       pos_embed="sincos")  # grid (4, 4, 4), out_dim 48
    encoder = VisionTransformer(cfg)
    predictor = Predictor(predictor_preset("tiny", width=24, num_heads=2, depth=1, pos_embed="sincos"),
                          encoder.out_dim, cfg.grid, num_mask_tokens=2)
    return cfg, encoder, predictor


def tiny_batch(cfg, mask_generator: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=gen)
    video[:, :, :, 8:16, 8:16] += torch.linspace(0, 3, cfg.num_frames).view(1, 1, -1, 1, 1)  # some motion
    masks = build_mask_generator(mask_generator)(2, cfg.grid, gen, video=video)
    return video, masks


def run_variant(name: str, paper_compat: bool = False, seed: int = 0):
    cfg, encoder, predictor = tiny_parts(seed)
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, name, JEPAConfig(context_loss=CONTEXT, paper_compat=paper_compat))
    video, masks = tiny_batch(cfg, jepa.mask_generator, seed)
    losses = jepa(video, masks, STEP, target_encoder)
    losses["total"].backward()
    return jepa, target_encoder, losses


def ld_head_params(jepa):
    return [p for n, p in jepa.objective.named_parameters() if "dyn_head" in n]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_trains_every_parameter(name):
    jepa, target_encoder, losses = run_variant(name)
    assert torch.isfinite(losses["total"]), losses
    assert all(torch.isfinite(v) for v in losses.values())
    untrained = [n for n, p in jepa.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert untrained == []
    assert all(p.grad is None and not p.requires_grad for p in target_encoder.parameters())
    expected_keys = {"pred", "ctx", "lambda_ctx", "total"} | {t.key for t in VARIANTS[name].terms}
    assert set(losses) == expected_keys


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_paper_compat_only_silences_the_weighted_ld_head(name):
    jepa, target_encoder, losses = run_variant(name, paper_compat=True)
    assert torch.isfinite(losses["total"])
    silenced = set(map(id, ld_head_params(jepa))) if name in HW_LD_VARIANTS else set()
    for n, p in jepa.named_parameters():
        if id(p) in silenced:
            assert p.grad is None, n
        else:
            assert p.grad is not None and p.grad.any(), n
    assert all(p.grad is None for p in target_encoder.parameters())


@pytest.mark.parametrize("name", HW_LD_VARIANTS)
def test_weighted_ld_head_gradient_depends_on_paper_compat(name):
    fixed, _, fixed_losses = run_variant(name, paper_compat=False)
    compat, _, compat_losses = run_variant(name, paper_compat=True)
    assert ld_head_params(fixed) and all(p.grad is not None and p.grad.any() for p in ld_head_params(fixed))
    assert all(p.grad is None for p in ld_head_params(compat))
    # Same seed, same forward value: only the gradient differs.
    assert fixed_losses["ld"].item() == pytest.approx(compat_losses["ld"].item(), rel=1e-5)


def test_total_is_the_weighted_sum_of_the_reported_terms():
    jepa, _, losses = run_variant("fwm_hw_ld")
    coeffs = jepa.objective.effective_coeffs(STEP)
    expected = losses["pred"] + CONTEXT.lambda_at(STEP) * losses["ctx"]
    expected = expected + sum(coeffs[k] * losses[k] for k in coeffs)
    assert losses["lambda_ctx"].item() == pytest.approx(0.25)
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert coeffs == {"fwm_static": 0.05, "fwm_orth": 0.01, "hw": 1.0, "ld": 1.0}


def test_targets_are_detached_with_ema_and_online_without():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    video, _ = tiny_batch(cfg, "multiblock")
    with_ema = JEPA(encoder, predictor, "baseline", JEPAConfig(context_loss=CONTEXT))
    assert not with_ema.targets(video, target_encoder).requires_grad
    no_ema = JEPA(encoder, predictor, "kinematic", JEPAConfig(context_loss=CONTEXT))
    h = no_ema.targets(video, None)
    assert h.requires_grad
    per_level = h.view(2, -1, 2, 24)  # two levels of 24 dims, each LayerNormed without affine
    torch.testing.assert_close(per_level.mean(-1), torch.zeros(per_level.shape[:-1]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="target encoder is required"):
        with_ema.targets(video, None)


@pytest.mark.parametrize("disable_ema, paper_compat, expected", [
    (False, False, "target_encoder"), (False, True, "target_encoder"),
    (True, False, "encoder"), (True, True, "target_encoder"),
])
def test_trained_encoder_key(disable_ema, paper_compat, expected):
    assert trained_encoder_key(disable_ema, paper_compat) == expected


def test_no_ema_runs_record_and_return_the_trained_encoder():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    for name in ("kinematic", "kinematic_anneal", "sigreg_no_ema"):
        jepa = JEPA(encoder, predictor, name, JEPAConfig(context_loss=CONTEXT))
        assert jepa.disable_ema and jepa.trained_encoder == "encoder"
        assert jepa.encoder_for_eval(target_encoder) is encoder
        compat = JEPA(encoder, predictor, name, JEPAConfig(context_loss=CONTEXT, paper_compat=True))
        assert compat.trained_encoder == "target_encoder" and compat.encoder_for_eval(target_encoder) is target_encoder
    ema = JEPA(encoder, predictor, "sigreg", JEPAConfig(context_loss=CONTEXT))
    assert not ema.disable_ema and ema.encoder_for_eval(target_encoder) is target_encoder
    # The recipe may switch the EMA off for a variant that keeps it.
    forced = JEPA(encoder, predictor, "baseline", JEPAConfig(context_loss=CONTEXT, disable_ema=True))
    assert forced.disable_ema and forced.trained_encoder == "encoder"


def test_update_target_is_a_no_op_without_ema():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target_encoder.parameters()]
    JEPA(encoder, predictor, "kinematic", JEPAConfig(context_loss=CONTEXT)).update_target(target_encoder, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, target_encoder.parameters()))
    JEPA(encoder, predictor, "baseline", JEPAConfig(context_loss=CONTEXT)).update_target(target_encoder, 0.5)
    assert all(torch.allclose(b + 0.5, a) for a, b in zip(target_encoder.parameters(), before))


def test_context_loss_is_off_before_its_start():
    cfg, encoder, predictor = tiny_parts()
    target_encoder = make_ema_target(encoder)
    jepa = JEPA(encoder, predictor, "baseline", JEPAConfig())  # paper schedule: 0 until step 15k
    video, masks = tiny_batch(cfg, "multiblock")
    losses = jepa(video, masks, 100, target_encoder)
    assert losses["lambda_ctx"].item() == 0.0
    assert losses["total"].item() == pytest.approx(losses["pred"].item())
    assert math.isfinite(losses["ctx"].item()) and losses["ctx"].item() > 0


def test_kinematic_trains_the_encoder_through_the_full_clip_targets():
    cfg, encoder, predictor = tiny_parts()
    jepa = JEPA(encoder, predictor, "kinematic_accel", JEPAConfig(context_loss=CONTEXT))
    video, masks = tiny_batch(cfg, jepa.mask_generator)
    losses = jepa(video, masks, STEP, None)  # no EMA target needed: the online encoder makes h
    (grad,) = torch.autograd.grad(losses["kinematic"], encoder.patch_embed.weight)
    assert grad.abs().sum() > 0
