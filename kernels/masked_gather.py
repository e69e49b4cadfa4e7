"""Fused masked-token gather: out[b,k] = x[b, idx[b,k]] + pos[idx[b,k]] in one pass.

Replaces V-JEPA's ``apply_masks`` (an expanded [B,K,D] int64 index, a ``pos_embed.repeat(B,1,1)``
and a mask token repeated to [B,N,D] before gathering). Nothing of size [B,N,D] is built in the
forward pass.

Mask-token placement in the predictor: pass the token itself as ``x`` with shape [1,1,D] (or one token
per sample, [B,1,D]) and the position table as ``pos``: ``masked_gather(mask_token, target_idx, pos)``
gives token + pos[target_idx] as [B,K,D]; its gradient is the sum of the output gradient over the
gathered rows, with no [B,N,D] intermediate. A [1,N,D] ``x`` (shared across the batch) works too.

Backward: indices are unique within a row (contracts.md §3), so each output row has one source row.
The kernel inverts ``idx`` into ``inv[b,n] = k or -1`` and every program owns whole rows of the
gradient: it writes grad_x[b,n] directly (no zero fill, no atomics) and sums pos's gradient over b in
a fixed order, so the result is deterministic. Duplicate indices in a row are outside the contract:
the backward would then keep one of the duplicates' gradients.
"""
from __future__ import annotations

import torch

from kernels.dispatch import use_triton
from kernels.reference import _gather_shapes, masked_gather_reference


@torch.library.custom_op("vjepa_kernels::masked_gather", mutates_args=())
def _masked_gather_op(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    from kernels._triton_masked_gather import gather_forward

    return gather_forward(x, idx, pos)


@_masked_gather_op.register_fake
def _masked_gather_fake(x, idx, pos):
    dtype = x.dtype if pos is None else torch.result_type(x, pos)
    return x.new_empty((idx.shape[0], idx.shape[1], x.shape[2]), dtype=dtype)


@torch.library.custom_op("vjepa_kernels::masked_gather_backward", mutates_args=())
def _masked_gather_backward_op(
    grad_out: torch.Tensor, idx: torch.Tensor, num_tokens: int, x_batch: int, x_tokens: int,
    x_dtype: torch.dtype, pos_dtype: torch.dtype, need_x: bool, need_pos: bool,
) -> list[torch.Tensor]:
    from kernels._triton_masked_gather import gather_backward

    return gather_backward(grad_out, idx, num_tokens, x_batch, x_tokens, x_dtype, pos_dtype, need_x, need_pos)


@_masked_gather_backward_op.register_fake
def _masked_gather_backward_fake(grad_out, idx, num_tokens, x_batch, x_tokens, x_dtype, pos_dtype, need_x, need_pos):
    D = grad_out.shape[2]
    grad_x = grad_out.new_empty((x_batch, x_tokens, D) if need_x else (0,), dtype=x_dtype)
    grad_pos = grad_out.new_empty((num_tokens, D) if need_pos else (0,), dtype=pos_dtype)
    return [grad_x, grad_pos]


def _setup_context(ctx, inputs, output):
    x, idx, pos = inputs
    ctx.save_for_backward(idx)
    ctx.num_tokens = pos.shape[0] if pos is not None else x.shape[1]
    ctx.x_batch, ctx.x_tokens = x.shape[0], x.shape[1]
    ctx.x_dtype = x.dtype
    ctx.pos_dtype = pos.dtype if pos is not None else x.dtype
    ctx.need_x = x.requires_grad
    ctx.need_pos = pos is not None and pos.requires_grad


def _backward(ctx, grad_out):
    (idx,) = ctx.saved_tensors
    if not (ctx.need_x or ctx.need_pos):
        return None, None, None
    grad_x, grad_pos = _masked_gather_backward_op(
        grad_out.contiguous(), idx, ctx.num_tokens, ctx.x_batch, ctx.x_tokens,
        ctx.x_dtype, ctx.pos_dtype, ctx.need_x, ctx.need_pos,
    )
    return (grad_x if ctx.need_x else None), None, (grad_pos if ctx.need_pos else None)


_masked_gather_op.register_autograd(_backward, setup_context=_setup_context)


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """x [B,N,D] (or [1|B,1|N,D]), idx int64 [B,K], pos [N,D] or None -> [B,K,D]; autograd to x and pos."""
    _gather_shapes(x, idx, pos)
    if use_triton(x):
        return _masked_gather_op(x, idx, pos)
    return masked_gather_reference(x, idx, pos)
