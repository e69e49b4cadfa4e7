"""torch.library.opcheck on every custom op: schema, fake kernel and autograd registration agree with
the real (Triton, interpreter on CPU) kernels, including under AOT dispatch with dynamic shapes."""
import pytest
import torch

from kernels.hard_weighted_loss import _hw_backward_op, _hw_forward_op
from kernels.masked_gather import _masked_gather_backward_op, _masked_gather_op
from kernels.motion import _block_mean_scores_op, _motion_scores_op

# Triton on CPU tensors in the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, fails these
# tests if it is set otherwise there, and skips them on a CUDA machine that compiles the kernels.
pytestmark = pytest.mark.interpreter


def gather_args(x_shape, with_pos):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([[0, 2, 4], [1, 3, 4]])
    x = torch.randn(*x_shape, generator=g, requires_grad=True)
    pos = torch.randn(5, 3, generator=g, requires_grad=True) if with_pos else None
    return (x, idx, pos)


@pytest.mark.parametrize("x_shape,with_pos", [((2, 5, 3), True), ((2, 5, 3), False), ((1, 1, 3), True),
                                              ((1, 5, 3), True)])
def test_opcheck_masked_gather(x_shape, with_pos):
    torch.library.opcheck(_masked_gather_op, gather_args(x_shape, with_pos))


def test_opcheck_masked_gather_backward():
    grad = torch.randn(2, 3, 3)
    idx = torch.tensor([[0, 2, 4], [1, 3, 4]])
    torch.library.opcheck(_masked_gather_backward_op,
                          (grad, idx, 5, 2, 5, torch.float32, torch.float32, True, True))


@pytest.mark.parametrize("with_valid", [True, False])
def test_opcheck_hard_weighted_loss(with_valid):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 5, generator=g)
    valid = torch.tensor([[True, False, True, True], [True, True, True, False]]) if with_valid else None
    torch.library.opcheck(_hw_forward_op, (pred, target, 0.5, valid, True))
    _, weights, codes = _hw_forward_op(pred.detach(), target, 0.5, valid, True)
    torch.library.opcheck(_hw_backward_op, (torch.tensor(1.5), codes, weights, valid, 5, torch.float32))


def test_opcheck_motion_ops():
    video = torch.randn(2, 2, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    torch.library.opcheck(_motion_scores_op, (video, 2, 2))
    torch.library.opcheck(_block_mean_scores_op, (torch.rand(2, 2, 3, 4), 1, 2, 2))
