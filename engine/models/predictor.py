"""Narrow ViT predictor: from the context tokens' features, predict the features of the target tokens
(one learnable mask token per mask config stands in for each target) and, for the dense context loss,
of the context tokens themselves."""
from __future__ import annotations

import torch
from torch import nn

from kernels import masked_gather

from .config import PredictorConfig
from .layers import Block, apply_block, init_weights, rescale_residual_branches
from .positions import Rotary3D, grid_coordinates, sincos_3d


class Predictor(nn.Module):
    def __init__(self, cfg: PredictorConfig, in_dim: int, grid: tuple[int, int, int], num_mask_tokens: int):
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens={num_mask_tokens} must be at least 1 (one per mask config)")
        self.cfg = cfg
        self.in_dim = in_dim
        self.grid = tuple(grid)
        self.grad_checkpointing = False
        hidden = cfg.resolved_input_hidden_dim(in_dim)
        if hidden:
            self.input_mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.width))
        else:
            self.input_mlp = nn.Linear(in_dim, cfg.width)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, cfg.width))  # [M, W]
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_hidden_dim, cfg.qkv_bias, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.proj_target = nn.Linear(cfg.width, in_dim)
        self.proj_context = nn.Linear(cfg.width, in_dim) if cfg.predict_context else None
        self.rope = Rotary3D(cfg.head_dim, cfg.rope_theta) if cfg.pos_embed == "rope" else None
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_3d(self.grid, cfg.width), persistent=False)  # [N, W]
        else:
            self.pos_embed = None
        init_weights(self, cfg.init_std)
        rescale_residual_branches(self.blocks)
        if not cfg.zero_init_mask_tokens:
            nn.init.trunc_normal_(self.mask_tokens, std=cfg.init_std)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (the training loop decides)."""
        self.grad_checkpointing = enabled

    @property
    def num_mask_tokens(self) -> int:
        return self.mask_tokens.shape[0]

    def forward(self, ctx_feats: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                mask_token_id: int):
        """ctx_feats [B, Kc, in_dim] (encoder output on context_idx), context_idx [B, Kc], target_idx [B, Kt]
        -> (pred_target [B, Kt, in_dim], pred_context [B, Kc, in_dim] or None if predict_context is off)."""
        if not 0 <= mask_token_id < self.num_mask_tokens:
            raise IndexError(f"mask_token_id={mask_token_id} outside [0, {self.num_mask_tokens})")
        batch, num_context = context_idx.shape
        num_target = target_idx.shape[1]
        context = self.input_mlp(ctx_feats)  # [B, Kc, W]
        mask_token = self.mask_tokens[mask_token_id].to(context.dtype)  # [W]
        if self.pos_embed is not None:
            pos = self.pos_embed.to(context.dtype)  # [N, W]
            # Broadcast operands ([1, N, W], [1, 1, W]) let the gather place rows without materialising copies.
            context = context + masked_gather(pos.unsqueeze(0), context_idx)  # [B, Kc, W]
            targets = masked_gather(mask_token.view(1, 1, -1), target_idx, pos)  # [B, Kt, W]
        else:
            targets = mask_token.expand(batch, num_target, -1)  # [B, Kt, W]
        x = torch.cat((context, targets), dim=1)  # [B, Kc + Kt, W]
        rope = None
        if self.rope is not None:
            rope = self.rope.angles(grid_coordinates(torch.cat((context_idx, target_idx), dim=1), self.grid))
        for block in self.blocks:
            x = apply_block(block, x, rope, self.grad_checkpointing)
        x = self.norm(x)
        pred_target = self.proj_target(x[:, num_context:])
        pred_context = self.proj_context(x[:, :num_context]) if self.proj_context is not None else None
        return pred_target, pred_context
