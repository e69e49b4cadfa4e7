"""The pixel baseline: what a probe gets from raw tubelet patches through a random linear map, no blocks.

It is the encoder's own patch embedding (random init, the seed's) with whatever it adds before the blocks
(additive sin-cos positions, the modality vector), then the last level's LayerNorm, and nothing else: a
random projection of each 2-frame patch to the token width. An encoder that does not beat it has learned
nothing a probe could not read from the pixels; one between it and random init has learned less than the
random blocks already mix in.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.models import VisionTransformer


class PixelBaseline(nn.Module):
    """`forward_eval(video)` -> [B, N, embed_dim]: LayerNorm(patch embedding), the encoder's blocks unused."""

    def __init__(self, encoder: VisionTransformer):
        super().__init__()
        self.cfg = encoder.cfg
        self.encoder = encoder

    # No torch.no_grad here: extraction already runs under it, and low-label fine-tuning (engine/eval/finetune.py)
    # trains this patch embedding and norm through it.
    def forward_eval(self, video: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        tokens, _ = self.encoder.embed_tokens(video, None, modality)  # [B, N, D]; RoPE angles unused: no attention
        return self.encoder.level_norms[-1](tokens)
