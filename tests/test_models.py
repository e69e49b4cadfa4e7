"""Encoder, predictor, EMA, attention backend, presets and FLOPs (engine/models), on tiny CPU models."""
import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.models import (
    IMAGE,
    ModelConfig,
    Predictor,
    PredictorConfig,
    VisionTransformer,
    attention_backend,
    ema_update,
    encoder_flops,
    make_ema_target,
    model_preset,
    predictor_flops,
    predictor_preset,
)
from engine.models import attention as attention_module


POSITIONS = ["rope", "sincos"]


def tiny_config(pos_embed: str, **overrides) -> ModelConfig:
    # 4 frames x 32 x 32 px, tubelet 2, patch 8 -> grid (2, 4, 4), 32 tokens.
    return model_preset("tiny", **{**dict(img_size=32, patch_size=8, num_frames=4, pos_embed=pos_embed), **overrides})


def tiny_video(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=POSITIONS)
def encoder(request) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(tiny_config(request.param)).eval()


def test_encoder_output_shapes(encoder):
    cfg = encoder.cfg
    video = tiny_video()
    keep_idx = torch.tensor([[0, 3, 5, 9, 31], [1, 2, 3, 17, 30]])
    assert cfg.out_layer_indices == (0, 1, 2, 3)  # 4 levels of a depth-4 model
    assert encoder.out_dim == 4 * cfg.embed_dim
    assert encoder(video).shape == (2, 32, encoder.out_dim)
    assert encoder(video, keep_idx).shape == (2, 5, encoder.out_dim)
    assert encoder.forward_eval(video).shape == (2, 32, cfg.embed_dim)


def test_paper_levels_are_blocks_2_5_8_11():
    cfg = model_preset("base")
    assert cfg.out_layer_indices == (2, 5, 8, 11) and cfg.eval_layer_indices == (11,)
    assert cfg.out_dim == 3072 and cfg.grid == (8, 14, 14) and cfg.num_tokens == 1568


@torch.no_grad()
def test_keep_idx_path_embeds_the_same_tokens_as_the_full_path(encoder):
    # Patch embedding and positions are per token, so gathering after them equals gathering their full-grid output.
    video = tiny_video()
    keep_idx = torch.tensor([[0, 3, 5, 9, 31], [1, 2, 3, 17, 30]])
    full_tokens, full_rope = encoder.embed_tokens(video)
    kept_tokens, kept_rope = encoder.embed_tokens(video, keep_idx)
    rows = torch.arange(2).unsqueeze(1)
    torch.testing.assert_close(kept_tokens, full_tokens[rows, keep_idx], rtol=0, atol=0)
    if encoder.cfg.pos_embed == "rope":
        for kept, full in zip(kept_rope, full_rope):
            torch.testing.assert_close(kept, full.expand(2, -1, -1, -1)[rows, keep_idx])


