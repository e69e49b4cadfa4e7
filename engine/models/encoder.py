"""Video ViT encoder: 3D tubelet patch embedding, 3D positions, multi-level LayerNormed outputs."""
from __future__ import annotations

import torch
from torch import nn

from kernels import masked_gather

from .config import ModelConfig
from .layers import Block, apply_block, init_weights, rescale_residual_branches
from .positions import Rotary3D, grid_coordinates, sincos_3d

VIDEO, IMAGE = 0, 1  # modality ids for the optional modality embedding


class VisionTransformer(nn.Module):
    """`forward(video, keep_idx)` gives the training features (all out_layers, concatenated, width out_dim);
    `forward_eval(video)` gives the frozen-eval features (eval_layers only, width eval_dim).

    The training loop may call `set_grad_checkpointing(True)` to recompute block activations in backward.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.out_dim
        self.eval_dim = cfg.eval_dim
        self.embed_dim = cfg.embed_dim
        self.grad_checkpointing = False
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.patch_embed = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden_dim, cfg.qkv_bias, cfg.norm_eps)
            for _ in range(cfg.depth)
        )
        # One LayerNorm per output level; the eval features reuse the norms of their levels.
        self.level_norms = nn.ModuleList(nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) for _ in cfg.out_layer_indices)
        self.modality_embed = nn.Parameter(torch.zeros(2, cfg.embed_dim)) if cfg.modality_embedding else None
        self.rope = Rotary3D(cfg.head_dim, cfg.rope_theta, cfg.rope_style) if cfg.pos_embed == "rope" else None
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_3d(cfg.grid, cfg.embed_dim), persistent=False)  # [N, D]
        else:
            self.pos_embed = None
        init_weights(self, cfg.init_std)
        rescale_residual_branches(self.blocks)
        if self.modality_embed is not None:
            nn.init.trunc_normal_(self.modality_embed, std=cfg.init_std)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (the training loop decides)."""
        self.grad_checkpointing = enabled

    def token_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        _, _, frames, height, width = video.shape
        cfg = self.cfg
        if frames % cfg.tubelet_size or height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(
                f"video of {frames}x{height}x{width} (T x H x W) does not tile into tubelets of "
                f"{cfg.tubelet_size}x{cfg.patch_size}x{cfg.patch_size}; resize or crop it"
            )
        return frames // cfg.tubelet_size, height // cfg.patch_size, width // cfg.patch_size

    def _positions(self, grid, device) -> torch.Tensor | None:
        if self.pos_embed is None:
            return None
        if grid == self.cfg.grid:
            return self.pos_embed
        return sincos_3d(grid, self.embed_dim).to(device)  # other resolutions: exact table, no interpolation

    def embed_tokens(self, video: torch.Tensor, keep_idx: torch.Tensor | None = None,
                     modality: torch.Tensor | None = None):
        """Patch-embedded tokens with positions, before the blocks.

        video [B, C, T, H, W]; keep_idx int64 [B, K] or None; modality int64 [B] (VIDEO/IMAGE) or None = video.
        Returns (tokens [B, N or K, D], rope angles or None).
        """
        grid = self.token_grid(video)
        tokens = self.patch_embed(video).flatten(2).transpose(1, 2)  # [B, N, D]
        pos = self._positions(grid, video.device)
        if keep_idx is None:
            if pos is not None:
                tokens = tokens + pos.to(tokens.dtype)
            flat_idx = torch.arange(tokens.shape[1], device=video.device).unsqueeze(0)  # [1, N]
        else:
            tokens = masked_gather(tokens, keep_idx, None if pos is None else pos.to(tokens.dtype))  # [B, K, D]
            flat_idx = keep_idx
        if self.modality_embed is not None:
            ids = torch.full((video.shape[0],), VIDEO, device=video.device) if modality is None else modality
            tokens = tokens + self.modality_embed[ids].unsqueeze(1).to(tokens.dtype)  # [B, 1, D] broadcast
        rope = self.rope.angles(grid_coordinates(flat_idx, grid)) if self.rope is not None else None
        return tokens, rope

    def _levels(self, video, keep_idx, modality, layers: tuple[int, ...]) -> torch.Tensor:
        x, rope = self.embed_tokens(video, keep_idx, modality)
        norm_of = dict(zip(self.cfg.out_layer_indices, self.level_norms))
        outputs = []
        for index in range(max(layers) + 1):  # blocks after the last wanted layer are skipped
            x = apply_block(self.blocks[index], x, rope, self.grad_checkpointing)
            if index in layers:
                outputs.append(norm_of[index](x))
        return torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]

    def forward(self, video: torch.Tensor, keep_idx: torch.Tensor | None = None,
                modality: torch.Tensor | None = None) -> torch.Tensor:
        """video [B, C, T, H, W] -> [B, N or K, out_dim]; with keep_idx only those tokens enter the blocks."""
        return self._levels(video, keep_idx, modality, self.cfg.out_layer_indices)

    def forward_eval(self, video: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        """video [B, C, T, H, W] -> [B, N, eval_dim]: the eval layers' LayerNormed outputs on the full grid."""
        return self._levels(video, None, modality, self.cfg.eval_layer_indices)
