"""PyTorch references of the four kernels: same signatures as the public functions (contracts.md §4).

Plain differentiable torch code. On CPU the engine runs these; the Triton kernels are checked against
them. They are written for clarity, not speed (the gather expands its index, the loss takes several
passes), which is also what the benchmarks call "the eager composite".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._mask_sampling import check_block_shape, sample_block_union


def _gather_shapes(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Validate the gather operands and return (B, N, K, D).

    ``x`` is [B,N,D] or broadcast in its first two dims ([1,N,D], [B,1,D], [1,1,D]): a [1,1,D] x
    with ``pos`` places one token (e.g. the predictor's mask token) at every gathered position.
    """
    if idx.dim() != 2 or idx.dtype != torch.int64:
        raise ValueError(f"idx must be int64 [B,K], got {idx.dtype} {tuple(idx.shape)}")
    if x.dim() != 3:
        raise ValueError(f"x must be [B,N,D] (or broadcast [1|B,1|N,D]), got {tuple(x.shape)}")
    B, K = idx.shape
    D = x.shape[2]
    if x.shape[0] not in (1, B):
        raise ValueError(f"x batch {x.shape[0]} does not match idx batch {B}")
    if pos is not None:
        if pos.dim() != 2 or pos.shape[1] != D:
            raise ValueError(f"pos must be [N,{D}], got {tuple(pos.shape)}")
        N = pos.shape[0]
        if x.shape[1] not in (1, N):
            raise ValueError(f"x has {x.shape[1]} tokens, pos has {N}")
    else:
        N = x.shape[1]
    return B, N, K, D


