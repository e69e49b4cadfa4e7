"""Mask generators (engine/masking): index contract, masking ratios, motion guidance, future masks."""
import math

import pytest
import torch

from engine.masking import (
    MASKING_REGISTRY,
    MaskConfig,
    MaskingConfig,
    build_mask_generator,
    motion_map,
    register_masking,
)
from engine.masking.blocks import token_coordinates


GRID = (8, 8, 8)  # 16 frames x 64 x 64 px, tubelet 2, patch 8: the CPU demo geometry
N = math.prod(GRID)


def moving_square_clip(batch: int, side: int = 8, corner: int = 4, speed: float = 0.5):
    """Static random background and one bright square moving right; also the bool [N] of tokens it touches."""
    frames, size, patch, tubelet = 16, 64, 8, 2
    background = torch.rand(1, 3, 1, size, size, generator=torch.Generator().manual_seed(1))
    video = background.expand(batch, 3, frames, size, size).clone()
    square = torch.zeros(frames, size, size, dtype=torch.bool)
    for t in range(frames):
        left = corner + int(speed * t)
        square[t, corner:corner + side, left:left + side] = True
    video[:, :, square] = 2.0
    touched = square.view(frames // tubelet, tubelet, size // patch, patch, size // patch, patch)
    return video, touched.any(5).any(3).any(1).flatten()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_contract(mask_set, batch: int, full_complement: bool):
    context, target = mask_set.context_idx, mask_set.target_idx
    for idx in (context, target):
        assert idx.dtype == torch.int64 and idx.dim() == 2 and idx.shape[0] == batch and idx.shape[1] >= 1
        assert (idx >= 0).all() and (idx < N).all()
        assert (idx[:, 1:] > idx[:, :-1]).all()  # ascending and unique
    both = torch.cat((context, target), dim=1)
    assert (both.sort(dim=1).values.diff(dim=1) > 0).all(), "context and target overlap"
    if full_complement:
        assert both.shape[1] == N


@pytest.mark.parametrize("name", sorted(MASKING_REGISTRY))
def test_every_registered_generator_keeps_the_index_contract(name):
    generator = build_mask_generator(name)
    video, _ = moving_square_clip(6)
    mask_sets = generator(6, GRID, seeded(), video)
    assert len(mask_sets) == generator.num_mask_configs == 2
    for mask_set, cfg in zip(mask_sets, generator.masks):
        check_contract(mask_set, 6, cfg.full_complement)


@pytest.mark.parametrize("name", sorted(MASKING_REGISTRY))
def test_a_seed_fixes_the_masks(name):
    generator = build_mask_generator(name)
    video, _ = moving_square_clip(4)
    first, again, other = (generator(4, GRID, seeded(s), video) for s in (3, 3, 4))
    for a, b in zip(first, again):
        assert torch.equal(a.context_idx, b.context_idx) and torch.equal(a.target_idx, b.target_idx)
    assert any(a.context_idx.shape != c.context_idx.shape or not torch.equal(a.context_idx, c.context_idx)
               for a, c in zip(first, other))


def test_multiblock_ratios_match_vjepa():
    # V-JEPA's reported figures (8 x 14 x 14 grid, batch 24): union ~62-63% (34-88%) short, ~81% (66-100%) long;
    # after truncation context ~24% / ~6% and targets ~47% / ~70% of the tokens.
    grid, batch, batches = (8, 14, 14), 24, 40
    tokens = math.prod(grid)
    generator = build_mask_generator("multiblock")
    rng = seeded(0)
    union, context, target = ([[], []] for _ in range(3))
    for _ in range(batches):
        for i, masked in enumerate(generator.sample_masked(batch, grid, rng)):
            union[i].append(masked.float().mean(dim=1))
            mask_set = generator.indices_from_masked(generator.masks[i], masked)
            context[i].append(mask_set.context_idx.shape[1] / tokens)
            target[i].append(mask_set.target_idx.shape[1] / tokens)
    short, long = torch.cat(union[0]), torch.cat(union[1])
    assert 0.58 <= short.mean() <= 0.67 and short.min() >= 0.30 and short.max() <= 0.92
    assert 0.77 <= long.mean() <= 0.85 and long.min() >= 0.62
    assert 0.20 <= sum(context[0]) / batches <= 0.28 and 0.03 <= sum(context[1]) / batches <= 0.10
    assert 0.42 <= sum(target[0]) / batches <= 0.52 and 0.65 <= sum(target[1]) / batches <= 0.75


def test_block_size_is_drawn_once_per_batch_and_origins_per_sample():
    cfg = MaskConfig(num_blocks=1, spatial_scale=(0.1, 0.5), aspect_ratio=(0.5, 2.0), temporal_scale=(0.25, 1.0))
    generator = build_mask_generator([cfg])
    masked = generator.sample_masked(16, GRID, seeded(0))[0]
    assert masked.sum(dim=1).unique().numel() == 1  # one block shape for the whole batch
    assert masked.unique(dim=0).shape[0] > 1  # placed differently per sample


def motion_coverage(name: str, batches: int = 30, batch: int = 8):
    """Fraction of the square's tokens inside the masked block union, and inside the final targets."""
    video, touched = moving_square_clip(batch)
    generator = build_mask_generator(name)
    rng = seeded(0)
    in_union, in_target = [], []
    for _ in range(batches):
        for cfg, masked in zip(generator.masks, generator.sample_masked(batch, GRID, rng, video)):
            targets = torch.zeros(batch, N, dtype=torch.bool)
            targets.scatter_(1, generator.indices_from_masked(cfg, masked).target_idx, True)
            in_union.append(masked[:, touched].float().mean())
            in_target.append(targets[:, touched].float().mean())
    return torch.stack(in_union).mean().item(), torch.stack(in_target).mean().item()


def test_motion_guided_masks_cover_the_moving_square_far_more_often():
    baseline_union, baseline_target = motion_coverage("multiblock")
    for name in ("motion_guided", "amg"):
        union, target = motion_coverage(name)
        print(f"square coverage {name}: union {union:.3f} target {target:.3f} | "
              f"multiblock: union {baseline_union:.3f} target {baseline_target:.3f}")
        assert union >= baseline_union + 0.25 and target >= baseline_target + 0.2


def test_static_clips_fall_back_to_uniform_origins():
    still = torch.rand(1, 3, 1, 64, 64, generator=seeded(2)).expand(8, 3, 16, 64, 64)
    generator = build_mask_generator("amg")  # random_rate 0: any preference would come from the scores
    masked = generator.sample_masked(8, GRID, seeded(0), still)[0]
    assert masked.unique(dim=0).shape[0] > 1


@pytest.mark.parametrize("name", ["future_predictive", "motion_future"])
def test_future_masks_keep_context_in_the_past(name):
    generator = build_mask_generator(name)
    video, _ = moving_square_clip(6)
    time_of = token_coordinates(GRID, "cpu")[0]
    context_steps = int(GRID[0] * 0.5)
    for mask_set in generator(6, GRID, seeded(0), video):
        check_contract(mask_set, 6, full_complement=True)
        assert (time_of[mask_set.context_idx] < context_steps).all()
        future = (time_of >= context_steps).nonzero().squeeze(1)
        targets = torch.zeros(6, N, dtype=torch.bool).scatter_(1, mask_set.target_idx, True)
        assert targets[:, future].all()  # every future token is predicted
        # The original definition also predicts the blocks inside the context window, so past targets exist.
        assert (time_of[mask_set.target_idx] < context_steps).any()


def test_fully_covering_blocks_still_leave_one_context_token():
    cfg = MaskConfig(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0))
    generator = build_mask_generator(MaskingConfig(name="everything", masks=(cfg,), max_attempts=3))
    mask_set = generator(5, GRID, seeded(0))[0]
    check_contract(mask_set, 5, full_complement=False)
    assert mask_set.context_idx.shape[1] == 1


