"""Triton kernels of the engine, each behind one dispatch function (contracts.md §4).

The engine imports only these names. CUDA tensors run the Triton kernels; everything else runs the
PyTorch reference. ``use_backend("triton")`` forces the kernels (on CPU tensors this needs
``TRITON_INTERPRET=1``), ``use_backend("reference")`` forces the references. Importing this package
never imports triton: the kernel files are loaded on first use.
"""
from kernels.dispatch import current_backend, triton_available, use_backend
from kernels.hard_weighted_loss import hard_weighted_loss
from kernels.masked_gather import masked_gather
from kernels.motion import block_mean_scores, motion_mask, motion_scores

__all__ = [
    "masked_gather",
    "hard_weighted_loss",
    "motion_scores",
    "motion_mask",
    "block_mean_scores",
    "use_backend",
    "current_backend",
    "triton_available",
]
