"""hard_weighted_loss: Triton kernels (interpreter on CPU) against the reference, both weight scopes;
reference gradients."""
import pytest
import torch

from kernels import hard_weighted_loss, use_backend
from kernels.reference import hard_weighted_loss_reference, hard_weights, token_errors, weighted_mean

# Triton on CPU tensors in the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, fails these
# tests if it is set otherwise there, and skips them on a CUDA machine that compiles the kernels.
pytestmark = pytest.mark.interpreter


def make_inputs(B, K, D, valid_kind, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, K, D, generator=g, dtype=dtype)
    target = torch.randn(B, K, D, generator=g, dtype=dtype)
    if valid_kind is None:
        return pred, target, None
    valid = torch.rand(B, K, generator=g) > 0.4
    valid[:, 0] = True
    if valid_kind == "empty_row":
        valid[-1] = False                                                  # a sample without any token
    return pred, target, valid


def loss_and_grads(pred, target, tau, valid, backend, upstream=1.0, scope="sample"):
    p = pred.clone().requires_grad_(True)
    t = target.clone().requires_grad_(True)
    with use_backend(backend):
        loss = hard_weighted_loss(p, t, tau, valid, scope=scope)
    (loss * upstream).backward()
    return loss.detach(), p.grad, t.grad


# (B, K, D): one token, typical, D over two feature tiles, more rows than one tile, odd sizes.
SHAPES = [(1, 1, 1), (2, 5, 7), (3, 9, 130), (2, 17, 3), (5, 3, 33)]


@pytest.mark.parametrize("B,K,D", SHAPES)
@pytest.mark.parametrize("valid_kind", [None, "random", "empty_row"])
@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_loss_and_gradients_match_reference(B, K, D, valid_kind, scope):
    pred, target, valid = make_inputs(B, K, D, valid_kind, seed=B * 100 + K + D)
    tau = 0.7
    loss_t, gp_t, gt_t = loss_and_grads(pred, target, tau, valid, "triton", upstream=3.0, scope=scope)
    loss_r, gp_r, gt_r = loss_and_grads(pred, target, tau, valid, "reference", upstream=3.0, scope=scope)
    assert loss_t.dtype == torch.float32 and loss_t.shape == ()
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gp_t, gp_r, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gt_t, gt_r, rtol=1e-5, atol=1e-9)


def test_exact_ties_get_zero_gradient():
    # pred == target on some elements: sign(0) = 0 must survive the packed sign codes. D = 13 also
    # leaves a partly filled last byte of codes.
    pred, target, valid = make_inputs(2, 6, 13, "random", seed=31)
    target[..., ::3] = pred[..., ::3]
    _, gp_t, _ = loss_and_grads(pred, target, 1.0, valid, "triton")
    _, gp_r, _ = loss_and_grads(pred, target, 1.0, valid, "reference")
    assert torch.all(gp_t[..., ::3] == 0) and torch.all(gp_t[valid][:, 1::3] != 0)
    torch.testing.assert_close(gp_t, gp_r, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("tau", [0.05, 1.0, 10.0])
@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_temperatures(tau, scope):
    pred, target, valid = make_inputs(3, 6, 5, "random", seed=int(tau * 100))
    loss_t, gp_t, _ = loss_and_grads(pred, target, tau, valid, "triton", scope=scope)
    loss_r, gp_r, _ = loss_and_grads(pred, target, tau, valid, "reference", scope=scope)
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gp_t, gp_r, rtol=1e-5, atol=1e-9)


def test_bfloat16_inputs_accumulate_in_float32():
    pred, target, valid = make_inputs(2, 7, 9, "random", seed=21)
    pred, target = pred.bfloat16(), target.bfloat16()
    loss_t, gp_t, _ = loss_and_grads(pred, target, 1.0, valid, "triton")
    loss_r, gp_r, _ = loss_and_grads(pred, target, 1.0, valid, "reference")
    assert loss_t.dtype == torch.float32 and gp_t.dtype == torch.bfloat16
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gp_t, gp_r, rtol=1e-2, atol=1e-6)          # both rounded to bf16 once


def test_no_grad_call_gives_the_same_loss():
    pred, target, valid = make_inputs(2, 5, 4, "random", seed=5)
    with torch.no_grad(), use_backend("triton"):
        loss = hard_weighted_loss(pred, target, 1.0, valid)
    torch.testing.assert_close(loss, hard_weighted_loss_reference(pred, target, 1.0, valid), rtol=1e-5, atol=1e-7)


