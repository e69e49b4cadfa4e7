"""The DALI loader on the CPU (decode_device="cpu"): frames, sampling, images, resume, bad input, ranks."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import (FixtureSpec, assert_matches_reference, epoch_with_reference, frame_index_from_blue,
                           sample_key, write_dataset)
from proc_helpers import alive, read_line, wait_gone
from engine.data import DatasetSpec, LoaderConfig, VideoLoader
from engine.data.augment import crop_flip_resize_batch, crop_flip_resize_uint8
from engine.data.pyav_oracle import oracle_batch


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    return {
        "vid": write_dataset(root / "vid", FixtureSpec("vid", 8, num_frames=24, height=32, width=40,
                                                       frames_per_sample=[24, 24, 24, 24, 9, 24, 24, 40])),
        "img": write_dataset(root / "img", FixtureSpec("img", 6, images=True, height=36, width=28)),
        "bad": write_dataset(root / "bad", FixtureSpec("bad", 6, num_frames=12,
                                                       corrupt_keys=(sample_key("bad", 2),))),
        "bad_img": write_dataset(root / "bad_img", FixtureSpec("bad_img", 6, images=True,
                                                               corrupt_keys=(sample_key("bad_img", 4),))),
        # half_00002 decodes in frames 0-11 only: whether a draw of it fails depends on its frame window
        "half": write_dataset(root / "half", FixtureSpec("half", 6, num_frames=24,
                                                         corrupt_from_frame=((sample_key("half", 2), 12),))),
        "root": root,
    }


def cpu_config(*specs, **overrides) -> LoaderConfig:
    base = {"batch_size": 4, "num_frames": 6, "crop_size": 24, "decode_device": "cpu", "num_workers": 2,
            "num_threads": 2}
    return LoaderConfig(list(specs), **{**base, **overrides})


def to_levels(video: torch.Tensor, cfg: LoaderConfig) -> torch.Tensor:
    """Normalised [B, C, T, H, W] back to 0..255 levels."""
    std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1) * 255
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1) * 255
    return video.float() * std + mean


@pytest.mark.parametrize("resize_backend", ["dali", "torch"])
def test_dali_frames_match_pyav_reference(folders, resize_backend):
    # Both resize backends: the GPU graph's DALI resize runs here on the CPU too, so CI tests it.
    cfg = cpu_config(DatasetSpec(str(folders["vid"]), weight=0.5), DatasetSpec(str(folders["img"]), weight=0.5),
                     samples_per_epoch=16, resize_backend=resize_backend)
    loader = VideoLoader(cfg)
    try:
        for _ in range(3):
            plan = loader.sampler.plan(loader.step)
            batch = loader.next_batch()
            assert batch["video"].shape == (4, 3, 6, 24, 24) and batch["video"].dtype == torch.float32
            assert torch.equal(batch["label"], oracle_batch(loader.sampler, plan)["label"])
            # Within the backend's measured error on average and on every clip; a frame or a pixel off is not.
            assert_matches_reference(batch, loader.sampler, plan, cfg, resize_backend)
    finally:
        loader.close()


def test_eval_sampling_covers_the_whole_video(folders):
    # 40x32 frames: the centre 32x32 square at crop 32 is an identity resize, so DALI and PyAV must agree
    # to well under a level, and the blue channel tells which frame each output frame is.
    cfg = cpu_config(DatasetSpec(str(folders["vid"])), mode="eval", num_frames=8, batch_size=3, crop_size=32)
    batches = epoch_with_reference(cfg)
    assert len(batches) == 3  # 8 samples in batches of 3: last batch padded
    seen = {}
    for batch, reference in batches:
        levels = to_levels(batch["video"], cfg)
        assert (levels - to_levels(reference["video"], cfg)).abs().mean() < 0.5
        for key, clip, valid in zip(batch["key"], levels, batch["valid"]):
            if valid:
                seen[key] = [frame_index_from_blue(float(clip[2, t].mean())) for t in range(clip.shape[1])]
    assert len(seen) == 8
    for key, frames in seen.items():
        n = 9 if key == sample_key("vid", 4) else 40 if key == sample_key("vid", 7) else 24
        assert frames[0] == 0 and frames[-1] == n - 1, (key, frames)
        assert frames == np.round(np.linspace(0, n - 1, 8)).astype(int).tolist(), (key, frames)


@pytest.mark.parametrize("resize_backend", ["dali", "torch"])
def test_images_become_static_clips(folders, resize_backend):
    cfg = cpu_config(DatasetSpec(str(folders["img"])), samples_per_epoch=8, num_frames=5,
                     resize_backend=resize_backend)
    loader = VideoLoader(cfg)
    try:
        batch = loader.next_batch()
    finally:
        loader.close()
    video = batch["video"]                                              # [B, C, T, H, W]
    assert video.shape == (4, 3, 5, 24, 24)
    assert torch.equal(video, video[:, :, :1].expand_as(video))
    assert video.std() > 0.1                                            # real content, not a constant


def test_resume_reproduces_the_next_200_keys_and_augmentations(folders):
    cfg = cpu_config(DatasetSpec(str(folders["vid"]), weight=0.6), DatasetSpec(str(folders["img"]), weight=0.4),
                     samples_per_epoch=40, num_frames=2, crop_size=8, infinite=True, seed=5)
    first = VideoLoader(cfg)
    stream = iter(first)
    for _ in range(7):
        next(stream)
    state = first.state_dict()
    expected = [next(stream) for _ in range(50)]     # 50 batches of 4 = 200 keys, across 5 epochs
    first.close()

    resumed = VideoLoader(cfg)
    resumed.load_state_dict(state)
    got = [next(iter(resumed)) for _ in range(50)]
    resumed.close()
    assert [k for b in got for k in b["key"]] == [k for b in expected for k in b["key"]]
    for a, b in zip(got, expected):                  # identical frames, crops and flips => identical pixels
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["dataset_id"], b["dataset_id"])


def test_corrupt_sample_is_skipped_counted_and_logged(folders, caplog):
    cfg = cpu_config(DatasetSpec(str(folders["bad"])), DatasetSpec(str(folders["bad_img"])), samples_per_epoch=24,
                     num_frames=3, crop_size=8)
    loader = VideoLoader(cfg)
    with caplog.at_level(logging.WARNING, logger="engine.data.loader"):
        try:
            batches = list(loader)
            state = loader.state_dict()
        finally:
            loader.close()
    bad = sorted([sample_key("bad", 2), sample_key("bad_img", 4)])
    assert len(batches) == 6 and all(b["video"].shape[0] == 4 for b in batches)
    keys = [k for b in batches for k in b["key"]]
    assert not set(bad) & set(keys)
    assert sorted(loader.skipped_keys) == bad and loader.substitutions >= 2
    for key in bad:
        assert any(key in record.getMessage() for record in caplog.records)
    assert sorted(entry[2] for entry in state["skipped"]) == bad    # the skip set travels with the checkpoint


HALF_BAD, HALF_BAD_FROM = sample_key("half", 2), 12


def test_resume_after_a_skipped_sample_yields_the_same_keys(folders, caplog):
    """The skip set travels with the state: a resumed loader substitutes the sample the interrupted one found
    undecodable, exactly as the uninterrupted loader goes on doing. The sample decodes in some frame windows
    and not in others, and the resume point is chosen where its next draw has a decodable window: a resumed
    loader that forgot the skip set would yield it there (and log it as newly skipped later)."""
    from engine.data.sampler import ClipSampler

    cfg = cpu_config(DatasetSpec(str(folders["half"])), samples_per_epoch=12, num_frames=4, crop_size=8,
                     infinite=True, seed=1)
    first = VideoLoader(cfg)
    bad_row = first.indexes[0].keys.tolist().index(HALF_BAD)
    unskipped = ClipSampler(cfg, first.indexes)     # where the sample is drawn, and with which frames

    def draws(step: int) -> list[bool]:             # one entry per draw of it: True if the window decodes
        plan = unskipped.plan(step)
        return [bool(f.max() < HALF_BAD_FROM) for r, f in zip(plan.row, plan.frames) if r == bad_row]

    fails = next(s for s in range(100) if not all(draws(s)))
    resume_at = next(s for s in range(fails + 1, 100) if draws(s) and all(draws(s))
                     and all(all(draws(t)) for t in range(s, s + cfg.prefetch + 2)))
    stream = iter(first)
    for _ in range(resume_at):
        next(stream)
    assert first.skipped_keys == [HALF_BAD]           # found undecodable at step `fails`
    state = first.state_dict()
    expected = [next(stream)["key"] for _ in range(12)]
    first.close()

    resumed = VideoLoader(cfg)
    resumed.load_state_dict(state)
    assert resumed.skipped_keys == [HALF_BAD]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.data.loader"):
        got = [next(iter(resumed))["key"] for _ in range(len(expected))]
    resumed.close()
    assert got == expected
    assert HALF_BAD not in {k for keys in got for k in keys}
    assert not [r for r in caplog.records if "skipping undecodable sample" in r.getMessage()]  # not found again


def test_mix_report_counts_what_was_yielded(folders):
    """mix_report: the target weight and the realised share of every dataset, counted from the samples the
    loader yielded (eval padding excluded), carried across a resume."""
    specs = (DatasetSpec(str(folders["vid"]), weight=0.75), DatasetSpec(str(folders["img"]), weight=0.25))
    cfg = cpu_config(*specs, samples_per_epoch=16, num_frames=2, crop_size=8, infinite=True, seed=1)
    loader = VideoLoader(cfg)
    stream = iter(loader)
    batches = [next(stream) for _ in range(7)]                        # 28 samples: 1.75 epochs
    state = loader.state_dict()
    report = loader.mix_report()
    loader.close()
    counts = np.bincount(torch.cat([b["dataset_id"] for b in batches]).numpy(), minlength=2)
    assert counts.sum() == 28 and counts[0] / 28 != 0.75              # mid-epoch: realised differs from target
    assert report == {name: {"weight": w, "realised": c / 28, "samples": int(c)}
                      for name, w, c in zip(loader.names, (0.75, 0.25), counts)}
    # The first whole epoch is stratified: exactly round(weight * 16) samples of each dataset.
    first_epoch = np.bincount(torch.cat([b["dataset_id"] for b in batches[:4]]).numpy(), minlength=2)
    assert first_epoch.tolist() == [12, 4]

    resumed = VideoLoader(cfg)
    resumed.load_state_dict(state)
    extra = resumed.next_batch()["dataset_id"].numpy()
    resumed.close()
    counts = counts + np.bincount(extra, minlength=2)
    assert [v["samples"] for v in resumed.mix_report().values()] == counts.tolist()

    # Eval: 8 videos in batches of 3, the last one padded with a repeat that is not counted.
    evaluation = VideoLoader(cpu_config(DatasetSpec(str(folders["vid"])), mode="eval", batch_size=3, num_frames=2,
                                        crop_size=8))
    try:
        padded = list(evaluation)
    finally:
        evaluation.close()
    assert sum(len(b["key"]) for b in padded) == 9
    assert evaluation.mix_report() == {evaluation.names[0]: {"weight": 1.0, "realised": 1.0, "samples": 8}}


def test_every_rank_gets_equal_batches_through_the_pipeline(folders):
    per_rank = []
    for rank in range(2):
        cfg = cpu_config(DatasetSpec(str(folders["vid"])), mode="eval", batch_size=3, world_size=2, rank=rank,
                         num_frames=2, crop_size=8, num_workers=0)
        loader = VideoLoader(cfg)
        try:
            per_rank.append(list(loader))
        finally:
            loader.close()
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    real = [k for batches in per_rank for b in batches for k, v in zip(b["key"], b["valid"]) if v]
    assert sorted(real) == sorted(sample_key("vid", i) for i in range(8))


def test_missing_or_non_tar_shard_is_a_one_line_error(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["bad"], broken)
    (broken / "train-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard missing: .*train-000000.tar") as err:
        VideoLoader(cpu_config(DatasetSpec(str(broken))))
    assert "\n" not in str(err.value)
    (broken / "train-000000.tar").write_bytes(b"not a tar" * 200)
    with pytest.raises(ValueError, match="not a tar file: .*train-000000.tar"):
        VideoLoader(cpu_config(DatasetSpec(str(broken))))


def test_h264_shards_on_cpu_say_rebuild_as_vp9(tmp_path):
    folder = write_dataset(tmp_path / "h264", FixtureSpec("h264", 1, num_frames=4, codec="h264"))
    with pytest.raises(ValueError, match=r"rebuild the shards as VP9 .*--codec vp9.* or run on a GPU") as err:
        VideoLoader(cpu_config(DatasetSpec(str(folder))))
    assert "\n" not in str(err.value)


def test_resize_backends_agree_and_torch_is_refused_on_the_gpu_path(folders):
    specs = (DatasetSpec(str(folders["vid"]), weight=0.5), DatasetSpec(str(folders["img"]), weight=0.5))
    videos = {}
    for backend in ("dali", "torch"):
        loader = VideoLoader(cpu_config(*specs, samples_per_epoch=16, resize_backend=backend))
        try:
            videos[backend] = [loader.next_batch()["video"] for _ in range(2)]
        finally:
            loader.close()
    cfg = cpu_config(*specs)
    for a, b in zip(videos["dali"], videos["torch"]):
        error = (to_levels(a, cfg) - to_levels(b, cfg)).abs()
        assert error.mean() < 1.0 and error.max() < 24, (error.mean(), error.max())
    with pytest.raises(ValueError, match="resize_backend"):
        cpu_config(*specs, decode_device="mixed", resize_backend="torch").validate()


def test_torch_crop_flip_resize_flips_exactly_and_casts_on_copy():
    """The CPU path flips the crop before resizing: the same pixels as flipping the resized clip."""
    frames = torch.randint(0, 256, (3, 40, 52, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for (y0, x0, h, w), size in [((2, 5, 30, 21), 24), ((0, 0, 40, 52), 24), ((4, 7, 24, 24), 24), ((1, 3, 17, 40), 32)]:
        plain = crop_flip_resize_uint8(frames, np.array([y0, x0, y0 + h, x0 + w]), size)
        flipped = crop_flip_resize_uint8(frames, np.array([y0, x0 + w, y0 + h, x0]), size)
        assert plain.shape == (3, size, size, 3) and torch.equal(flipped, plain.flip(2))
    boxes = np.array([[2, 5, 32, 26], [0, 30, 36, 2]])
    samples = [frames, frames[:1]]                                   # a video and an image
    as_float = crop_flip_resize_batch(samples, boxes, 3, 24, dtype=torch.float32)
    assert torch.equal(as_float, crop_flip_resize_batch(samples, boxes, 3, 24).float())
    assert torch.equal(as_float[1, 0], as_float[1, 2])               # the image is a static clip


WORKER_HOST = """
import os, sys, time
from engine.data import DatasetSpec, LoaderConfig, VideoLoader
cfg = LoaderConfig([DatasetSpec(sys.argv[1])], batch_size=2, num_frames=4, crop_size=16, decode_device="cpu",
                   num_workers=2, num_threads=1)
