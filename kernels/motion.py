"""Motion-guided masking on the device: motion scores on the token grid, then a batch of block masks.

``motion_scores`` pools frame-difference energy to the token grid (one read of the clip).
``motion_mask`` scores every feasible block origin by the mean score inside the block, then draws the
origins of all blocks of all samples in one ``torch.multinomial`` call with p ∝ clamp(score,1e-6)^strength
mixed with a uniform draw at ``random_rate`` (kernels/_mask_sampling.py). This replaces the original
collate function's Python loops over samples, blocks and origins. Masks carry no gradient.
"""
from __future__ import annotations

import torch

from kernels._mask_sampling import check_block_shape, sample_block_union
from kernels.dispatch import use_triton
from kernels.reference import (
    _check_video_grid,
    block_mean_scores_reference,
    motion_scores_reference,
)


@torch.library.custom_op("vjepa_kernels::motion_scores", mutates_args=())
def _motion_scores_op(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    from kernels._triton_motion import motion_scores_triton

    return motion_scores_triton(video, tubelet, patch)


@_motion_scores_op.register_fake
def _motion_scores_fake(video, tubelet, patch):
    B, _, T, H, W = video.shape
    return video.new_empty((B, T // tubelet, H // patch, W // patch), dtype=torch.float32)


@torch.library.custom_op("vjepa_kernels::block_mean_scores", mutates_args=())
def _block_mean_scores_op(scores: torch.Tensor, bt: int, bh: int, bw: int) -> torch.Tensor:
    from kernels._triton_motion import block_mean_scores_triton

    return block_mean_scores_triton(scores, bt, bh, bw)


@_block_mean_scores_op.register_fake
def _block_mean_scores_fake(scores, bt, bh, bw):
    B, Tg, Hg, Wg = scores.shape
    return scores.new_empty((B, Tg - bt + 1, Hg - bh + 1, Wg - bw + 1), dtype=torch.float32)


def motion_scores(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """video [B,C,T,H,W] -> fp32 [B,Tg,Hg,Wg] in [0,1], per-sample max-normalised frame-difference energy."""
    _check_video_grid(video, tubelet, patch)
    video = video.detach()
    if use_triton(video):
        return _motion_scores_op(video, int(tubelet), int(patch))
    return motion_scores_reference(video, tubelet, patch)


def block_mean_scores(scores: torch.Tensor, block_shape: tuple[int, int, int]) -> torch.Tensor:
    """Mean score inside the block at every feasible origin: [B,Tg,Hg,Wg] -> fp32 [B,Ot,Oh,Ow]."""
    bt, bh, bw = check_block_shape(scores, block_shape)
    scores = scores.detach()
    if use_triton(scores):
        return _block_mean_scores_op(scores, bt, bh, bw)
    return block_mean_scores_reference(scores, (bt, bh, bw))


def motion_mask(
    scores: torch.Tensor,
    block_shape: tuple[int, int, int],
    num_blocks: int,
    strength: float,
    random_rate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """scores [B,Tg,Hg,Wg] -> bool [B,N], True = masked (union of ``num_blocks`` blocks per sample)."""
    block_scores = block_mean_scores(scores, block_shape)
    return sample_block_union(block_scores, tuple(scores.shape[1:]), block_shape, num_blocks, strength,
                              random_rate, generator)
