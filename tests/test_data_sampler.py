"""Sampler tests: pure planning, no decoding. Mixing, rank balance, clip sampling, crop statistics."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import FixtureSpec, write_dataset
from engine.data.config import DatasetSpec, LoaderConfig
from engine.data.index import load_dataset_index
from engine.data.sampler import (_DRAWS, ClipSampler, clip_frame_step, eval_frame_indices, random_resized_crop,
                                 train_frame_indices, uniform_draws)


@pytest.fixture(scope="module")
def three_datasets(tmp_path_factory) -> list[Path]:
    """Three tiny folders of different sizes (videos, videos, images), like UCF / SSv2 / IN-100."""
    root = tmp_path_factory.mktemp("sampler")
    small = {"height": 16, "width": 24}  # planning reads only the index; the pixels do not matter here
    return [write_dataset(root / "ucf", FixtureSpec("ucf", 5, num_frames=40, samples_per_shard=3, **small)),
            write_dataset(root / "ssv2", FixtureSpec("ssv2", 9, num_frames=20, samples_per_shard=4, **small)),
            write_dataset(root / "in", FixtureSpec("in", 7, images=True, **small))]


def make_sampler(folders, weights=(0.2, 0.6, 0.2), skipped=frozenset(), **overrides) -> ClipSampler:
    specs = [DatasetSpec(str(f), weight=w) for f, w in zip(folders, weights)]
    cfg = LoaderConfig(specs, **{"batch_size": 4, "num_frames": 8, "crop_size": 16, **overrides}).validate()
    return ClipSampler(cfg, [load_dataset_index(s) for s in specs], skipped)


def test_plan_is_a_pure_function_of_seed_epoch_rank_step(three_datasets):
    a = make_sampler(three_datasets, samples_per_epoch=200, seed=3)
    b = make_sampler(three_datasets, samples_per_epoch=200, seed=3)
    for step in (0, 7, 49, 50, 123, 7):  # out of order and repeated: no hidden cursor
        pa, pb = a.plan(step), b.plan(step)
        for field in ("dataset_id", "row", "frames", "roi_start", "roi_end", "flip"):
            np.testing.assert_array_equal(getattr(pa, field), getattr(pb, field))
    other_seed = make_sampler(three_datasets, samples_per_epoch=200, seed=4)
    assert not np.array_equal(a.plan(0).row, other_seed.plan(0).row) or \
        not np.array_equal(a.plan(0).roi_start, other_seed.plan(0).roi_start)


def test_mixing_ratios_over_10000_samples_match_weights(three_datasets):
    weights = (0.2, 0.6, 0.2)
    sampler = make_sampler(three_datasets, weights, batch_size=25, samples_per_epoch=3000, seed=239)
    realised = sampler.realised_mix(first_step=0, num_steps=400)   # 10,000 samples, 3+ epochs
    for (name, ratio), weight in zip(realised.items(), weights):
        assert abs(ratio - weight) <= 0.015, (name, ratio, weight)
    # Over a window that starts mid-epoch as well (the stream is not just stratified per epoch).
    shifted = sampler.realised_mix(first_step=61, num_steps=400)
    for ratio, weight in zip(shifted.values(), weights):
        assert abs(ratio - weight) <= 0.015


def test_every_rank_gets_equal_disjoint_batches(three_datasets):
    world = 3
    samplers = [make_sampler(three_datasets, batch_size=4, samples_per_epoch=130, world_size=world, rank=r)
                for r in range(world)]
    steps = {s.steps_per_epoch for s in samplers}
    assert steps == {130 // (4 * world)}
    positions = np.concatenate([s.plan(k).position for s in samplers for k in range(s.steps_per_epoch)])
    assert len(positions) == len(set(positions.tolist())), "two ranks were given the same stream position"


def test_eval_mode_covers_every_sample_once_with_marked_padding(three_datasets):
    world, batch = 2, 4
    samplers = [make_sampler(three_datasets, mode="eval", batch_size=batch, world_size=world, rank=r)
                for r in range(world)]
    total = 5 + 9 + 7
    assert {s.steps_per_epoch for s in samplers} == {math.ceil(total / (batch * world))}
    seen = []
    for s in samplers:
        for k in range(s.steps_per_epoch):
            plan = s.plan(k)
            seen += [(int(d), int(r)) for d, r, v in zip(plan.dataset_id, plan.row, plan.valid) if v]
            assert not plan.flip.any()
    assert sorted(seen) == sorted({(d, r) for d, n in enumerate((5, 9, 7)) for r in range(n)})


def test_uniform_draws_are_per_slot_pure_and_uniform():
    positions = np.arange(1000, 6000)
    u = uniform_draws(3, 1, 37, positions, 4)
    assert u.shape == (5000, 4) and u.min() >= 0.0 and u.max() < 1.0
    # A slot's draws do not depend on which other slots are planned with it.
    np.testing.assert_array_equal(uniform_draws(3, 1, 37, positions[[7, 4000]], 4), u[[7, 4000]])
    for other in (uniform_draws(4, 1, 37, positions, 4), uniform_draws(3, 2, 37, positions, 4),
                  uniform_draws(3, 1, 11, positions, 4)):
        assert np.abs(other - u).mean() > 0.2                          # seed, epoch and stream all matter
    histogram = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    assert np.all(np.abs(histogram - 0.1) < 0.01), histogram
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.05


def test_train_window_uses_frame_step_and_pads_short_videos():
    u = uniform_draws(0, 0, 37, np.arange(200), 1)[:, 0]
    idx = train_frame_indices(u, np.full(200, 40), 8, np.full(200, 2))
    assert np.all(np.diff(idx, axis=1) == 2) and idx.min() >= 0 and idx.max() <= 39
    assert idx[:, 0].min() == 0 and idx[:, 0].max() == 40 - 15     # every window start is reachable
    short = train_frame_indices(u[:2], np.array([5, 5]), 8, np.array([2, 2]))
    np.testing.assert_array_equal(short, [[0, 2, 4, 4, 4, 4, 4, 4]] * 2)
    # V-JEPA 2's fps rule: 25 fps at target 16 -> step 1; 60 fps at target 16 -> step 3.
    assert clip_frame_step(2, 16, 25.0) == 1 and clip_frame_step(2, 16, 60.0) == 3 and clip_frame_step(2, None, 60.0) == 2


def test_eval_frames_span_the_whole_video():
    np.testing.assert_array_equal(eval_frame_indices(31, 4), [0, 10, 20, 30])
    long = eval_frame_indices(300, 16)
    assert long[0] == 0 and long[-1] == 299 and np.all(np.diff(long) > 0)
    short = eval_frame_indices(5, 8)
    assert short[0] == 0 and short[-1] == 4 and set(short.tolist()) == {0, 1, 2, 3, 4}


def test_random_resized_crop_statistics():
    u = uniform_draws(1, 0, 37, np.arange(2000), _DRAWS)
    y0, x0, h, w = random_resized_crop(u, np.full(2000, 120), np.full(2000, 160), (0.3, 1.0), (0.75, 1.35))
    assert np.all(y0 >= 0) and np.all(y0 + h <= 120) and np.all(x0 >= 0) and np.all(x0 + w <= 160)
    scales, aspects = h * w / (120 * 160), w / h
    assert 0.29 <= scales.min() and scales.max() <= 1.0 and scales.mean() > 0.5
    assert 0.72 <= aspects.min() and aspects.max() <= 1.4
    assert x0.min() == 0 and (x0 + w).max() == 160                      # crops reach both edges
    # A frame no crop of the aspect range fits in (a 10 x 200 strip): the largest centred crop in range.
    y0, x0, h, w = random_resized_crop(u[:3], np.full(3, 10), np.full(3, 200), (0.3, 1.0), (0.75, 1.35))
    assert np.all(h == 10) and np.all(w == 14) and np.all(y0 == 0) and np.all(x0 == 93)


def test_flip_rate_and_flip_encoded_as_reversed_roi(three_datasets):
    sampler = make_sampler(three_datasets, batch_size=50, samples_per_epoch=1000)
    flips = np.concatenate([sampler.plan(k).flip for k in range(20)])
    assert 0.45 <= flips.mean() <= 0.55
    plan = sampler.plan(0)
    assert np.all((plan.roi_start[:, 1] > plan.roi_end[:, 1]) == plan.flip)


def test_skipped_sample_is_replaced_from_the_same_dataset(three_datasets):
    base = make_sampler(three_datasets, samples_per_epoch=200)
    plan = base.plan(0)
    victim = (int(plan.dataset_id[0]), int(plan.row[0]))
    patched = make_sampler(three_datasets, samples_per_epoch=200, skipped=frozenset({victim})).plan(0)
    assert patched.dataset_id[0] == victim[0] and patched.row[0] != victim[1] and patched.substituted[0] == victim[1]
    np.testing.assert_array_equal(patched.row[1:], plan.row[1:])


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"rank": 2, "world_size": 2}, "rank"),
    ({"mode": "test"}, "mode"),
    ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
    ({"decode_device": "gpu"}, "decode_device"),
])
def test_config_errors_are_one_line_and_name_the_field(three_datasets, change, message):
    cfg = LoaderConfig([DatasetSpec(str(three_datasets[0]))], **change)
    with pytest.raises(ValueError, match=message) as err:
        cfg.validate()
    assert "\n" not in str(err.value)


def test_dataset_weight_must_be_positive(three_datasets):
    with pytest.raises(ValueError, match=r"datasets\[0\]\.weight"):
        LoaderConfig([DatasetSpec(str(three_datasets[0]), weight=0)]).validate()


def test_config_from_recipe_mapping(three_datasets):
    cfg = LoaderConfig.from_dict({"batch_size": 2, "crop_scale": [0.4, 1.0],
                                  "datasets": [{"root": str(three_datasets[0]), "weight": 0.2, "target_fps": 16}]})
    assert cfg.crop_scale == (0.4, 1.0) and cfg.datasets[0].target_fps == 16
    with pytest.raises(ValueError, match=r"data\.datasets\[0\]: unknown key 'wieght'"):
        LoaderConfig.from_dict({"datasets": [{"root": "x", "wieght": 1}]})
    with pytest.raises(ValueError, match=r"data: unknown key 'batchsize'"):
        LoaderConfig.from_dict({"batchsize": 2, "datasets": []})
