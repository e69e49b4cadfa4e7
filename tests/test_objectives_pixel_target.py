"""The pixel target term: token order of its pixel targets, and where its gradients go."""
import torch

from engine.jepa import JEPA
from engine.masking import build_mask_generator
from engine.models import Predictor, VisionTransformer, make_ema_target, model_preset, predictor_preset
from engine.objectives import Term, Variant
from engine.objectives.pixel_target import tubelet_pixels


def test_tubelet_pixels_follow_the_encoders_token_order():
    video = torch.randn(2, 3, 4, 16, 24)  # [B, C, T, H, W]: grid 2 x 2 x 3 with tubelet 2, patch 8
    pixels = tubelet_pixels(video, tubelet=2, patch=8)  # [B, N, P]
    assert pixels.shape == (2, 12, 3 * 2 * 8 * 8)
    # token n = (t, h, w) flattened t-major, as the Conv3d patch embedding's flatten(2) orders them
    t, h, w = 1, 0, 2
    n = (t * 2 + h) * 3 + w
    expected = video[1, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8].reshape(-1)
    assert torch.equal(pixels[1, n], expected)
    # the same order as the encoder: a patch embedding whose weights pick one pixel sees that pixel per token
    embed = torch.nn.Conv3d(3, 1, kernel_size=(2, 8, 8), stride=(2, 8, 8), bias=False)
    with torch.no_grad():
        embed.weight.zero_()
        embed.weight[0, 1, 1, 3, 5] = 1.0  # channel 1, second frame, row 3, column 5 of each tubelet
    picked = embed(video).flatten(2).transpose(1, 2)[..., 0]  # [B, N]
    index = (1 * 2 + 1) * 64 + 3 * 8 + 5
    assert torch.allclose(picked, pixels[..., index])


def test_pixel_target_trains_encoder_predictor_and_head_not_the_target():
    torch.manual_seed(0)
    cfg = model_preset("tiny", img_size=16, num_frames=4, patch_size=8, tubelet_size=2)
    encoder = VisionTransformer(cfg)
    masks = build_mask_generator("multiblock")
    predictor = Predictor(predictor_preset("tiny"), encoder.out_dim, cfg.grid, masks.num_mask_configs)
    jepa = JEPA(encoder, predictor, Variant("pix", (Term("pixel_target", 1.0),)))
    target = make_ema_target(encoder)
    video = torch.randn(2, 3, 4, 16, 16)
    views = masks(2, cfg.grid, torch.Generator().manual_seed(0), video)
    losses = jepa(video, views, step=0, target_encoder=target)
    assert torch.isfinite(losses["pixel_target"]) and losses["pixel_target"] > 0
    losses["pixel_target"].backward()
    head = jepa.objective.terms["pixel_target"].head
    assert head.out_features == 3 * 2 * 8 * 8 and head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())
    assert all(p.grad is None for p in target.parameters())