loader = VideoLoader(cfg)
loader.next_batch()
children = [int(p) for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())
            and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())]
print(" ".join(map(str, children)), flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_training_process_is_killed(folders):
    host = subprocess.Popen([sys.executable, "-c", WORKER_HOST, str(folders["vid"])], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        # Building the pipeline and decoding a batch takes seconds; 120 s only bounds a hang.
        workers = [int(p) for p in read_line(host.stdout, 120, "the loader host listing its workers").split()]
        assert len(workers) == 2 and all(alive(p) for p in workers), workers
    finally:
        host.kill()                                            # SIGKILL: no Python cleanup runs
        host.wait()
    # Woken by each worker's exit; the timeout only bounds a worker that never notices its parent died.
    left = wait_gone(workers, timeout=60)
    assert not left, f"DALI worker processes {left} still alive 60 s after the loader was SIGKILLed"


def test_building_the_pipeline_leaves_no_autograph_files(folders):
    """DALI's conditionals write the converted graph functions to <tmp>/__autograph_generated_file*.py and
    delete them only at exit, which a killed trainer never reaches: they must be gone once the graph is built."""
    loader = VideoLoader(cpu_config(DatasetSpec(str(folders["vid"])), DatasetSpec(str(folders["img"]))))
    try:
        loader.next_batch()
        generated = [module.__file__ for name, module in list(sys.modules.items())
                     if name.startswith("__autograph_generated_file")]
        assert generated, "the graph was not converted by autograph: this test tests nothing"
        assert [path for path in generated if os.path.exists(path)] == []
    finally:
        loader.close()


def test_state_from_another_configuration_is_refused(folders):
    loader = VideoLoader(cpu_config(DatasetSpec(str(folders["vid"])), samples_per_epoch=8))
    state = loader.state_dict()
    other = VideoLoader(cpu_config(DatasetSpec(str(folders["vid"])), samples_per_epoch=8, seed=1))
    with pytest.raises(ValueError, match="seed was 0 when saved, is 1 now"):
        other.load_state_dict(state)


@pytest.fixture(scope="module")
def nvdec_folders(tmp_path_factory):
    # NVDEC decodes VP9 only from 128x128 up ("Video is too small in at least one dimension"): the CPU tests'
    # 40x32 clips cannot go through the mixed decoder.
    root = tmp_path_factory.mktemp("nvdec")
    return {"vid": write_dataset(root / "vid", FixtureSpec("vid128", 8, num_frames=24, height=128, width=160)),
            "img": write_dataset(root / "img", FixtureSpec("img128", 6, images=True, height=144, width=128))}


@pytest.mark.gpu
def test_mixed_decode_matches_cpu_decode_and_stays_on_the_gpu(nvdec_folders):
    folders = nvdec_folders
    outputs = {}
    for device in ("cpu", "mixed"):
        cfg = cpu_config(DatasetSpec(str(folders["vid"]), weight=0.5), DatasetSpec(str(folders["img"]), weight=0.5),
                         samples_per_epoch=16, decode_device=device)
        loader = VideoLoader(cfg)
        try:
            outputs[device] = [loader.next_batch() for _ in range(2)]
        finally:
            loader.close()
    for cpu_batch, gpu_batch in zip(outputs["cpu"], outputs["mixed"]):
        assert gpu_batch["video"].is_cuda and cpu_batch["key"] == gpu_batch["key"]
        error = (to_levels(gpu_batch["video"].cpu(), cfg) - to_levels(cpu_batch["video"], cfg)).abs()
        assert error.mean() < 2.0, error.mean()