@torch.no_grad()
def test_keeping_every_token_equals_the_full_path(encoder):
    video = tiny_video()
    every = torch.arange(32).expand(2, -1)
    torch.testing.assert_close(encoder(video, every), encoder(video), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_positions_travel_with_the_tokens(encoder):
    # Attention is permutation-equivariant, so a shuffled index list must give the shuffled output; a model
    # that assigned positions by slot instead of by grid index would fail this.
    video = tiny_video()
    keep_idx = torch.tensor([[0, 3, 5, 9, 31], [1, 2, 3, 17, 30]])
    perm = torch.tensor([3, 0, 4, 2, 1])
    shuffled, ordered = encoder(video, keep_idx[:, perm]), encoder(video, keep_idx)
    torch.testing.assert_close(shuffled, ordered[:, perm], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_forward_eval_is_the_last_level(encoder):
    video = tiny_video()
    torch.testing.assert_close(encoder.forward_eval(video), encoder(video)[..., -encoder.cfg.embed_dim:])


def test_modality_embedding_separates_images_from_videos():
    torch.manual_seed(0)
    encoder = VisionTransformer(tiny_config("rope", modality_embedding=True))
    video = tiny_video()
    as_video = encoder(video)
    as_image = encoder(video, modality=torch.full((2,), IMAGE))
    assert not torch.allclose(as_video, as_image)
    as_video.sum().backward()
    assert encoder.modality_embed.grad is not None


@pytest.mark.parametrize("overrides, field", [
    (dict(img_size=30), "img_size"),
    (dict(num_frames=5), "num_frames"),
    (dict(num_heads=5), "embed_dim"),
    (dict(pos_embed="learned"), "pos_embed"),
    (dict(out_layers=(1, 2)), "out_layers"),
    (dict(eval_layers=(0,), out_layers=(1, 3)), "eval_layers"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{"pos_embed": "rope", **overrides})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        model_preset("gigantic")


@pytest.mark.parametrize("name, low, high", [
    ("tiny", 0.25e6, 0.35e6), ("small", 21.5e6, 22.5e6), ("base", 85.5e6, 87e6), ("large", 303e6, 305e6),
    ("huge", 630e6, 634e6),
])
def test_preset_parameter_counts(name, low, high):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = VisionTransformer(model_preset(name))
    count = sum(p.numel() for p in model.parameters())
    assert low <= count <= high, f"{name}: {count / 1e6:.2f}M parameters"


@pytest.mark.parametrize("pos_embed", POSITIONS)
def test_predictor_shapes_and_zero_init(pos_embed):
    torch.manual_seed(0)
    enc_cfg = tiny_config(pos_embed)
    predictor = Predictor(predictor_preset("tiny", pos_embed=pos_embed), in_dim=enc_cfg.out_dim, grid=enc_cfg.grid,
                          num_mask_tokens=2)
    # input MLP: in_dim -> in_dim / 4 -> width
    assert predictor.input_mlp[0].weight.shape == (enc_cfg.out_dim // 4, enc_cfg.out_dim)
    assert torch.count_nonzero(predictor.mask_tokens) == 0
    context_idx = torch.tensor([[0, 4, 8, 30], [2, 3, 11, 12]])
    target_idx = torch.tensor([[1, 2, 31], [0, 5, 6]])
    features = torch.randn(2, 4, enc_cfg.out_dim)
    pred_target, pred_context = predictor(features, context_idx, target_idx, mask_token_id=1)
    assert pred_target.shape == (2, 3, enc_cfg.out_dim) and pred_context.shape == (2, 4, enc_cfg.out_dim)
    (pred_target.square().sum() + pred_context.square().sum()).backward()
    assert predictor.mask_tokens.grad[1].abs().sum() > 0  # the token of mask config 1 learns
    assert predictor.mask_tokens.grad[0].abs().sum() == 0  # the other one was not used
    with pytest.raises(IndexError, match="mask_token_id"):
        predictor(features, context_idx, target_idx, mask_token_id=2)


def test_predictor_without_context_head_and_random_mask_tokens():
    predictor = Predictor(PredictorConfig(depth=1, width=32, num_heads=2, pos_embed="sincos", predict_context=False,
                                          zero_init_mask_tokens=False, input_hidden_dim=0), in_dim=48, grid=(2, 4, 4),
                          num_mask_tokens=1)
    assert torch.count_nonzero(predictor.mask_tokens) > 0
    pred_target, pred_context = predictor(torch.randn(1, 3, 48), torch.tensor([[0, 1, 2]]), torch.tensor([[5, 6]]), 0)
    assert pred_target.shape == (1, 2, 48) and pred_context is None


def test_ema_target_is_a_frozen_fp32_copy():
    online = VisionTransformer(tiny_config("rope")).to(torch.bfloat16)
    target = make_ema_target(online)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in target.parameters())
    for t, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(t, o.float(), rtol=0, atol=0)


@pytest.mark.parametrize("online_dtype", [torch.float32, torch.bfloat16])
def test_ema_update_matches_a_hand_loop(online_dtype):
    torch.manual_seed(0)
    target = make_ema_target(VisionTransformer(tiny_config("sincos")))
    online = VisionTransformer(tiny_config("sincos")).to(online_dtype)
    momentum = 0.99925
    expected = [momentum * t.double() + (1 - momentum) * o.double()
                for t, o in zip(target.parameters(), online.parameters())]
    ema_update(target, online, momentum)
    for got, want in zip(target.parameters(), expected):
        assert got.dtype == torch.float32 and got.grad is None
        torch.testing.assert_close(got.double(), want, rtol=2e-7, atol=1e-8)  # fp32 rounding of the result only


def test_ema_update_rejects_mismatched_modules():
    target = make_ema_target(VisionTransformer(tiny_config("rope")))
    with pytest.raises(ValueError, match="parameter"):
        ema_update(target, VisionTransformer(tiny_config("rope", depth=3, out_layers=(2,))), 0.99)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, target, 1.5)


def test_xformers_fallback_is_chosen_on_cpu_and_logged(caplog):
    attention_module.attention_backend.cache_clear()
    with caplog.at_level(logging.INFO, logger="engine.models.attention"):
        assert attention_backend("cpu") == "sdpa"
        assert attention_backend("cpu") == "sdpa"  # decided once: a second call neither probes nor logs
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.models.attention"]
    assert len(lines) == 1 and "SDPA" in lines[0] and "xformers" in lines[0]


def test_attend_is_softmax_attention():
    q, k, v = torch.randn(3, 2, 5, 3, 8).unbind(0)  # [B, L, H, hd]
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8 ** 0.5
    expected = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)
    torch.testing.assert_close(attention_module.attend(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_flops_helper_against_a_hand_count():
    cfg = tiny_config("rope")  # D=64, depth 4, MLP 256, grid 2x4x4 = 32 tokens, patch volume 3*2*8*8 = 384
    per_block_32 = 2 * 32 * 64 * 192 + 2 * 2 * 32 * 32 * 64 + 2 * 32 * 64 * 64 + 2 * 2 * 32 * 64 * 256
    assert encoder_flops(cfg) == 2 * 32 * 384 * 64 + 4 * per_block_32
    pred_cfg = predictor_preset("tiny")  # width 64, depth 2, MLP 256; in_dim 256 -> 64 -> 64
    per_block_12 = 2 * 12 * 64 * 192 + 2 * 2 * 12 * 12 * 64 + 2 * 12 * 64 * 64 + 2 * 2 * 12 * 64 * 256
    embed = 2 * 5 * (256 * 64 + 64 * 64)
    out = 2 * (7 + 5) * 64 * 256
    expected = 3 * (embed + 2 * per_block_12 + out)
    assert predictor_flops(pred_cfg, 256, num_context=5, num_target=7, batch_size=3) == expected


@pytest.mark.parametrize("pos_embed", POSITIONS)
@torch.no_grad()
def test_flops_helper_matches_torch_flop_counter(pos_embed):
    # The MATH SDPA backend decomposes attention into matmuls that FlopCounterMode counts.
    cfg = tiny_config(pos_embed)
    encoder = VisionTransformer(cfg)
    predictor = Predictor(predictor_preset("tiny", pos_embed=pos_embed), cfg.out_dim, cfg.grid, num_mask_tokens=1)
    context_idx, target_idx = torch.arange(10).expand(2, -1), torch.arange(10, 17).expand(2, -1)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as full:
            encoder(tiny_video())
        with FlopCounterMode(display=False) as context:
            features = encoder(tiny_video(), context_idx)
        with FlopCounterMode(display=False) as predicted:
            predictor(features, context_idx, target_idx, 0)
    assert full.get_total_flops() == encoder_flops(cfg, batch_size=2)
    assert context.get_total_flops() == encoder_flops(cfg, num_tokens=10, batch_size=2)
    assert predicted.get_total_flops() == predictor_flops(predictor.cfg, cfg.out_dim, 10, 7, batch_size=2)




def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = VisionTransformer(tiny_config("rope"))
    checkpointed = VisionTransformer(tiny_config("rope"))
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    keep_idx = torch.tensor([[0, 3, 5, 9, 31], [1, 2, 3, 17, 30]])
    for model in (plain, checkpointed):
        model(tiny_video(), keep_idx).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("pos_embed", POSITIONS)
def test_bf16_autocast_step_is_finite(pos_embed):
    torch.manual_seed(0)
    cfg = tiny_config(pos_embed)
    encoder = VisionTransformer(cfg)
    predictor = Predictor(predictor_preset("tiny", pos_embed=pos_embed), cfg.out_dim, cfg.grid, num_mask_tokens=1)
    context_idx, target_idx = torch.arange(0, 32, 3).expand(2, -1), torch.arange(1, 32, 3).expand(2, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred_target, pred_context = predictor(encoder(tiny_video(), context_idx), context_idx, target_idx, 0)
    assert pred_target.dtype == torch.bfloat16
    loss = pred_target.float().abs().mean() + pred_context.float().abs().mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_vjepa2_rope_style_is_the_repeated_sin_cos_rotation():
    """`rope_style: vjepa2` equals the released V-JEPA 2 formula written out here: per axis, sin/cos of the P
    frequencies repeated end to end, x * cos + rotate_half_pairs(x) * sin; `pairwise` differs from it."""
    from engine.models.positions import Rotary3D, apply_rotary, grid_coordinates

    head_dim, grid = 16, (2, 4, 4)
    coords = grid_coordinates(torch.arange(32).unsqueeze(0), grid)  # [1, L, 3]
    x = torch.randn(1, 32, 2, head_dim, generator=torch.Generator().manual_seed(0))  # [B, L, H, hd]
    band = 2 * (head_dim // 6)
    pairs = band // 2
    omega = 1.0 / 10000 ** (torch.arange(pairs, dtype=torch.float32) / pairs)
    expected = []
    for axis in range(3):
        part = x[..., axis * band:(axis + 1) * band]
        freq = coords[..., axis, None] * omega  # [1, L, P]
        sin, cos = freq.sin().repeat(1, 1, 2)[:, :, None], freq.cos().repeat(1, 1, 2)[:, :, None]  # [1, L, 1, band]
        y1, y2 = part.unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack((-y2, y1), dim=-1).flatten(-2)
        expected.append(part * cos + rotated * sin)
    expected = torch.cat(expected + [x[..., 3 * band:]], dim=-1)
    ours = apply_rotary(x, *Rotary3D(head_dim, style="vjepa2").angles(coords))
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(apply_rotary(x, *Rotary3D(head_dim, style="pairwise").angles(coords)), expected,
                              atol=1e-3)


def test_mask_token_by_clip_length_shares_token_zero():
    cfg = PredictorConfig(depth=1, width=32, num_heads=2, zero_init_mask_tokens=False)
    predictor = Predictor(cfg, in_dim=64, grid=(2, 4, 4), num_mask_tokens=2).eval()
    shared = Predictor(PredictorConfig(**{**cfg.__dict__, "mask_token_by": "clip_length"}), 64, (2, 4, 4), 2).eval()
    shared.load_state_dict(predictor.state_dict())
    feats = torch.randn(1, 10, 64)
    context, target = torch.arange(10).unsqueeze(0), torch.arange(10, 20).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(shared(feats, context, target, 1)[0], predictor(feats, context, target, 0)[0])
        assert not torch.allclose(predictor(feats, context, target, 1)[0], predictor(feats, context, target, 0)[0])


def test_predictor_modality_vector_is_added_to_every_token():
    cfg = PredictorConfig(depth=1, width=32, num_heads=2, modality_embedding=True)
    predictor = Predictor(cfg, in_dim=64, grid=(2, 4, 4), num_mask_tokens=1).eval()
    feats = torch.randn(2, 10, 64)
    context, target = torch.arange(10).expand(2, -1), torch.arange(10, 20).expand(2, -1)
    with torch.no_grad():
        video = predictor(feats, context, target, 0)[0]
        assert torch.equal(video, predictor(feats, context, target, 0, modality=torch.zeros(2, dtype=torch.long))[0])
        image = predictor(feats, context, target, 0, modality=torch.full((2,), IMAGE))[0]
        assert not torch.allclose(video, image)
        predictor.modality_embed.zero_()
        plain = Predictor(PredictorConfig(depth=1, width=32, num_heads=2), 64, (2, 4, 4), 1).eval()
        plain.load_state_dict({k: v for k, v in predictor.state_dict().items() if k != "modality_embed"})
        assert torch.equal(predictor(feats, context, target, 0)[0], plain(feats, context, target, 0)[0])
