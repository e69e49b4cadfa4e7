"""masked_gather: the Triton kernel (interpreter on CPU) against the PyTorch reference, exactly."""
import pytest
import torch

from kernels import masked_gather, use_backend
from kernels.reference import masked_gather_reference

# Triton on CPU tensors in the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, fails these
# tests if it is set otherwise there, and skips them on a CUDA machine that compiles the kernels.
pytestmark = pytest.mark.interpreter


def sorted_unique_indices(B: int, N: int, K: int, generator: torch.Generator) -> torch.Tensor:
    rows = [torch.randperm(N, generator=generator)[:K].sort().values for _ in range(B)]
    return torch.stack(rows)                                               # int64 [B,K]


def x_of_layout(layout: str, B: int, N: int, D: int, generator: torch.Generator) -> torch.Tensor:
    shape = {"per_sample": (B, N, D), "shared": (1, N, D), "token": (1, 1, D), "token_per_sample": (B, 1, D)}[layout]
    return torch.randn(shape, generator=generator)


def run_both(x, idx, pos, grad):
    """Forward and backward on both backends from identical leaves; returns (triton, reference) results."""
    results = []
    for backend in ("triton", "reference"):
        xb = x.clone().requires_grad_(True)
        posb = pos.clone().requires_grad_(True) if pos is not None else None
        with use_backend(backend):
            out = masked_gather(xb, idx, posb)
        out.backward(grad)
        results.append((out.detach(), xb.grad, None if posb is None else posb.grad))
    return results


# (B, N, K, D): single element, typical, K = N (nothing dropped), D over two feature tiles, odd sizes.
SHAPES = [(1, 1, 1, 1), (2, 10, 4, 5), (3, 7, 7, 33), (2, 13, 5, 130), (5, 9, 3, 17)]


# Every shape for per-sample x with and without pos; the broadcast layouts (the predictor's mask token,
# a batch-shared x) on two shapes; a broadcast token always comes with pos.
CASES = (
    [(shape, "per_sample", with_pos) for shape in SHAPES for with_pos in (True, False)]
    + [(shape, layout, True) for shape in SHAPES[1:4:2] for layout in ("shared", "token", "token_per_sample")]
    + [(SHAPES[3], "shared", False)]
)


@pytest.mark.parametrize("shape,layout,with_pos", CASES)
def test_forward_and_backward_equal_reference(shape, layout, with_pos):
    B, N, K, D = shape
    g = torch.Generator().manual_seed(B * 1000 + N * 10 + K)
    idx = sorted_unique_indices(B, N, K, g)
    x = x_of_layout(layout, B, N, D, g)
    pos = torch.randn(N, D, generator=g) if with_pos else None
    # Integer-valued output gradients: every sum is exact, so any summation order gives the same bits.
    grad = torch.randint(-8, 9, (B, K, D), generator=g).float()
    (out_t, gx_t, gp_t), (out_r, gx_r, gp_r) = run_both(x, idx, pos, grad)
    assert torch.equal(out_t, out_r)
    assert gx_t.shape == x.shape and torch.equal(gx_t, gx_r)
    if with_pos:
        assert torch.equal(gp_t, gp_r)


def test_random_gradients_equal_reference_bitwise():
    # Float gradients: x's rows are copies, pos sums over b in index order like the reference.
    g = torch.Generator().manual_seed(7)
    B, N, K, D = 4, 11, 6, 9
    idx = sorted_unique_indices(B, N, K, g)
    x, pos, grad = torch.randn(B, N, D, generator=g), torch.randn(N, D, generator=g), torch.randn(B, K, D, generator=g)
    (out_t, gx_t, gp_t), (out_r, gx_r, gp_r) = run_both(x, idx, pos, grad)
    assert torch.equal(out_t, out_r) and torch.equal(gx_t, gx_r) and torch.equal(gp_t, gp_r)


def test_non_contiguous_and_unsorted_inputs():
    g = torch.Generator().manual_seed(3)
    B, N, K, D = 3, 8, 5, 6
    x = torch.randn(B, D, N, generator=g).transpose(1, 2)                  # [B,N,D] view, stride_d = N
    pos = torch.randn(D, N, generator=g).t()                               # [N,D] view
    idx = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])  # unique, not sorted
    with use_backend("triton"):
        out = masked_gather(x, idx, pos)
    assert torch.equal(out, masked_gather_reference(x, idx, pos))


def test_mixed_dtypes_promote_like_torch():
    g = torch.Generator().manual_seed(5)
    B, N, K, D = 2, 6, 3, 4
    idx = sorted_unique_indices(B, N, K, g)
    x = torch.randn(B, N, D, generator=g).to(torch.bfloat16)
    pos = torch.randn(N, D, generator=g)
    with use_backend("triton"):
        out = masked_gather(x, idx, pos)
        moved = masked_gather(x, idx)
    assert out.dtype == torch.float32 and torch.equal(out, masked_gather_reference(x, idx, pos))
    assert moved.dtype == torch.bfloat16 and torch.equal(moved, masked_gather_reference(x, idx))


def test_gradcheck_float64_triton_path():
    g = torch.Generator().manual_seed(11)
    B, N, K, D = 2, 4, 2, 2
    idx = sorted_unique_indices(B, N, K, g)
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    token = torch.randn(1, 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    with use_backend("triton"):
        assert torch.autograd.gradcheck(lambda a, p: masked_gather(a, idx, p), (x, pos))
        assert torch.autograd.gradcheck(lambda t, p: masked_gather(t, idx, p), (token, pos))


def test_pos_only_gradient_when_x_is_frozen():
    g = torch.Generator().manual_seed(13)
    B, N, K, D = 3, 7, 4, 5
    idx = sorted_unique_indices(B, N, K, g)
    x = torch.randn(B, N, D, generator=g)                                  # no grad
    pos = torch.randn(N, D, generator=g, requires_grad=True)
    with use_backend("triton"):
        masked_gather(x, idx, pos).sum().backward()
    counts = torch.zeros(N).index_add_(0, idx.flatten(), torch.ones(B * K))  # how often each token was kept
    assert torch.equal(pos.grad, counts[:, None].expand(N, D))


@pytest.mark.parametrize("bad", ["int32_idx", "wrong_pos_width", "wrong_batch"])
def test_rejects_malformed_inputs(bad):
    x, idx, pos = torch.randn(2, 6, 4), torch.tensor([[0, 2], [1, 5]]), torch.randn(6, 4)
    if bad == "int32_idx":
        idx = idx.int()
    elif bad == "wrong_pos_width":
        pos = torch.randn(6, 3)
    else:
        x = torch.randn(3, 6, 4)
    with pytest.raises(ValueError):
        masked_gather(x, idx, pos)
