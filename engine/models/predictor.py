"""Narrow ViT predictor: from the context tokens' features, predict the features of the target tokens
(a learnable mask token stands in for each target: one per mask config, or with `mask_token_by:
clip_length` token 0 for every config, as the released V-JEPA 2/2.1 code does in a one-clip-length run) and,
for the dense context loss, of the context tokens themselves."""
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
        # V-JEPA 2.1: a learned video/image vector added to every predictor token.
        self.modality_embed = nn.Parameter(torch.zeros(2, cfg.width)) if cfg.modality_embedding else None
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_hidden_dim, cfg.qkv_bias, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.proj_target = nn.Linear(cfg.width, in_dim)
        self.proj_context = nn.Linear(cfg.width, in_dim) if cfg.predict_context else None
        self.rope = Rotary3D(cfg.head_dim, cfg.rope_theta, cfg.rope_style) if cfg.pos_embed == "rope" else None
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_3d(self.grid, cfg.width), persistent=False)  # [N, W]
        else:
            self.pos_embed = None
        init_weights(self, cfg.init_std)
        rescale_residual_branches(self.blocks)
        if not cfg.zero_init_mask_tokens:
            nn.init.trunc_normal_(self.mask_tokens, std=cfg.init_std)
        if self.modality_embed is not None:
            nn.init.trunc_normal_(self.modality_embed, std=cfg.init_std)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (the training loop decides)."""
        self.grad_checkpointing = enabled

    @property
    def num_mask_tokens(self) -> int:
        return self.mask_tokens.shape[0]

    def forward(self, ctx_feats: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                mask_token_id: int, modality: torch.Tensor | None = None):
        """ctx_feats [B, Kc, in_dim] (encoder output on context_idx), context_idx [B, Kc], target_idx [B, Kt],
        mask_token_id the mask config's index, modality int64 [B] (VIDEO/IMAGE) or None = video
        -> (pred_target [B, Kt, in_dim], pred_context [B, Kc, in_dim] or None if predict_context is off)."""
        if not 0 <= mask_token_id < self.num_mask_tokens:
            raise IndexError(f"mask_token_id={mask_token_id} outside [0, {self.num_mask_tokens})")
        if self.cfg.mask_token_by == "clip_length":
            mask_token_id = 0  # the engine trains one clip length per run: one frames-per-clip group
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
        if self.modality_embed is not None:
            ids = torch.zeros(batch, dtype=torch.long, device=x.device) if modality is None else modality  # VIDEO=0
            x = x + self.modality_embed[ids].unsqueeze(1).to(x.dtype)  # [B, 1, W] broadcast
        rope = None
        if self.rope is not None:
            rope = self.rope.angles(grid_coordinates(torch.cat((context_idx, target_idx), dim=1), self.grid))
        for block in self.blocks:
            x = apply_block(block, x, rope, self.grad_checkpointing)
        x = self.norm(x)
        pred_target = self.proj_target(x[:, num_context:])
        pred_context = self.proj_context(x[:, :num_context]) if self.proj_context is not None else None
        return pred_target, pred_context
