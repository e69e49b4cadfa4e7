"""Test-wide settings. Runs before any test module imports triton kernels or deepspeed."""
import os


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


# Without a GPU the Triton kernels run in the interpreter on CPU tensors; this must be set before any
# @triton.jit decorator executes. On a GPU machine they compile for real (the `gpu` tests).
# DeepSpeed: without a GPU pick the CPU accelerator without probing for CUDA.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, never faked, when CUDA is absent."""
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tests use tiny tensors, which gain nothing from intra-op threads; on a shared 2-core machine the
    threads' barriers made them 10-50x slower. Subprocesses (training runs) choose their own."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
