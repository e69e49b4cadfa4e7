"""torch.compile traces through the custom ops (fake + autograd registrations) on CPU.

Inside ``use_backend("triton")`` the compiled graph calls the Triton kernels through their
``torch.library.custom_op`` wrappers (interpreter on CPU). Gather and loss go through Inductor (C++
codegen for the ops around them); the motion mask, whose sampling graph-breaks on the generator, uses
the aot_eager backend, which traces the same fake registrations without spending ~20 s in the C++
compiler. The compiled references are measured in benchmarks/kernels.py.
"""
import pytest
import torch

from kernels import hard_weighted_loss, masked_gather, motion_mask, motion_scores, use_backend

# Triton on CPU tensors in the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, fails these
# tests if it is set otherwise there, and skips them on a CUDA machine that compiles the kernels.
pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # The AOTAutograd and FX-graph caches do not key on a custom op's fake kernel or its backward's
    # schema: after either changes they replay stale graphs. Compile from scratch (C++ compiles of
    # the small kernels are still cached by Inductor's code cache).
    torch._dynamo.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._inductor.config.patch(fx_graph_cache=False):
        yield
    torch._dynamo.reset()


def gather_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, generator=g)
    pos = torch.randn(6, 4, generator=g)
    idx = torch.tensor([[0, 2, 5], [1, 3, 4]])
    return x, idx, pos


def test_compiled_gather_forward_and_backward():
    x, idx, pos = gather_inputs()

    def gathered_energy(x, pos):
        return (masked_gather(x, idx, pos) ** 2).sum()

    grads = []
    for fn in (gathered_energy, torch.compile(gathered_energy, fullgraph=True)):
        xs, ps = x.clone().requires_grad_(True), pos.clone().requires_grad_(True)
        with use_backend("triton"):
            fn(xs, ps).backward()
        grads.append((xs.grad, ps.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_compiled_hard_weighted_loss_forward_and_backward(scope):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    valid = torch.tensor([[True, True, False, True, True], [True, False, True, True, True]])

    def objective(pred, target):
        return 0.3 * hard_weighted_loss(pred, torch.nn.functional.layer_norm(target, (3,)), 1.0, valid, scope)

    results = []
    for fn in (objective, torch.compile(objective, fullgraph=True)):
        p = pred.clone().requires_grad_(True)
        with use_backend("triton"):
            loss = fn(p, target)
        loss.backward()
        results.append((loss.detach(), p.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-9)


def test_compiled_motion_mask():
    video = torch.randn(2, 2, 4, 4, 6, generator=torch.Generator().manual_seed(2))

    def masks(video, generator):
        return motion_mask(motion_scores(video, 2, 2), (1, 2, 2), 2, 2.0, 0.1, generator)

    with use_backend("triton"):
        eager = masks(video, torch.Generator().manual_seed(7))
        compiled = torch.compile(masks, backend="aot_eager")(video, torch.Generator().manual_seed(7))
    assert compiled.shape == (2, 12) and torch.equal(compiled, eager)
