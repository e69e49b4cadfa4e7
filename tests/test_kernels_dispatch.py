"""Dispatch: which backend runs, and that kernels imports and works without triton."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels.dispatch import use_triton

REPO = Path(__file__).resolve().parents[1]


def test_cpu_tensors_default_to_the_reference():
    assert kernels.current_backend() == "auto"
    assert not use_triton(torch.zeros(1))


def test_use_backend_nests_and_restores():
    with kernels.use_backend("reference"):
        with kernels.use_backend("triton"):
            assert kernels.current_backend() == "triton" and use_triton(torch.zeros(1))
        assert kernels.current_backend() == "reference" and not use_triton(torch.zeros(1))
    assert kernels.current_backend() == "auto"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown kernels backend"):
        with kernels.use_backend("cuda"):
            pass


def test_forced_triton_on_cpu_without_interpreter_fails_loudly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.masked_gather(torch.zeros(1, 2, 3), torch.zeros(1, 1, dtype=torch.int64))


def test_package_imports_and_runs_without_triton():
    # sys.modules[name] = None makes "import triton" fail, as on a machine where it is not installed.
    script = """
import sys
sys.modules["triton"] = None
import torch, kernels
assert not kernels.triton_available()
x, idx = torch.randn(2, 5, 3), torch.tensor([[0, 4], [1, 2]])
assert torch.equal(kernels.masked_gather(x, idx), x[torch.arange(2)[:, None], idx])
loss = kernels.hard_weighted_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
mask = kernels.motion_mask(kernels.motion_scores(torch.randn(1, 3, 2, 4, 4), 1, 2), (1, 1, 1), 2, 2.0, 0.1)
assert mask.shape == (1, 8) and sys.modules["triton"] is None
try:
    with kernels.use_backend("triton"):
        kernels.masked_gather(x, idx)
except RuntimeError as err:
    assert "not importable" in str(err)
else:
    raise AssertionError("forced triton without triton must fail")
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.interpreter
def test_autotune_shim_pins_the_first_config_under_the_interpreter():
    import triton
    import triton.language as tl

    from kernels._triton_utils import autotune

    @autotune(configs=[triton.Config({"BLOCK": 4}), triton.Config({"BLOCK": 8})], key=["n"])
    @triton.jit
    def write_block_size(out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, tl.full([BLOCK], BLOCK, tl.int32), mask=offsets < n)

    out = torch.zeros(8, dtype=torch.int32)
    write_block_size[(1,)](out, 8)
    assert out.tolist() == [4, 4, 4, 4, 0, 0, 0, 0]
