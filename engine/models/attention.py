"""The one place that decides which attention implementation the models run.

PyTorch SDPA is always available (flash / memory-efficient kernels on CUDA, a fused kernel on CPU).
xformers' memory-efficient attention is used only when it is installed AND a tiny probe call succeeds on
the device type at hand: its wheels are CUDA-only and often built for another torch/CUDA, so an import
alone proves nothing. The decision is made once per device type and logged in one line.
"""
from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SDPA = "sdpa"
XFORMERS = "xformers"


def _probe_xformers(device_type: str) -> str | None:
    """Run one tiny xformers call on the device type; return None if it worked, else the reason it did not."""
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed"
    try:
        import xformers.ops as xops

        dtype = torch.float16 if device_type == "cuda" else torch.float32
        q = torch.zeros(1, 4, 1, 8, device=device_type, dtype=dtype)  # [B, L, H, hd]
        xops.memory_efficient_attention(q, q, q)
    except Exception as err:  # any failure (missing CUDA runtime, no CPU kernel, ABI mismatch) means "not usable"
        first_line = (str(err).strip().splitlines() or [""])[0][:160]
        return f"{type(err).__name__}: {first_line}"
    return None


@functools.lru_cache(maxsize=None)
def attention_backend(device_type: str) -> str:
    """Backend for tensors on `device_type` ("cpu", "cuda", ...): xformers if it works there, else SDPA."""
    reason = _probe_xformers(device_type)
    if reason is None:
        log.info("attention backend on %s: xformers memory_efficient_attention", device_type)
        return XFORMERS
    log.info("attention backend on %s: torch SDPA (xformers unusable: %s)", device_type, reason)
    return SDPA


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention. q, k, v: [B, L, H, hd] -> [B, L, H, hd]."""
    if attention_backend(q.device.type) == XFORMERS:
        import xformers.ops as xops

        return xops.memory_efficient_attention(q, k, v)
    # SDPA wants [B, H, L, hd]; transposed views avoid copies.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
