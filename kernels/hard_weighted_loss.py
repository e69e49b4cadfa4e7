"""Hard-region weighted L1 loss (the paper's HW term), with its gradient prepared in the forward pass.

loss = mean over valid (b,k) of w[b,k]·e[b,k],  e[b,k] = mean_d |pred−target|,
w[b,:] = K_b·softmax(e[b, valid]/τ) computed without gradient (contracts.md §4); with scope="batch" one
softmax over the valid tokens of the whole batch instead, w = K·softmax(e[valid]/τ), K their count.

Since w carries no gradient, d loss / d pred[b,k,d] = w[b,k]·sign(pred−target)[b,k,d] / (D·count).
The forward pass is the only one that reads pred and target: while it sums |pred−target| it also
stores sign(pred−target) as 2-bit codes (exact, a quarter byte per element). The backward scales the
unpacked signs by the per-token factor w·grad/(D·count) in one pass. This is Liger-Kernel's "gradient
in the forward" idea, with the per-token scale applied in the backward (where grad_output is known)
instead of a second forward pass over pred and target. Math in fp32 (float64 stays float64),
bf16/fp16 loads and stores.
"""
from __future__ import annotations

import torch

from kernels.dispatch import use_triton
from kernels.reference import check_scope, hard_weighted_loss_reference


def _check(pred, target, valid):
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [B,K,D], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if valid is not None and (valid.shape != pred.shape[:2] or valid.dtype != torch.bool):
        raise ValueError(f"valid must be bool {tuple(pred.shape[:2])}, got {valid.dtype} {tuple(valid.shape)}")


def _loss_dtype(pred: torch.Tensor) -> torch.dtype:
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


@torch.library.custom_op("vjepa_kernels::hard_weighted_loss_forward", mutates_args=())
def _hw_forward_op(
    pred: torch.Tensor, target: torch.Tensor, tau: float, valid: torch.Tensor | None, compute_grad: bool
) -> list[torch.Tensor]:
    """-> [loss (scalar), weights w [B,K], sign codes uint8 [B,K,ceil(D/4)] (empty when no grad is needed)]."""
    from kernels._triton_hard_weighted_loss import hw_loss_forward

    return hw_loss_forward(pred, target, tau, valid, compute_grad)


@_hw_forward_op.register_fake
def _hw_forward_fake(pred, target, tau, valid, compute_grad):
    B, K, D = pred.shape
    acc = _loss_dtype(pred)
    return [
        pred.new_empty((), dtype=acc),
        pred.new_empty((B, K), dtype=acc),
        pred.new_empty((B, K, (D + 3) // 4) if compute_grad else (0,), dtype=torch.uint8),
    ]


@torch.library.custom_op("vjepa_kernels::hard_weighted_loss_backward", mutates_args=())
def _hw_backward_op(
    grad_loss: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor | None,
    dim: int, grad_dtype: torch.dtype,
) -> torch.Tensor:
    from kernels._triton_hard_weighted_loss import hw_loss_backward

    return hw_loss_backward(grad_loss, codes, weights, valid, dim, grad_dtype)


@_hw_backward_op.register_fake
def _hw_backward_fake(grad_loss, codes, weights, valid, dim, grad_dtype):
    return codes.new_empty((codes.shape[0], codes.shape[1], dim), dtype=grad_dtype)


def _setup_context(ctx, inputs, output):
    pred, target, tau, valid, compute_grad = inputs
    _, weights, codes = output
    ctx.save_for_backward(codes, weights, valid)
    ctx.dim = pred.shape[2]
    ctx.grad_dtype = pred.dtype
    ctx.need_pred = pred.requires_grad
    ctx.need_target = target.requires_grad


def _backward(ctx, output_grads):
    grad_loss = output_grads[0]  # weights and codes are not differentiable outputs
    codes, weights, valid = ctx.saved_tensors
    if not (ctx.need_pred or ctx.need_target):
        return None, None, None, None, None
    grad_pred = _hw_backward_op(grad_loss, codes, weights, valid, ctx.dim, ctx.grad_dtype)
    grad_target = -grad_pred if ctx.need_target else None
    return (grad_pred if ctx.need_pred else None), grad_target, None, None, None


_hw_forward_op.register_autograd(_backward, setup_context=_setup_context)


def hard_weighted_loss(
    pred: torch.Tensor, target: torch.Tensor, tau: float = 1.0, valid: torch.Tensor | None = None,
    scope: str = "sample",
) -> torch.Tensor:
    """pred, target [B,K,D]; valid bool [B,K] or None -> scalar fp32 loss (gradient through e only).

    scope "sample": one softmax per row (w = K_b·softmax); "batch": one over all valid tokens of the batch
    (w = K·softmax, K = valid tokens in the batch)."""
    _check(pred, target, valid)
    check_scope(scope)
    if use_triton(pred):
        if scope == "batch":
            # The batch softmax is the row softmax of the batch seen as one row: [B,K,D] -> [1,B·K,D] is a
            # view, and the row-weights kernel loops over any K, so the same kernels serve both scopes
            # (one weights program instead of B; the loss is the same mean over valid tokens).
            B, K, D = pred.shape
            pred, target = pred.reshape(1, B * K, D), target.reshape(1, B * K, D)
            valid = valid.reshape(1, B * K) if valid is not None else None
        compute_grad = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
        loss, _, _ = _hw_forward_op(pred, target, float(tau), valid, compute_grad)
        return loss
    return hard_weighted_loss_reference(pred, target, tau, valid, scope)
