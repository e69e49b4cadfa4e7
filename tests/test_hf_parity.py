"""The engine's modules against `transformers`' VJEPA2Model, same weights copied both ways (issue 24).

A tiny VJEPA2Config (64 px, 8 frames, patch 8, tubelet 2, width 64, depth 2, predictor width 32, depth 2)
with random weights (every tensor, LayerNorms and mask tokens included). Compared in fp32, within 1e-5
relative (largest difference over the largest reference value):
- the encoder on the full clip (VJEPA2Model's `last_hidden_state` vs `forward_eval`);
- the encoder on context tokens only (VJEPA2Model's own embeddings, layers with their position ids, and
  final LayerNorm, applied to the kept tokens, as the original code runs its context encoder, vs
  `forward(video, keep_idx)`);
- the predictor on the same context/target masks (VJEPA2Model's predictor, which always takes mask token 1,
  vs the engine's Predictor with mask_token_id=1).

These hold only with `rope_style: vjepa2` (measured: 0 on the full clip and the context tokens, 4.7e-7 on
the predictor). Switched to `pairwise` (the engine's V-JEPA 2.1 rotation) the same weights give 7.3e-3 (full
clip), 9.1e-3 (context tokens) and 1.4e-2 (predictor) relative: in VJEPA2Model each channel pair's two
channels rotate by two different frequencies. `test_pairwise_rope_style_breaks_parity` asserts that gap, so
the parity tests cannot pass with the wrong rotation. transformers has no pairwise rotation to compare with.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (requirements-extras.txt)")

from engine.interop.hf_names import encoder_to_hf, hf_config_dict, predictor_to_hf  # noqa: E402
from engine.interop.released import read_released  # noqa: E402
from engine.models import Predictor, VisionTransformer  # noqa: E402

TINY = dict(crop_size=64, frames_per_clip=8, patch_size=8, tubelet_size=2, hidden_size=64, num_attention_heads=4,
            num_hidden_layers=2, pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=2,
            pred_num_mask_tokens=2)
TOLERANCE = 1e-5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (not the init's ones/zeros), so a misplaced LayerNorm or bias shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + (1.0 if param.ndim == 1 else 0.0) * 0.5)


def hf_model(seed: int = 0):
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**TINY)).eval()
    randomise(model, seed)
    return model


def inputs():
    generator = torch.Generator().manual_seed(7)
    video = torch.randn(2, 3, 8, 64, 64, generator=generator)  # [B, C, T, H, W] (the engine's layout)
    grid_tokens = 4 * 8 * 8
    order = torch.stack([torch.randperm(grid_tokens, generator=generator) for _ in range(2)])
    context = order[:, :96].sort(dim=1).values  # [B, Kc]
    target = order[:, 96:160].sort(dim=1).values  # [B, Kt]
    return video, context, target


def hf_outputs(model, video, context, target):
    """(full clip, context tokens, predictor at the targets), all computed by transformers' modules."""
    with torch.no_grad():
        pixels = video.permute(0, 2, 1, 3, 4)  # VJEPA2Model takes [B, T, C, H, W]
        full = model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state
        encoder = model.encoder
        tokens = encoder.embeddings(pixels)  # [B, N, D]
        hidden = torch.gather(tokens, 1, context.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        for layer in encoder.layer:
            hidden = layer(hidden, context)[0]  # position ids of the kept tokens
        on_context = encoder.layernorm(hidden)
        predicted = model.predictor(encoder_hidden_states=full, context_mask=[context],
                                    target_mask=[target]).last_hidden_state
    return full, on_context, predicted


def engine_outputs(encoder, predictor, video, context, target):
    with torch.no_grad():
        full = encoder.forward_eval(video)
        on_context = encoder(video, keep_idx=context)
        feats = torch.gather(full, 1, context.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        predicted, _ = predictor(feats, context, target, mask_token_id=1)  # VJEPA2Model always uses token 1
    return full, on_context, predicted


def assert_parity(ours, reference):
    for name, a, b in zip(("full clip", "context tokens", "predictor"), ours, reference):
        assert a.shape == b.shape, name
        assert relative_error(a, b) <= TOLERANCE, f"{name}: {relative_error(a, b):.2e} relative"


def test_transformers_weights_into_engine_give_the_same_outputs(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    released = read_released(tmp_path / "hf")
    assert released.model.rope_style == released.predictor_cfg.rope_style == "vjepa2"
    video, context, target = inputs()
    ours = engine_outputs(released.build_encoder(), released.build_predictor(), video, context, target)
    assert_parity(ours, hf_outputs(model, video, context, target))


def test_engine_weights_into_transformers_give_the_same_outputs():
    model_cfg, predictor_cfg, tokens = _engine_configs()
    torch.manual_seed(3)
    encoder, predictor = VisionTransformer(model_cfg).eval(), Predictor(predictor_cfg, 64, model_cfg.grid, tokens).eval()
    randomise(encoder, 1)
    randomise(predictor, 2)
    config = hf_config_dict(model_cfg, predictor_cfg, tokens)
    config.pop("architectures"), config.pop("model_type")
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**config)).eval()
    weights = {**encoder_to_hf(encoder.state_dict(), model_cfg), **predictor_to_hf(predictor.state_dict(), predictor_cfg)}
    model.load_state_dict(weights, strict=True)
    video, context, target = inputs()
    assert_parity(engine_outputs(encoder, predictor, video, context, target),
                  hf_outputs(model, video, context, target))


def test_pairwise_rope_style_breaks_parity(tmp_path):
    """The same weights with the engine's other rotation: far outside the tolerance, on every output."""
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    released = read_released(tmp_path / "hf")
    released.model = dataclasses.replace(released.model, rope_style="pairwise")
    released.predictor_cfg = dataclasses.replace(released.predictor_cfg, rope_style="pairwise")
    video, context, target = inputs()
    ours = engine_outputs(released.build_encoder(), released.build_predictor(), video, context, target)
    for a, b in zip(ours, hf_outputs(model, video, context, target)):
        assert relative_error(a, b) > 1e-3


def _engine_configs():
    from engine.interop.hf_names import configs_from_hf
    return configs_from_hf({"model_type": "vjepa2", **TINY}, "tiny")
