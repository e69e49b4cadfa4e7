"""Triton kernels of kernels/motion.py: motion energy pooled to the token grid, block-origin scores."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _motion_cells_kernel(
    video_ptr, cells_ptr,
    C, Tg, Hg, Wg, tubelet, patch,
    stride_b, stride_c, stride_t, stride_h, stride_w,
    BLOCK_WG: tl.constexpr, BLOCK_PW: tl.constexpr,
):
    # One program: the cells (b, tg, hg, 0..Wg) of one token row. It walks the clip rows of those
    # cells once, keeping the previous frame's row in registers, so each pixel is read once (plus one
    # extra frame per tubelet for the first difference). Tile [BLOCK_WG cells, BLOCK_PW pixels of a cell].
    pid = tl.program_id(0)
    hg = tl.program_id(1)
    b = (pid // Tg).to(tl.int64)
    tg = pid % Tg
    cell = tl.arange(0, BLOCK_WG)
    within = tl.arange(0, BLOCK_PW)
    x = (cell[:, None] * patch + within[None, :]).to(tl.int64)                 # [WG, PW] pixel column
    tile_ok = (cell < Wg)[:, None] & (within < patch)[None, :]
    t_first = tg * tubelet
    energy = tl.zeros([BLOCK_WG, BLOCK_PW], dtype=tl.float32)
    for c in range(0, C):
        for y in range(0, patch):
            row = video_ptr + b * stride_b + c * stride_c + (hg * patch + y).to(tl.int64) * stride_h + x * stride_w
            # Frame 0 has no predecessor: its difference is 0, which prev = cur gives.
            t_prev = tl.maximum(t_first - 1, 0).to(tl.int64)
            prev = tl.load(row + t_prev * stride_t, mask=tile_ok, other=0.0).to(tl.float32)
            for dt in range(0, tubelet):
                cur = tl.load(row + (t_first + dt).to(tl.int64) * stride_t, mask=tile_ok, other=0.0).to(tl.float32)
                energy += tl.abs(cur - prev)
                prev = cur
    cell_sum = tl.sum(energy, axis=1)                                           # [WG]
    out = cells_ptr + ((b * Tg + tg) * Hg + hg) * Wg + cell
    tl.store(out, cell_sum / (C * tubelet * patch * patch), mask=cell < Wg)


@triton.jit
def _block_mean_kernel(
    scores_ptr, out_ptr,
    Tg, Hg, Wg, Ot, Oh, Ow, bt, bh, bw,
    BLOCK_OH: tl.constexpr, BLOCK_OW: tl.constexpr,
):
    # One program: all origins (b, ot, ·, ·). The block sum of each origin is read directly from the
    # score grid (bt·bh·bw cache-resident loads per origin): the grid has at most a few thousand cells,
    # so this costs next to nothing beside the pooling and needs no prefix-sum scratch buffer.
    pid = tl.program_id(0)
    b = (pid // Ot).to(tl.int64)
    ot = pid % Ot
    oh = tl.arange(0, BLOCK_OH)[:, None]
    ow = tl.arange(0, BLOCK_OW)[None, :]
    ok = (oh < Oh) & (ow < Ow)
    total = tl.zeros([BLOCK_OH, BLOCK_OW], dtype=tl.float32)
    for dt in range(0, bt):
        plane = scores_ptr + (b * Tg + ot + dt) * Hg * Wg
        for dh in range(0, bh):
            for dw in range(0, bw):
                total += tl.load(plane + (oh + dh) * Wg + (ow + dw), mask=ok, other=0.0)
    out = out_ptr + (b * Ot + ot) * Oh * Ow + oh * Ow + ow
    tl.store(out, total / (bt * bh * bw), mask=ok)


def motion_scores_triton(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    B, C, T, H, W = video.shape
    Tg, Hg, Wg = T // tubelet, H // patch, W // patch
    cells = torch.empty((B, Tg, Hg, Wg), dtype=torch.float32, device=video.device)
    if cells.numel() == 0:
        return cells
    _motion_cells_kernel[(B * Tg, Hg)](
        video, cells, C, Tg, Hg, Wg, tubelet, patch, *video.stride(),
        BLOCK_WG=triton.next_power_of_2(Wg), BLOCK_PW=triton.next_power_of_2(patch),
    )
    # Per-sample max normalisation on B·N floats: the same torch ops as the reference.
    peak = cells.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, cells / torch.where(peak > 0, peak, 1.0), 0.0)


def block_mean_scores_triton(scores: torch.Tensor, bt: int, bh: int, bw: int) -> torch.Tensor:
    B, Tg, Hg, Wg = scores.shape
    Ot, Oh, Ow = Tg - bt + 1, Hg - bh + 1, Wg - bw + 1
    scores = scores.float().contiguous()
    out = torch.empty((B, Ot, Oh, Ow), dtype=torch.float32, device=scores.device)
    if out.numel() == 0:
        return out
    _block_mean_kernel[(B * Ot,)](
        scores, out, Tg, Hg, Wg, Ot, Oh, Ow, bt, bh, bw,
        BLOCK_OH=triton.next_power_of_2(Oh), BLOCK_OW=triton.next_power_of_2(Ow),
    )
    return out
