"""Triton kernels of kernels/masked_gather.py (see there for the design)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import accumulation_type, autotune

# The first config is the one pinned under the interpreter: large tiles mean few (slow) programs there.
_CONFIGS = [
    triton.Config({"BLOCK_ROWS": 16, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 8, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 4, "BLOCK_D": 256}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 16, "BLOCK_D": 256}, num_warps=8),
    triton.Config({"BLOCK_ROWS": 32, "BLOCK_D": 128}, num_warps=8),
    triton.Config({"BLOCK_ROWS": 2, "BLOCK_D": 512}, num_warps=4),
]


@autotune(configs=_CONFIGS, key=["D", "HAS_POS"])
@triton.jit
def _gather_add_kernel(
    x_ptr, idx_ptr, pos_ptr, out_ptr,
    total_rows, K, D,
    stride_xb, stride_xn, stride_xd,
    stride_ib, stride_ik,
    stride_pn, stride_pd,
    HAS_POS: tl.constexpr, ACC: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program: BLOCK_ROWS output rows (flattened over b,k) x BLOCK_D features. int64 offsets.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)   # [R]
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)         # [C]
    row_ok = rows < total_rows
    b = rows // K
    k = rows % K
    src = tl.load(idx_ptr + b * stride_ib + k * stride_ik, mask=row_ok, other=0).to(tl.int64)  # [R]
    tile_ok = row_ok[:, None] & (cols < D)[None, :]
    x_offsets = (b * stride_xb + src * stride_xn)[:, None] + cols[None, :] * stride_xd
    values = tl.load(x_ptr + x_offsets, mask=tile_ok, other=0.0)
    if HAS_POS:
        pos_offsets = (src * stride_pn)[:, None] + cols[None, :] * stride_pd
        pos_values = tl.load(pos_ptr + pos_offsets, mask=tile_ok, other=0.0)
        # Add in fp32 (float64 for float64) and round once: what torch does for x + pos.
        values = values.to(ACC) + pos_values.to(ACC)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], values.to(out_ptr.dtype.element_ty), mask=tile_ok)


@autotune(configs=_CONFIGS, key=["D", "WRITE_ROWS", "WRITE_SUM"])
@triton.jit
def _scatter_rows_kernel(
    grad_out_ptr, inverse_ptr, grad_rows_ptr, grad_sum_ptr,
    B, N, K, D,
    WRITE_ROWS: tl.constexpr, WRITE_SUM: tl.constexpr, ACC: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program owns BLOCK_ROWS token rows n of the gradient: for each sample b it copies the output
    # gradient row k = inverse[b,n] (or zeros where n was not gathered) into grad_rows[b,n], and sums
    # those rows over b in a fixed order into grad_sum[n]. Every element is written once: no atomics.
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # [R]
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)          # [C]
    token_ok = tokens < N
    tile_ok = token_ok[:, None] & (cols < D)[None, :]
    total = tl.zeros([BLOCK_ROWS, BLOCK_D], dtype=ACC)
    sample_rows = tokens * 0                                                         # [R] int64: b*N
    sample_out_rows = tokens * 0                                                     # [R] int64: b*K
    for _ in range(0, B):
        k = tl.load(inverse_ptr + sample_rows + tokens, mask=token_ok, other=-1).to(tl.int64)  # [R]
        hit = tile_ok & (k >= 0)[:, None]
        grad = tl.load(grad_out_ptr + (sample_out_rows + k)[:, None] * D + cols[None, :], mask=hit, other=0.0)
        if WRITE_ROWS:
            tl.store(grad_rows_ptr + (sample_rows + tokens)[:, None] * D + cols[None, :],
                     grad.to(grad_rows_ptr.dtype.element_ty), mask=tile_ok)
        if WRITE_SUM:
            total += grad.to(ACC)
        sample_rows += N
        sample_out_rows += K
    if WRITE_SUM:
        tl.store(grad_sum_ptr + tokens[:, None] * D + cols[None, :], total.to(grad_sum_ptr.dtype.element_ty),
                 mask=tile_ok)


def _grid(rows: int, D: int):
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_ROWS"]), triton.cdiv(D, meta["BLOCK_D"]))


def gather_forward(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    B, K = idx.shape
    D = x.shape[2]
    out_dtype = x.dtype if pos is None else torch.result_type(x, pos)
    out = torch.empty((B, K, D), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    # A size-1 batch or token dim of x is broadcast: stride 0 reads the same row for every (b, k).
    stride_xb = x.stride(0) if x.shape[0] > 1 else 0
    stride_xn = x.stride(1) if x.shape[1] > 1 else 0
    pos_arg = pos if pos is not None else x
    stride_pn, stride_pd = (pos.stride(0), pos.stride(1)) if pos is not None else (0, 0)
    _gather_add_kernel[_grid(B * K, D)](
        x, idx, pos_arg, out,
        B * K, K, D,
        stride_xb, stride_xn, x.stride(2),
        idx.stride(0), idx.stride(1),
        stride_pn, stride_pd,
        HAS_POS=pos is not None, ACC=accumulation_type(out_dtype),
    )
    return out


def _inverse_index(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """int32 [B,N]: inverse[b, idx[b,k]] = k, −1 where token n was not gathered (idx unique per row)."""
    B, K = idx.shape
    inverse = torch.full((B, num_tokens), -1, dtype=torch.int32, device=idx.device)
    positions = torch.arange(K, dtype=torch.int32, device=idx.device).expand(B, K)
    return inverse.scatter_(1, idx, positions)


def _scatter_rows(grad_out, idx, num_tokens, rows_dtype, sum_dtype, write_rows, write_sum):
    B, K, D = grad_out.shape
    grad_rows = torch.empty((B, num_tokens, D) if write_rows else (0,), dtype=rows_dtype, device=grad_out.device)
    grad_sum = torch.empty((num_tokens, D) if write_sum else (0,), dtype=sum_dtype, device=grad_out.device)
    if B * num_tokens * D == 0:
        return grad_rows.zero_(), grad_sum.zero_()
    inverse = _inverse_index(idx, num_tokens)
    _scatter_rows_kernel[_grid(num_tokens, D)](
        grad_out, inverse, grad_rows if write_rows else grad_out, grad_sum if write_sum else grad_out,
        B, num_tokens, K, D,
        WRITE_ROWS=write_rows, WRITE_SUM=write_sum, ACC=accumulation_type(grad_out.dtype),
    )
    return grad_rows, grad_sum


def gather_backward(grad_out, idx, num_tokens, x_batch, x_tokens, x_dtype, pos_dtype, need_x, need_pos):
    """-> [grad_x of x's shape [x_batch, x_tokens, D] (or empty), grad_pos [N,D] (or empty)]."""
    B, K, D = grad_out.shape
    device = grad_out.device
    empty_x = torch.empty((0,), dtype=x_dtype, device=device)
    empty_pos = torch.empty((0,), dtype=pos_dtype, device=device)
    x_per_token = need_x and x_tokens > 1
    rows_for_x = x_per_token and x_batch > 1          # x [B,N,D]: one gradient row per (b, n)
    sum_for_x = x_per_token and x_batch == 1          # x [1,N,D]: gradient summed over b, like pos
    write_sum = need_pos or sum_for_x
    sum_dtype = pos_dtype if need_pos else x_dtype
    grad_rows, grad_sum = (empty_x, empty_pos)
    if rows_for_x or write_sum:
        grad_rows, grad_sum = _scatter_rows(grad_out, idx, num_tokens, x_dtype, sum_dtype, rows_for_x, write_sum)
    grad_pos = grad_sum if need_pos else empty_pos
    if not need_x:
        grad_x = empty_x
    elif rows_for_x:
        grad_x = grad_rows
    elif sum_for_x:
        grad_x = grad_sum.to(x_dtype).unsqueeze(0).clone()
    else:
        # A token broadcast over positions ([B,1,D] or [1,1,D]): its gradient sums over the gathered rows.
        dims = (1,) if x_batch > 1 else (0, 1)
        acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        grad_x = grad_out.sum(dim=dims, keepdim=True, dtype=acc).to(x_dtype)
    return [grad_x, grad_pos]
