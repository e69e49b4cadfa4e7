"""Pre-norm transformer block shared by the encoder and the predictor."""
from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import attend
from .positions import apply_rotary

# (cos, sin), or (cos, sin, cos_odd, sin_odd) for the vjepa2 RoPE style; each [B or 1, L, 1, P]
RotaryAngles = tuple[torch.Tensor, ...]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryAngles | None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).unbind(2)  # [B, L, H, hd]
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return self.proj(attend(q, k, v).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, rope: RotaryAngles | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


def apply_block(block: Block, x: torch.Tensor, rope: RotaryAngles | None, checkpointing: bool) -> torch.Tensor:
    """One block, optionally recomputing its activations in backward instead of storing them."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
    return block(x, rope)


def init_weights(module: nn.Module, std: float) -> None:
    """Truncated-normal Linear/Conv weights, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(sub.weight, std=std, a=-2 * std, b=2 * std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def rescale_residual_branches(blocks) -> None:
    """Shrink each block's residual output projections by 1/sqrt(2 * (i + 1)) so deep stacks start near identity."""
    with torch.no_grad():
        for index, block in enumerate(blocks):
            scale = (2.0 * (index + 1)) ** -0.5
            block.attn.proj.weight.mul_(scale)
            block.mlp.fc2.weight.mul_(scale)
