"""Compiled Triton kernels on a CUDA GPU against the references, fp32 and bf16, at model sizes.

Skipped without CUDA (tests/conftest.py). On CUDA the default ("auto") backend is Triton, so these
also check what the engine runs.
"""
import pytest
import torch

from kernels import block_mean_scores, hard_weighted_loss, masked_gather, motion_mask, motion_scores, use_backend
from kernels.dispatch import interpreting, use_triton
from kernels.reference import (
    block_mean_scores_reference,
    masked_gather_reference,
    motion_mask_reference,
    motion_scores_reference,
)

# Compiled kernels: the interpreter must be off, and tests/conftest.py turns it on by default. On a GPU
# machine run these apart:  TRITON_INTERPRET=0 pytest -m gpu tests/test_kernels_gpu.py
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(interpreting() and torch.cuda.is_available(),
                                 reason="compiled kernels need TRITON_INTERPRET=0")]


def kept_indices(B, N, K, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(B, N, device=device, generator=g).argsort(-1)[:, :K].sort(-1).values


def test_auto_backend_runs_triton_on_cuda():
    assert use_triton(torch.zeros(1, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,N,K,D", [(4, 1568, 627, 768), (3, 257, 100, 1000), (2, 8, 8, 3)])
def test_gather_matches_reference(B, N, K, D, dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    idx = kept_indices(B, N, K, "cuda")
    x = torch.randn(B, N, D, device="cuda", generator=g).to(dtype).requires_grad_(True)
    pos = torch.randn(N, D, device="cuda", generator=g).to(dtype).requires_grad_(True)
    grad = torch.randn(B, K, D, device="cuda", generator=g).to(dtype)
    out = masked_gather(x, idx, pos)
    out.backward(grad)
    x_ref, pos_ref = x.detach().clone().requires_grad_(True), pos.detach().clone().requires_grad_(True)
    masked_gather_reference(x_ref, idx, pos_ref).backward(grad)
    assert torch.equal(out, masked_gather_reference(x.detach(), idx, pos.detach()))
    assert torch.equal(x.grad, x_ref.grad)
    # pos sums over the batch: ours in fp32 in a fixed order, torch's index_put in the input dtype.
    expected = torch.zeros(N, D, device="cuda").index_put_((idx.flatten(),), grad.float().flatten(0, 1), accumulate=True)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(pos.grad.float(), expected, rtol=tol, atol=tol)



def test_gather_mask_token_placement_bf16():
    B, N, K, D = 4, 1568, 941, 384
    idx = kept_indices(B, N, K, "cuda", seed=2)
    token = torch.randn(1, 1, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
    out = masked_gather(token, idx, pos)
    assert torch.equal(out, masked_gather_reference(token.detach(), idx, pos))
    out.float().sum().backward()
    torch.testing.assert_close(token.grad.float(), torch.full((1, 1, D), float(B * K), device="cuda"))


def test_gather_offsets_beyond_int32():
    # x has 2^31 + 2^21 elements: rows of the second sample start past the int32 range.
    B, N, D = 2, 2**19 + 2**9, 2**11
    x = torch.empty(B, N, D, device="cuda", dtype=torch.bfloat16)
    x[1, -3:] = torch.arange(3 * D, device="cuda", dtype=torch.float32).view(3, D).bfloat16()
    idx = torch.tensor([[0, 1, 2], [N - 3, N - 2, N - 1]], device="cuda")
    out = masked_gather(x, idx)
    assert torch.equal(out[1], x[1, -3:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,K,D", [(8, 1411, 768), (4, 300, 1000), (3, 5, 7)])
@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_hard_weighted_loss_matches_reference(B, K, D, dtype, scope):
    g = torch.Generator(device="cuda").manual_seed(3)
    pred = torch.randn(B, K, D, device="cuda", generator=g).to(dtype)
    target = torch.randn(B, K, D, device="cuda", generator=g).to(dtype)
    valid = torch.rand(B, K, device="cuda", generator=g) > 0.2
    results = []
    for backend in ("triton", "reference"):
        p = pred.clone().requires_grad_(True)
        with use_backend(backend):
            loss = hard_weighted_loss(p, target, 1.0, valid, scope)
        (2.0 * loss).backward()
        results.append((loss.detach(), p.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-5, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(results[0][1].float(), results[1][1].float(), rtol=tol, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_motion_scores_and_masks_match_reference(dtype):
    g = torch.Generator(device="cuda").manual_seed(4)
    video = torch.randn(4, 3, 16, 224, 224, device="cuda", generator=g).to(dtype)
    scores = motion_scores(video, 2, 16)
    torch.testing.assert_close(scores, motion_scores_reference(video, 2, 16), rtol=1e-5, atol=1e-6)
    block = (8, 5, 5)
    torch.testing.assert_close(block_mean_scores(scores, block), block_mean_scores_reference(scores, block),
                               rtol=1e-5, atol=1e-6)
    exact = (scores * 8).round() / 8                                       # exact block sums on both paths
    mask = motion_mask(exact, block, 8, 2.0, 0.1, torch.Generator(device="cuda").manual_seed(5))
    expected = motion_mask_reference(exact, block, 8, 2.0, 0.1, torch.Generator(device="cuda").manual_seed(5))
    assert mask.device.type == "cuda" and torch.equal(mask, expected)


def test_compiled_ops_on_cuda():
    B, N, K, D = 4, 392, 150, 256
    idx = kept_indices(B, N, K, "cuda", seed=6)
    x = torch.randn(B, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    target = torch.randn(B, K, D, device="cuda", dtype=torch.bfloat16)

    def step(x, pos):
        return hard_weighted_loss(masked_gather(x, idx, pos), target)

    eager_x = x.detach().clone().requires_grad_(True)
    step(eager_x, pos).backward()
    # Stale AOTAutograd / FX-graph cache entries survive changes to a custom op's fake (see
    # tests/test_kernels_compile.py): compile from scratch.
    torch._dynamo.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._inductor.config.patch(fx_graph_cache=False):
        loss = torch.compile(step, fullgraph=True)(x, pos)
        loss.backward()
    torch.testing.assert_close(x.grad.float(), eager_x.grad.float(), rtol=1e-2, atol=1e-8)


def test_gather_backward_is_deterministic():
    # pos's gradient sums over the batch in a fixed order (no atomics): two runs give the same bits.
    B, N, K, D = 16, 1568, 392, 768
    idx = kept_indices(B, N, K, "cuda", seed=7)
    x = torch.randn(B, N, D, device="cuda", requires_grad=True)
    pos = torch.randn(N, D, device="cuda", requires_grad=True)
    grad = torch.randn(B, K, D, device="cuda")
    grads = []
    for _ in range(2):
        x.grad, pos.grad = None, None
        masked_gather(x, idx, pos).backward(grad)
        grads.append(pos.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_mask_token_placement_allocates_only_its_output():
    # The original code builds token.repeat(B,N,1) + pos.repeat(B,1,1) before gathering; the kernel
    # must allocate nothing of size [B,N,D] in the forward pass.
    B, N, K, D = 32, 1568, 941, 768
    idx = kept_indices(B, N, K, "cuda", seed=8)
    token = torch.randn(1, 1, D, device="cuda", dtype=torch.bfloat16)
    pos = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = masked_gather(token, idx, pos)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= out.numel() * out.element_size() + (1 << 20)
    assert extra < B * N * D * out.element_size() / 2
