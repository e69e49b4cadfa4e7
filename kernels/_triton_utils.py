"""Helpers shared by the Triton kernel files (imported only by them, so triton stays optional)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def autotune(configs: list[triton.Config], key: list[str], **kwargs):
    """``triton.autotune`` on a GPU; under the CPU interpreter (no driver to time on) pin ``configs[0]``."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pinned = configs[0].kwargs
        return triton.heuristics({name: (lambda value: (lambda args: value))(value) for name, value in pinned.items()})
    return triton.autotune(configs=configs, key=key, **kwargs)


def accumulation_type(dtype: torch.dtype):
    """tl dtype for in-kernel math: fp32, float64 for float64 inputs (bf16 math is never done directly)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