def test_max_keep_caps_the_context():
    cfg = MaskConfig(num_blocks=2, spatial_scale=(0.2, 0.2), max_keep=10)
    mask_set = build_mask_generator([cfg])(4, GRID, seeded(0))[0]
    check_contract(mask_set, 4, full_complement=False)
    assert mask_set.context_idx.shape[1] == 10


@pytest.mark.parametrize("kind", ["cell_mean", "trilinear"])
def test_motion_maps_peak_on_the_moving_square(kind):
    video, touched = moving_square_clip(2)
    scores = motion_map(video, GRID, kind).flatten(1)  # [B, N]
    assert scores.shape == (2, N) and scores.max() <= 1.0 and scores.min() >= 0.0
    assert scores[:, touched].mean() > 5 * scores[:, ~touched].mean()


def test_configuration_errors():
    with pytest.raises(ValueError, match="video"):
        build_mask_generator("motion_guided")(2, GRID, seeded())
    with pytest.raises(ValueError, match="multiblock"):
        build_mask_generator("no_such_masking")
    with pytest.raises(ValueError, match="spatial_scale"):
        MaskConfig(spatial_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="max_temporal_keep"):
        MaskConfig(max_temporal_keep=0.0)
    with pytest.raises(ValueError, match="motion_map"):
        MaskingConfig(motion_map="optical_flow")
    with pytest.raises(ValueError, match="already registered"):
        register_masking("multiblock", ())


def test_masking_without_name_takes_the_default_generator():
    # A recipe's `masking:` that sets only the motion map keeps the variant's masks (the trainer passes its
    # generator as the default); None is the variant's generator as it stands.
    cfg = MaskingConfig(motion_map="trilinear")
    assert cfg.name is None
    generator = build_mask_generator(cfg, default="motion_guided")
    assert generator.masks == MASKING_REGISTRY["motion_guided"] and generator.cfg.motion_map == "trilinear"
    assert build_mask_generator(cfg).masks == MASKING_REGISTRY["multiblock"]
    assert build_mask_generator(None, default="amg").masks == MASKING_REGISTRY["amg"]
    # An explicit name still wins over the default.
    assert build_mask_generator(MaskingConfig(name="multiblock"), default="amg").masks == MASKING_REGISTRY["multiblock"]


def test_trilinear_map_gives_frame_0_the_first_difference_and_cell_mean_gives_it_none():
    video = torch.randn(1, 3, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    first = (video[:, :, 1] - video[:, :, 0]).abs().mean(1)
    trilinear, cell_mean = motion_map(video, (4, 2, 2), "trilinear"), motion_map(video, (4, 2, 2), "cell_mean")
    torch.testing.assert_close(trilinear[:, 0] / trilinear[:, 1], torch.ones_like(first))
    assert torch.all(cell_mean[:, 0] == 0)


def test_mask_configs_from_mappings():
    cfg = MaskingConfig(name="custom", masks=({"num_blocks": 3, "spatial_scale": [0.2, 0.3]},))
    assert cfg.masks[0] == MaskConfig(num_blocks=3, spatial_scale=(0.2, 0.3))
