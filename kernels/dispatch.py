"""Which implementation a kernel call runs: the Triton kernel or the PyTorch reference.

Default ("auto"): Triton for CUDA tensors when triton imports, the reference everywhere else, so the
engine runs unchanged on a CPU-only machine. Tests force the Triton path on CPU tensors with
``use_backend("triton")`` under ``TRITON_INTERPRET=1``; benchmarks force the reference on CUDA with
``use_backend("reference")``. The choice is a process-wide module global (it nests; torch.compile
guards on it and recompiles when it changes, which a ContextVar would not allow: dynamo cannot trace
``ContextVar.get``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "reference")

_backend = "auto"


def triton_available() -> bool:
    """True when the triton package can be imported (it is imported lazily, only by the kernel files)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the kernel calls inside the block on ``name``: "auto", "triton" or "reference"."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; expected one of {BACKENDS}")
    global _backend
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def current_backend() -> str:
    return _backend


def use_triton(tensor: torch.Tensor) -> bool:
    """Decide for one call, from the device of its main input tensor."""
    choice = _backend
    if choice == "reference":
        return False
    if choice == "auto":
        return tensor.is_cuda and triton_available() and not interpreting()
    # Forced Triton: fail loudly rather than silently running the reference.
    if not triton_available():
        raise RuntimeError("kernels.use_backend('triton') but triton is not importable")
    if not tensor.is_cuda and not interpreting():
        raise RuntimeError(
            "kernels.use_backend('triton') on CPU tensors needs TRITON_INTERPRET=1 set before kernels run"
        )
    return True
