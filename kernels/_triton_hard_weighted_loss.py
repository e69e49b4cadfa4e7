"""Triton kernels of kernels/hard_weighted_loss.py (see there for the design).

Three launches: token errors (+ packed sign codes) over [B*K, D]; per-row weights over [B, K]; in the
backward, the per-token scale over [B*K, D]. Only the first and the last touch [B,K,D] data: per
element, forward + backward read pred and target, write and read 2 bits, and write the gradient.

Sign codes: 0 for pred == target, 1 for pred > target, 2 for pred < target, four per byte (element
d in bits 2·(d mod 4) of byte d // 4 of its row). The zero code keeps sign(0) = 0 exact, like torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import accumulation_type, autotune

_ROW_CONFIGS = [
    triton.Config({"BLOCK_ROWS": 16, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 8, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 4, "BLOCK_D": 256}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 8, "BLOCK_D": 256}, num_warps=8),
    triton.Config({"BLOCK_ROWS": 2, "BLOCK_D": 512}, num_warps=4),
    triton.Config({"BLOCK_ROWS": 1, "BLOCK_D": 1024}, num_warps=4),
]


@autotune(configs=_ROW_CONFIGS, key=["D", "WRITE_SIGN"])
@triton.jit
def _token_error_kernel(
    pred_ptr, target_ptr, err_ptr, codes_ptr, total_rows, D, packed_D,
    WRITE_SIGN: tl.constexpr, ACC: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # err[r] = mean_d |pred[r,d] − target[r,d]|, and the packed sign codes for the backward.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # [R]
    row_ok = rows < total_rows
    abs_sum = tl.zeros([BLOCK_ROWS, BLOCK_D], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        # Upcast before any arithmetic: bf16 math is wrong under the interpreter and imprecise anyway.
        diff = tl.load(pred_ptr + offsets, mask=tile_ok, other=0.0).to(ACC) \
            - tl.load(target_ptr + offsets, mask=tile_ok, other=0.0).to(ACC)
        abs_sum += tl.abs(diff)
        if WRITE_SIGN:
            code = (diff > 0).to(tl.int32) + 2 * (diff < 0).to(tl.int32)              # [R, C], 0 past D
            quads = tl.reshape(code, [BLOCK_ROWS, BLOCK_D // 4, 4])                 # 4 neighbours per byte
            packed = tl.sum(quads << (2 * tl.arange(0, 4))[None, None, :], axis=2)  # [R, C/4]
            byte_cols = d0 // 4 + tl.arange(0, BLOCK_D // 4)
            tl.store(codes_ptr + rows[:, None] * packed_D + byte_cols[None, :], packed.to(tl.uint8),
                     mask=row_ok[:, None] & (byte_cols < packed_D)[None, :])
    tl.store(err_ptr + rows, tl.sum(abs_sum, axis=1) / D, mask=row_ok)


@triton.jit
def _load_row_chunk(err_ptr, valid_ptr, row_start, k0, K, HAS_VALID: tl.constexpr, BLOCK_K: tl.constexpr):
    """Errors of tokens k0..k0+BLOCK_K of one row, and which of them are valid (in range and unmasked)."""
    ks = k0 + tl.arange(0, BLOCK_K)
    ok = ks < K
    if HAS_VALID:
        ok = ok & (tl.load(valid_ptr + row_start + ks, mask=ks < K, other=0) != 0)
    return tl.load(err_ptr + row_start + ks, mask=ok, other=0.0), ok


@triton.jit
def _row_weights_kernel(
    err_ptr, valid_ptr, weight_ptr, row_loss_ptr, K, tau,
    HAS_VALID: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program per sample: w = K_b·softmax(e/τ) over the valid tokens, and sum_k w·e.
    # Three passes over the [K] row of errors (max, sum of exp, weights) so that any K fits.
    row_start = tl.program_id(0).to(tl.int64) * K
    row_max = tl.full([], float("-inf"), ACC)
    count = tl.zeros([], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        err, ok = _load_row_chunk(err_ptr, valid_ptr, row_start, k0, K, HAS_VALID, BLOCK_K)
        row_max = tl.maximum(row_max, tl.max(tl.where(ok, err / tau, float("-inf")), axis=0))
        count += tl.sum(ok.to(ACC), axis=0)
    # A row without valid tokens (row_max −inf, exp_sum 0) gets harmless values; its weights are 0 anyway.
    row_max = tl.where(count > 0, row_max, 0.0)
    exp_sum = tl.zeros([], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        err, ok = _load_row_chunk(err_ptr, valid_ptr, row_start, k0, K, HAS_VALID, BLOCK_K)
        exp_sum += tl.sum(tl.where(ok, tl.exp(err / tau - row_max), 0.0), axis=0)
    exp_sum = tl.where(count > 0, exp_sum, 1.0)
    row_loss = tl.zeros([], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        err, ok = _load_row_chunk(err_ptr, valid_ptr, row_start, k0, K, HAS_VALID, BLOCK_K)
        weight = tl.where(ok, count * (tl.exp(err / tau - row_max) / exp_sum), 0.0)
        tl.store(weight_ptr + row_start + k0 + tl.arange(0, BLOCK_K), weight, mask=k0 + tl.arange(0, BLOCK_K) < K)
        row_loss += tl.sum(weight * err, axis=0)
    tl.store(row_loss_ptr + tl.program_id(0), row_loss)


@autotune(configs=_ROW_CONFIGS, key=["D"])
@triton.jit
def _scale_sign_kernel(
    codes_ptr, scale_ptr, grad_ptr, total_rows, D, packed_D, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # grad[r,d] = sign[r,d] · scale[r], the sign unpacked from its 2-bit code.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < total_rows
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)                   # [R]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (cols < D)[None, :]
        # Each byte is loaded by its four elements: one DRAM read, the repeats hit the cache.
        byte = tl.load(codes_ptr + rows[:, None] * packed_D + (cols // 4)[None, :], mask=tile_ok, other=0)
        code = (byte.to(tl.int32) >> (2 * (cols % 4)).to(tl.int32)[None, :]) & 3
        sign = tl.where(code == 1, 1.0, tl.where(code == 2, -1.0, 0.0)).to(scale.dtype)
        tl.store(grad_ptr + rows[:, None] * D + cols[None, :], (sign * scale[:, None]).to(grad_ptr.dtype.element_ty),
                 mask=tile_ok)


def packed_width(D: int) -> int:
    """Bytes per row of sign codes: four 2-bit codes per byte."""
    return (D + 3) // 4


def _row_grid(rows: int):
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_ROWS"]),)


def _valid_count(valid: torch.Tensor | None, B: int, K: int, dtype: torch.dtype, device) -> torch.Tensor:
    if valid is None:
        return torch.tensor(float(max(B * K, 1)), dtype=dtype, device=device)
    return valid.sum().clamp_min(1).to(dtype)


def hw_loss_forward(pred, target, tau, valid, compute_grad):
    B, K, D = pred.shape
    acc_dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    device = pred.device
    pred, target = pred.contiguous(), target.contiguous()
    errors = torch.empty((B, K), dtype=acc_dtype, device=device)
    weights = torch.empty((B, K), dtype=acc_dtype, device=device)
    row_loss = torch.empty((B,), dtype=acc_dtype, device=device)
    codes = torch.empty((B, K, packed_width(D)) if compute_grad else (0,), dtype=torch.uint8, device=device)
    if B * K == 0 or D == 0:
        weights.zero_()
        codes.zero_()
        return [torch.zeros((), dtype=acc_dtype, device=device), weights, codes]
    acc = accumulation_type(pred.dtype)
    _token_error_kernel[_row_grid(B * K)](
        pred, target, errors, codes if compute_grad else pred, B * K, D, packed_width(D),
        WRITE_SIGN=compute_grad, ACC=acc,
    )
    valid_arg = valid.contiguous() if valid is not None else errors
    block_k = min(triton.next_power_of_2(K), 4096)
    _row_weights_kernel[(B,)](
        errors, valid_arg, weights, row_loss, K, float(tau), HAS_VALID=valid is not None, ACC=acc, BLOCK_K=block_k,
    )
    loss = row_loss.sum() / _valid_count(valid, B, K, acc_dtype, device)
    return [loss, weights, codes]


def hw_loss_backward(grad_loss, codes, weights, valid, dim, grad_dtype):
    B, K, _ = codes.shape
    D = dim
    grad = torch.empty((B, K, D), dtype=grad_dtype, device=codes.device)
    if grad.numel() == 0:
        return grad
    total = _valid_count(valid, B, K, weights.dtype, weights.device)
    # Same order of operations as autograd through the reference: w·(g/count), then /D, then ·sign.
    token_scale = ((weights * (grad_loss.to(weights.dtype) / total)) / D).contiguous()  # [B,K]
    _scale_sign_kernel[_row_grid(B * K)](codes, token_scale, grad, B * K, D, packed_width(D))
    return grad
