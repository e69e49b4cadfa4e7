"""Test-wide settings. Runs before any test module imports torch, triton or deepspeed."""
import os

# Triton kernels run in the interpreter on CPU tensors; must be set before @triton.jit executes.
os.environ.setdefault("TRITON_INTERPRET", "1")
# DeepSpeed: pick the CPU accelerator without probing for CUDA, and keep its JIT cache in the repo.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "torch_extensions"))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, never faked, when CUDA is absent."""
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
