"""Forward FLOPs of the encoder and predictor, for MFU.

Counts multiply-accumulates of matmuls and the patch convolution as 2 FLOPs each (the usual MFU
convention); LayerNorm, softmax, GELU, RoPE and additions are left out (well under 1% at ViT-B scale).
A training step costs about 3x the forward (backward = 2x forward); the training loop applies that.
"""
from __future__ import annotations

from .config import ModelConfig, PredictorConfig


def block_flops(num_tokens: int, dim: int, mlp_hidden: int) -> int:
    """One transformer block on L tokens of width D, per sample."""
    L, D = num_tokens, dim
    qkv = 2 * L * D * 3 * D
    scores_and_values = 2 * (2 * L * L * D)  # q @ k^T and attn @ v, summed over heads
    out_proj = 2 * L * D * D
    mlp = 2 * (2 * L * D * mlp_hidden)
    return qkv + scores_and_values + out_proj + mlp


def encoder_flops(cfg: ModelConfig, num_tokens: int | None = None, batch_size: int = 1) -> int:
    """Encoder forward on a batch; the blocks see num_tokens tokens (N by default, K on a context pass).

    The patch embedding always runs on the full grid: tokens are selected after it.
    """
    grid_tokens = cfg.num_tokens
    num_tokens = grid_tokens if num_tokens is None else num_tokens
    patch = 2 * grid_tokens * (cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2) * cfg.embed_dim
    blocks = cfg.depth * block_flops(num_tokens, cfg.embed_dim, cfg.mlp_hidden_dim)
    return batch_size * (patch + blocks)


def predictor_flops(cfg: PredictorConfig, in_dim: int, num_context: int, num_target: int, batch_size: int = 1) -> int:
    """Predictor forward on a batch with num_context context and num_target target tokens per sample."""
    width = cfg.width
    hidden = cfg.resolved_input_hidden_dim(in_dim)
    embed = 2 * num_context * (in_dim * hidden + hidden * width) if hidden else 2 * num_context * in_dim * width
    blocks = cfg.depth * block_flops(num_context + num_target, width, cfg.mlp_hidden_dim)
    projected = num_target + (num_context if cfg.predict_context else 0)
    out = 2 * projected * width * in_dim
    return batch_size * (embed + blocks + out)