def masked_gather_reference(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """out[b,k] = x[b, idx[b,k]] + pos[idx[b,k]]  ->  [B,K,D].

    Row lookups go through ``F.embedding`` (one table row per index): on CPU it is several times
    faster than ``torch.gather`` with an expanded index or advanced indexing, forward and backward.
    """
    B, N, K, D = _gather_shapes(x, idx, pos)
    if x.shape[1] == 1:
        out = x.expand(B, K, D)                                            # one token per sample (or for all)
    elif x.shape[0] == 1:
        out = F.embedding(idx, x[0])                                       # [B,K,D], x shared by the batch
    else:
        row_offsets = torch.arange(B, device=idx.device).unsqueeze(1) * N  # [B,1]
        out = F.embedding(idx + row_offsets, x.reshape(B * N, D))          # [B,K,D]
    if pos is not None:
        return out + F.embedding(idx, pos)
    return out.contiguous()


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    # fp32 accumulation for half/bf16/fp32 inputs; float64 stays float64 so gradcheck is meaningful.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def token_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """e[b,k] = mean_d |pred − target| in the accumulation dtype: [B,K]."""
    acc = _accumulation_dtype(pred)
    return (pred.to(acc) - target.to(acc)).abs().mean(-1)


WEIGHT_SCOPES = ("sample", "batch")


def check_scope(scope: str) -> str:
    if scope not in WEIGHT_SCOPES:
        raise ValueError(f"scope must be one of {WEIGHT_SCOPES}, got {scope!r}")
    return scope


@torch.no_grad()
def hard_weights(errors: torch.Tensor, tau: float, valid: torch.Tensor, scope: str = "sample") -> torch.Tensor:
    """Hard-region weights, 0 on invalid tokens; no gradient. [B,K].

    scope "sample": w[b,:] = K_b·softmax(e[b, valid]/τ), one softmax per row (mean weight 1 in each row).
    scope "batch": w = K·softmax(e[valid]/τ), one softmax over the valid (b,k) of the whole batch, K their
    count (mean weight 1 over the batch): the released code's hard-weighted LD, which indexes the errors
    with the batch's valid-pair mask before its softmax.
    """
    logits = (errors / tau).masked_fill(~valid, float("-inf"))
    if check_scope(scope) == "sample":
        count = valid.sum(-1, keepdim=True).to(errors.dtype)               # [B,1] = K_b
        probs = torch.softmax(logits, -1)
    else:
        count = valid.sum().to(errors.dtype)                               # K = valid tokens of the batch
        probs = torch.softmax(logits.flatten(), 0).view_as(logits)
    # A row (or batch) with no valid token gives NaN here; where() turns its weights into zeros.
    return torch.where(valid, count * probs, 0.0)


def weighted_mean(errors: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mean over valid (b,k) of w·e (w is 0 on invalid tokens)."""
    return (weights * errors).sum() / valid.sum().clamp_min(1).to(errors.dtype)


def hard_weighted_loss_reference(
    pred: torch.Tensor, target: torch.Tensor, tau: float = 1.0, valid: torch.Tensor | None = None,
    scope: str = "sample",
) -> torch.Tensor:
    """mean over valid (b,k) of w[b,k]·e[b,k], e = mean_d |pred−target|, w = hard_weights(e, τ, valid, scope)
    (no grad): K_b·softmax per sample, or K·softmax over the whole batch's valid tokens."""
    check_scope(scope)
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [B,K,D], got {tuple(pred.shape)} and {tuple(target.shape)}")
    errors = token_errors(pred, target)                                    # [B,K]
    if valid is None:
        valid = torch.ones(errors.shape, dtype=torch.bool, device=errors.device)
    if valid.shape != errors.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be bool {tuple(errors.shape)}, got {valid.dtype} {tuple(valid.shape)}")
    return weighted_mean(errors, hard_weights(errors, tau, valid, scope), valid)


def _check_video_grid(video: torch.Tensor, tubelet: int, patch: int) -> tuple[int, int, int]:
    if video.dim() != 5:
        raise ValueError(f"video must be [B,C,T,H,W], got {tuple(video.shape)}")
    _, _, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"video (T,H,W)=({T},{H},{W}) is not divisible by tubelet {tubelet} and patch {patch}")
    return T // tubelet, H // patch, W // patch


def motion_scores_reference(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Channel-mean |frame[t+1]−frame[t]| (frame 0: 0), cell-averaged, per-sample max-normalised: [B,Tg,Hg,Wg]."""
    _check_video_grid(video, tubelet, patch)
    v = video.float()
    energy = (v[:, :, 1:] - v[:, :, :-1]).abs().mean(1)                    # [B,T-1,H,W]
    energy = F.pad(energy, (0, 0, 0, 0, 1, 0))                             # [B,T,H,W], frame 0 = 0
    cells = F.avg_pool3d(energy.unsqueeze(1), (tubelet, patch, patch)).squeeze(1)  # [B,Tg,Hg,Wg]
    peak = cells.amax(dim=(1, 2, 3), keepdim=True)                         # [B,1,1,1]
    return torch.where(peak > 0, cells / torch.where(peak > 0, peak, 1.0), 0.0)


def block_mean_scores_reference(scores: torch.Tensor, block_shape: tuple[int, int, int]) -> torch.Tensor:
    """Mean score inside the block at every feasible origin, by a 3-D summed-area table: [B,Ot,Oh,Ow]."""
    bt, bh, bw = check_block_shape(scores, block_shape)
    # float64 table: differences of large prefix sums lose no precision at token-grid sizes.
    sat = scores.double().cumsum(1).cumsum(2).cumsum(3)
    sat = F.pad(sat, (1, 0, 1, 0, 1, 0))                                   # [B,Tg+1,Hg+1,Wg+1]
    Ot, Oh, Ow = (scores.shape[1] - bt + 1, scores.shape[2] - bh + 1, scores.shape[3] - bw + 1)

    def corner(t0: int, h0: int, w0: int) -> torch.Tensor:
        return sat[:, t0:t0 + Ot, h0:h0 + Oh, w0:w0 + Ow]

    box = (corner(bt, bh, bw) - corner(0, bh, bw) - corner(bt, 0, bw) - corner(bt, bh, 0)
           + corner(0, 0, bw) + corner(0, bh, 0) + corner(bt, 0, 0) - corner(0, 0, 0))
    return (box / (bt * bh * bw)).float()


def motion_mask_reference(
    scores: torch.Tensor,
    block_shape: tuple[int, int, int],
    num_blocks: int,
    strength: float,
    random_rate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """bool [B,N], True = masked: the union of ``num_blocks`` blocks per sample, origins drawn by motion."""
    block_scores = block_mean_scores_reference(scores, block_shape)
    return sample_block_union(block_scores, tuple(scores.shape[1:]), block_shape, num_blocks, strength,
                              random_rate, generator)
