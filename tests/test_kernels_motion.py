"""motion_scores / motion_mask: Triton kernels (interpreter on CPU) against the reference, and the
sampling distribution of the block origins (p ∝ clamp(score, 1e-6)^strength, random_rate uniform)."""
import functools

import pytest
import torch

from kernels import block_mean_scores, motion_mask, motion_scores, use_backend
from kernels._mask_sampling import origin_probabilities, sample_origins
from kernels.reference import block_mean_scores_reference, motion_scores_reference

# Triton on CPU tensors in the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, fails these
# tests if it is set otherwise there, and skips them on a CUDA machine that compiles the kernels.
pytestmark = pytest.mark.interpreter


def brute_force_scores(video, tubelet, patch):
    """Literal per-cell loops of the contract's definition, independent of both implementations."""
    B, C, T, H, W = video.shape
    v = video.double()
    diff = torch.zeros(B, T, H, W, dtype=torch.float64)
    for t in range(1, T):
        diff[:, t] = (v[:, :, t] - v[:, :, t - 1]).abs().mean(1)
    cells = torch.zeros(B, T // tubelet, H // patch, W // patch, dtype=torch.float64)
    for tg in range(T // tubelet):
        for hg in range(H // patch):
            for wg in range(W // patch):
                cells[:, tg, hg, wg] = diff[:, tg * tubelet:(tg + 1) * tubelet, hg * patch:(hg + 1) * patch,
                                            wg * patch:(wg + 1) * patch].mean((1, 2, 3))
    peak = cells.amax((1, 2, 3), keepdim=True)
    return torch.where(peak > 0, cells / peak.clamp_min(1e-300), 0.0)


# (B, C, T, H, W, tubelet, patch): tubelet/patch of 1, odd patch and grid, three channels.
VIDEO_SHAPES = [(2, 2, 4, 8, 12, 2, 4), (1, 1, 6, 6, 9, 3, 3), (2, 3, 2, 4, 4, 1, 2), (1, 4, 3, 3, 6, 1, 1)]


@pytest.mark.parametrize("shape", VIDEO_SHAPES)
def test_motion_scores_match_reference_and_definition(shape):
    B, C, T, H, W, tubelet, patch = shape
    video = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(sum(shape)))
    with use_backend("triton"):
        triton_scores = motion_scores(video, tubelet, patch)
    reference = motion_scores_reference(video, tubelet, patch)
    assert triton_scores.shape == (B, T // tubelet, H // patch, W // patch) and triton_scores.dtype == torch.float32
    torch.testing.assert_close(triton_scores, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(reference.double(), brute_force_scores(video, tubelet, patch), rtol=1e-5, atol=1e-6)


def test_motion_scores_bitwise_equal_on_exact_inputs():
    # Multiples of 1/8 and power-of-two cell sizes: every sum and mean is exact, so any summation
    # order must give the same bits.
    video = torch.randint(-16, 17, (2, 4, 4, 8, 8), generator=torch.Generator().manual_seed(2)).float() / 8
    with use_backend("triton"):
        triton_scores = motion_scores(video, 2, 4)
    assert torch.equal(triton_scores, motion_scores_reference(video, 2, 4))


def test_static_clip_scores_zero_and_moving_clip_peaks_at_one():
    still = torch.ones(1, 3, 4, 4, 4)
    moving = torch.zeros(1, 3, 4, 4, 4)
    moving[:, :, 2:, :2, :2] = 1.0                                         # appears at frame 2, top-left
    with use_backend("triton"):
        scores = motion_scores(torch.cat([still, moving]), 2, 2)
    assert torch.all(scores[0] == 0)
    assert scores[1].max() == 1 and scores[1, 1, 0, 0] == 1 and scores[1].sum() == 1


def test_bfloat16_video_is_read_as_float32():
    video = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(4)).bfloat16()
    with use_backend("triton"):
        scores = motion_scores(video, 2, 2)
    torch.testing.assert_close(scores, motion_scores_reference(video, 2, 2), rtol=1e-6, atol=1e-6)


def brute_force_block_means(scores, block):
    bt, bh, bw = block
    B, Tg, Hg, Wg = scores.shape
    out = torch.empty(B, Tg - bt + 1, Hg - bh + 1, Wg - bw + 1, dtype=torch.float64)
    for t in range(out.shape[1]):
        for h in range(out.shape[2]):
            for w in range(out.shape[3]):
                out[:, t, h, w] = scores[:, t:t + bt, h:h + bh, w:w + bw].double().mean((1, 2, 3))
    return out


@pytest.mark.parametrize("grid,block", [((2, 3, 4), (1, 2, 2)), ((3, 5, 5), (2, 3, 1)), ((1, 4, 6), (1, 4, 6)),
                                        ((2, 2, 3), (1, 1, 1))])
def test_block_scores_match_reference_and_definition(grid, block):
    scores = torch.rand(2, *grid, generator=torch.Generator().manual_seed(sum(grid)))
    with use_backend("triton"):
        triton_blocks = block_mean_scores(scores, block)
    reference = block_mean_scores_reference(scores, block)
    torch.testing.assert_close(triton_blocks, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reference.double(), brute_force_block_means(scores, block), rtol=1e-6, atol=1e-7)


def test_triton_and_reference_masks_are_identical_for_one_seed():
    scores = torch.randint(0, 9, (3, 2, 4, 5), generator=torch.Generator().manual_seed(6)).float() / 8
    masks = []
    for backend in ("triton", "reference"):
        with use_backend(backend):
            masks.append(motion_mask(scores, (1, 2, 3), 3, 2.0, 0.1, torch.Generator().manual_seed(99)))
    assert masks[0].dtype == torch.bool and masks[0].shape == (3, 40)
    assert torch.equal(masks[0], masks[1])


def test_mask_is_the_union_of_the_drawn_blocks():
    scores = torch.rand(4, 3, 4, 5, generator=torch.Generator().manual_seed(8))
    block, num_blocks = (2, 2, 3), 3
    mask = motion_mask(scores, block, num_blocks, 2.0, 0.1, torch.Generator().manual_seed(5))
    origins = sample_origins(block_mean_scores_reference(scores, block), num_blocks, 2.0, 0.1,
                             torch.Generator().manual_seed(5))
    Oh, Ow = 4 - 2 + 1, 5 - 3 + 1   # block origins per frame: rows x columns
    expected = torch.zeros(4, 3, 4, 5, dtype=torch.bool)
    for b in range(4):
        for o in origins[b].tolist():
            t, h, w = o // (Oh * Ow), (o // Ow) % Oh, o % Ow
            expected[b, t:t + 2, h:h + 2, w:w + 3] = True
    assert torch.equal(mask, expected.flatten(1))


def test_same_seed_same_mask_other_seed_other_mask():
    scores = torch.rand(8, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    first = motion_mask(scores, (1, 2, 2), 2, 2.0, 0.1, torch.Generator().manual_seed(3))
    again = motion_mask(scores, (1, 2, 2), 2, 2.0, 0.1, torch.Generator().manual_seed(3))
    other = motion_mask(scores, (1, 2, 2), 2, 2.0, 0.1, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_rejects_a_block_larger_than_the_grid():
    with pytest.raises(ValueError):
        motion_mask(torch.rand(1, 2, 3, 3), (1, 4, 1), 1, 2.0, 0.1)


# ---- distribution of the drawn origins -------------------------------------------------------------

GRID_SCORES = torch.tensor([[[0.0, 0.1, 0.3, 0.2, 0.0],
                             [0.2, 0.9, 1.0, 0.4, 0.1],
                             [0.1, 0.5, 0.7, 0.3, 0.0],
                             [0.0, 0.1, 0.2, 0.1, 0.0]]])                  # [Tg=1, Hg=4, Wg=5]
BLOCK = (1, 2, 2)                                                          # 3 x 4 = 12 feasible origins
DRAWS = 20000


@functools.lru_cache(maxsize=None)
def drawn_origin_counts(strength, random_rate, seed=1234):
    """Draw one block for each of DRAWS identical samples; recover each origin from the mask."""
    scores = GRID_SCORES.expand(DRAWS, *GRID_SCORES.shape)
    mask = motion_mask(scores, BLOCK, 1, strength, random_rate, torch.Generator().manual_seed(seed))
    corner = mask.int().argmax(1)                                          # first masked token = block corner
    Wg, Ow = 5, 5 - BLOCK[2] + 1
    origin = (corner // Wg) * Ow + corner % Wg                             # Tg = 1, so no time offset
    return torch.bincount(origin, minlength=12).double()


def chi_square_p_value(observed, probabilities):
    """Pearson's test; bins expecting fewer than 5 draws are pooled so the chi-square law applies."""
    expected = probabilities * observed.sum()
    small = expected < 5
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    statistic = ((observed - expected) ** 2 / expected).sum()
    dof = torch.tensor(float(len(observed) - 1), dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, statistic / 2).item()


def expected_probabilities(strength, random_rate):
    block_means = block_mean_scores_reference(GRID_SCORES.unsqueeze(0), BLOCK)   # [1,1,3,4]
    weights = block_means.double().clamp_min(1e-6).flatten() ** strength
    return (1 - random_rate) * weights / weights.sum() + random_rate / weights.numel()


@pytest.mark.parametrize("strength,random_rate", [(2.0, 0.1), (5.0, 0.0), (0.0, 0.0), (2.0, 1.0)])
def test_origins_follow_score_power_law(strength, random_rate):
    observed = drawn_origin_counts(strength, random_rate).clone()
    probabilities = expected_probabilities(strength, random_rate)
    torch.testing.assert_close(origin_probabilities(block_mean_scores_reference(GRID_SCORES.unsqueeze(0), BLOCK),
                                                    strength, random_rate)[0], probabilities)
    assert chi_square_p_value(observed, probabilities) > 1e-3


@pytest.mark.parametrize("wrong_strength,wrong_rate", [(1.0, 0.1), (3.0, 0.1), (2.0, 0.0), (2.0, 0.3)])
def test_chi_square_rejects_a_wrong_strength_or_rate(wrong_strength, wrong_rate):
    # The same draws (strength 2, rate 0.1) tested against nearby wrong laws: the test has the power
    # to tell them apart, so the acceptance above means something.
    observed = drawn_origin_counts(2.0, 0.1).clone()
    assert chi_square_p_value(observed, expected_probabilities(wrong_strength, wrong_rate)) < 1e-6
