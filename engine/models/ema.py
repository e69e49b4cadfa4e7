"""EMA target encoder: an fp32, gradient-free copy of the online encoder, updated with one foreach lerp."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_target(online: nn.Module) -> nn.Module:
    """fp32 deep copy of `online` whose parameters never require gradients."""
    target = copy.deepcopy(online).float()
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter, in fp32.

    Parameters are matched by position; names and shapes must agree. Online parameters in a lower
    precision (bf16 weights) are upcast before the update, so the target accumulates in fp32.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum={momentum} must lie in [0, 1]")
    target_named = list(target.named_parameters())
    online_named = list(online.named_parameters())
    if len(target_named) != len(online_named):
        raise ValueError(f"EMA target has {len(target_named)} parameters, online module {len(online_named)}")
    target_params, online_params = [], []
    for (t_name, t_param), (o_name, o_param) in zip(target_named, online_named):
        if t_name != o_name or t_param.shape != o_param.shape:
            raise ValueError(f"EMA parameter mismatch: target {t_name} {tuple(t_param.shape)} vs online {o_name} "
                             f"{tuple(o_param.shape)}")
        if t_param.dtype != torch.float32:
            raise TypeError(f"EMA target parameter {t_name} is {t_param.dtype}; build it with make_ema_target (fp32)")
        target_params.append(t_param)
        online_params.append(o_param.detach().to(device=t_param.device, dtype=torch.float32))
    # lerp: t + w * (o - t) with w = 1 - m, i.e. m * t + (1 - m) * o in one fused multi-tensor pass.
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