def test_weights_have_mean_one_and_favour_hard_tokens():
    pred, target, valid = make_inputs(4, 8, 6, "random", seed=9, dtype=torch.float64)
    errors = token_errors(pred, target)
    weights = hard_weights(errors, 1.0, valid)
    torch.testing.assert_close(weights.sum(-1), valid.sum(-1).double())   # K_b · softmax sums to K_b
    assert torch.all(weights[~valid] == 0)
    for b in range(4):
        e, w = errors[b, valid[b]], weights[b, valid[b]]
        assert torch.equal(torch.argsort(e), torch.argsort(w))             # monotone in the error


def clips_of_varying_difficulty(B=8, K=12, D=6, seed=3):
    """float64 pred/target whose per-sample error level grows with the sample index; ragged valid rows."""
    pred, target, valid = make_inputs(B, K, D, "random", seed=seed, dtype=torch.float64)
    difficulty = torch.linspace(0.2, 2.5, B, dtype=torch.float64).view(B, 1, 1)
    return target + difficulty * (pred - target), target, valid


def test_batch_scope_weights_are_one_softmax_over_the_whole_batch():
    # The released code's HW-LD: err[valid] flattens the batch's valid tokens, w = P·softmax(err/τ).
    pred, target, valid = clips_of_varying_difficulty()
    tau = 0.5
    errors = token_errors(pred, target)
    flat = errors[valid]                                                   # [P], row-major like err[valid]
    by_hand = torch.zeros_like(errors)
    by_hand[valid] = flat.numel() * torch.softmax(flat / tau, dim=0)
    batch = hard_weights(errors, tau, valid, "batch")
    torch.testing.assert_close(batch, by_hand, rtol=1e-12, atol=0)
    assert batch[valid].mean().item() == pytest.approx(1.0)                # mean weight 1 over the batch
    # Per sample, each row has mean weight 1; over the batch, easy samples give weight to hard ones.
    sample = hard_weights(errors, tau, valid, "sample")
    share_batch = batch.sum(-1) / batch.sum()
    share_sample = sample.sum(-1) / sample.sum()
    torch.testing.assert_close(share_sample, valid.sum(-1).double() / valid.sum(), rtol=1e-12, atol=0)
    assert (share_batch / share_sample)[0] < 0.8 and (share_batch / share_sample)[-1] > 1.2
    # The loss is the same mean over valid tokens of w·e, on both backends.
    expected = (by_hand * errors).sum() / valid.sum()
    for backend in ("reference", "triton"):
        loss, _, _ = loss_and_grads(pred, target, tau, valid, backend, scope="batch")
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
        other, _, _ = loss_and_grads(pred, target, tau, valid, backend, scope="sample")
        assert abs(other - expected) > 1e-3


def test_batch_scope_of_one_sample_is_the_sample_scope():
    pred, target, valid = make_inputs(1, 9, 5, "random", seed=41)
    for backend in ("reference", "triton"):
        a, ga, _ = loss_and_grads(pred, target, 1.0, valid, backend, scope="batch")
        b, gb, _ = loss_and_grads(pred, target, 1.0, valid, backend, scope="sample")
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


def test_unknown_scope_is_an_error():
    for backend in ("reference", "triton"):
        with use_backend(backend), pytest.raises(ValueError, match="scope"):
            hard_weighted_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), scope="row")


def test_gradcheck_float64_through_reference():
    # The weights are constants by design, so the reference's gradient is that of the loss with the
    # weights frozen at the evaluation point. gradcheck the differentiable path in float64 ...
    pred, target, valid = make_inputs(2, 4, 3, "random", seed=17, dtype=torch.float64)
    for scope in ("sample", "batch"):
        frozen = hard_weights(token_errors(pred, target), 0.5, valid, scope)
        p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: weighted_mean(token_errors(a, b), frozen, valid), (p, t))
        # ... then check that the reference's and the Triton path's gradients are exactly that gradient.
        weighted_mean(token_errors(p, t), frozen, valid).backward()
        expected = p.grad.clone()
        for backend in ("reference", "triton"):
            _, grad, _ = loss_and_grads(pred, target, 0.5, valid, backend, scope=scope)
            torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_weights_carry_no_gradient():
    # With gradient through the weights, the derivative would differ: finite differences of the full
    # loss must NOT match the returned gradient. Guards against dropping the stop-gradient.
    pred, target, _ = make_inputs(1, 4, 2, None, seed=23, dtype=torch.float64)
    p = pred.clone().requires_grad_(True)
    hard_weighted_loss_reference(p, target, 0.2).backward()
    direction = torch.randn(pred.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6
    numeric = (hard_weighted_loss_reference(pred + eps * direction, target, 0.2)
               - hard_weighted_loss_reference(pred - eps * direction, target, 0.2)) / (2 * eps)
    analytic = (p.grad * direction).sum()
    assert abs(numeric - analytic) > 1e-4


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        hard_weighted_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError):
        hard_weighted_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), valid=torch.ones(2, 4, dtype=torch.bool))
