"""In-memory clips for the learning search, of synth-ucf v4's design (docs/synth.md): label = digit (10) x
motion family (slide / spin), every appearance draw (scene, photo crop, colour, size, position) independent
of the class. Pretraining and the probe's training clips use the train pools of digit images and photo
tiles (shards.synth.assets), validation and test clips the held-out pools (different draws). Rendered here as 8 consecutive 64 px frames,
so a search step reads arrays instead of decoding shards.

    python -m benchmarks.learning_search.clips --out data/learning_search/clips.npz
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from shards.synth import assets, draw, scenes

MOTIONS = ("slide", "spin")

def render_audit_clip(rng, digit_index, frames=8, size=64):
    """[T, H, W, 3] uint8, moving digits as an earlier audit described its easier check (docs/learning.md,
    calibration): a 20 px white digit sliding in a straight line on a flat grey with pixel noise, no rotation,
    no colour; a calibration of the search loop against that audit's supervised check."""
    px = 20
    sprite = draw.sprite_from(assets.digit_alpha(digit_index, px), draw.solid_fill(np.array([255.0, 255.0, 255.0]), px))
    backdrop = draw.to_image(np.full((size, size, 3), 100.0))
    theta = rng.uniform(0, 2 * np.pi); speed = rng.uniform(1.5, 3.0)
    vx, vy = np.cos(theta) * speed, np.sin(theta) * speed
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    cx -= vx * (frames - 1) / 2; cy -= vy * (frames - 1) / 2
    out = []
    for t in range(frames):
        frame = backdrop.copy()
        draw.place(frame, sprite, cx + vx * t, cy + vy * t, px)
        out.append(np.asarray(frame))
    return draw.with_noise(np.stack(out), rng, 10.0)  # [T, H, W, 3] uint8


def render_clip(rng, digit_index, motion, frames=8, size=64, train=True, sprite_px=(26, 34), plain=False):
    """[T, H, W, 3] uint8: one digit sprite sliding in a uniform direction or spinning in place, on a graded
    photo crop, or with `plain` on a flat grey (the audit's easier moving digits, a calibration)."""
    tiles = assets.split_tile_indices(train)
    bg = scenes.render_background(rng, int(rng.choice(tiles)), size, size, scenes.random_scene(rng))
    if plain:
        bg = np.full_like(bg, 128.0)
    backdrop = draw.to_image(bg)
    px = int(rng.integers(*sprite_px))
    alpha = assets.digit_alpha(digit_index, px)
    rim = np.clip(draw.dilate(alpha, 1) - alpha, 0, 1)
    fill = draw.solid_fill(assets.random_color(rng), px) * (1 - 0.8 * rim[..., None])
    sprite = draw.sprite_from(np.maximum(alpha, rim), fill)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    ang0 = rng.uniform(-15, 15)
    if motion == "slide":
        theta = rng.uniform(0, 2 * np.pi); speed = rng.uniform(1.5, 3.0)
        vx, vy = np.cos(theta) * speed, np.sin(theta) * speed
        cx -= vx * (frames - 1) / 2; cy -= vy * (frames - 1) / 2
    else:
        sense = rng.choice([-1.0, 1.0]); omega = rng.uniform(4, 8) * sense
    out = []
    for t in range(frames):
        frame = backdrop.copy()
        if motion == "slide":
            draw.place(frame, sprite, cx + vx * t, cy + vy * t, px, ang0)
        else:
            draw.place(frame, sprite, cx, cy, px, ang0 + omega * t)
        out.append(np.asarray(frame))
    return draw.with_noise(np.stack(out), rng, 6.0)  # [T, H, W, 3] uint8

def make_split(n, seed, train, frames=8, size=64, plain=False, audit=False):
    """n clips with labels digit * 2 + motion, digit and motion uniform (`audit`: every clip slides, motion 0)."""
    rng = np.random.default_rng(seed)
    clips = np.empty((n, frames, size, size, 3), np.uint8); labels = np.empty(n, np.int64)
    for i in range(n):
        digit = int(rng.integers(10)); motion = 0 if audit else int(rng.integers(2))
        idx = assets.split_digit_indices(train, digit)
        if audit:
            clips[i] = render_audit_clip(rng, int(rng.choice(idx)), frames, size)
        else:
            clips[i] = render_clip(rng, int(rng.choice(idx)), MOTIONS[motion], frames, size, train, plain=plain)
        labels[i] = digit * 2 + motion
    return clips, labels

def _camera_clip(args) -> tuple[np.ndarray, np.ndarray, int]:
    """(pretraining frames, the 8 frames spread uniformly over the clip that the probe protocol reads, label) of
    one synth-ucf job. Pretraining frames are the probe's own unless `every_2nd`: 8 frames every 2nd from a
    random start, the old demo recipes' sampling, whose motion per tubelet is half the probe's (docs/learning.md:
    nothing pretrained on it transferred)."""
    job, seed, every_2nd = args
    from shards.synth import ucf
    from shards.synth.scales import SCALES
    frames = ucf.render_frames(job, SCALES["demo"], seed)  # [32, 64, 64, 3]
    uniform = frames[np.linspace(0, len(frames) - 1, 8).round().astype(int)]
    if not every_2nd:
        return uniform, uniform, job.label
    start = int(np.random.default_rng([seed, *job.stream]).integers(0, len(frames) - 15))
    return frames[start:start + 16:2], uniform, job.label


def make_camera_splits(pretrain: int, val: int, workers: int = 2, every_2nd: bool = False) -> dict:
    """synth-ucf's own clips (camera motion, shards/synth/ucf.py) at demo scale, rendered without the codec:
    pretraining and the probe's training clips from the training groups (seed 0, the demo's draws),
    validation from the held-out groups drawn again with seed 1 (clips the test split never shows)."""
    import multiprocessing
    from shards.synth import ucf
    from shards.synth.scales import SCALES
    jobs = ucf.plan(SCALES["demo"], 0)
    order = np.random.default_rng(0)
    train = [jobs[i] for i in order.permutation(len(jobs)) if jobs[i].split == "train"][:pretrain]
    held = [jobs[i] for i in order.permutation(len(jobs)) if jobs[i].split == "test"][:val]
    with multiprocessing.Pool(workers) as pool:
        pre = pool.map(_camera_clip, [(j, 0, every_2nd) for j in train], chunksize=16)
        held_out = pool.map(_camera_clip, [(j, 1, every_2nd) for j in held], chunksize=16)
    return {"pre": np.stack([c[0] for c in pre]), "pre_eval": np.stack([c[1] for c in pre]),
            "pre_labels": np.array([c[2] for c in pre]), "val": np.stack([c[1] for c in held_out]),
            "val_labels": np.array([c[2] for c in held_out])}


def render_texture_clip(rng, direction, fast, frames=8, size=64):
    """[T, H, W, 3] uint8, the clip-global motion check of the third learning audit
    (/work/shared/docs/learning-audit.md): a random smooth colour texture translating with one velocity per
    clip, one of 8 directions x 2 speeds, 8 consecutive frames."""
    from PIL import Image, ImageFilter
    big = size * 2
    noise = rng.integers(0, 256, (big // 4, big // 4, 3), dtype=np.uint8)
    texture = Image.fromarray(noise).resize((big, big), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    tint = rng.uniform(0.5, 1.5, 3)
    world = np.clip(np.asarray(texture, np.float32) * tint, 0, 255)
    speed = (2.0 if fast else 1.0) * rng.uniform(0.9, 1.1)
    angle = direction * np.pi / 4
    vx, vy = np.cos(angle) * speed, -np.sin(angle) * speed
    x0 = rng.uniform(size / 2 + 16, big - size / 2 - 16); y0 = rng.uniform(size / 2 + 16, big - size / 2 - 16)
    out = []
    for t in range(frames):
        cx, cy = x0 + vx * (t - frames / 2), y0 + vy * (t - frames / 2)
        view = Image.fromarray(world.astype(np.uint8)).transform(
            (size, size), Image.AFFINE, (1, 0, cx - size / 2, 0, 1, cy - size / 2), resample=Image.BILINEAR)
        out.append(np.asarray(view))
    return draw.with_noise(np.stack(out), rng, 4.0)


def make_texture_split(n, seed):
    """n texture clips, label = direction * 2 + fast (16 classes)."""
    rng = np.random.default_rng(seed)
    clips = np.empty((n, 8, 64, 64, 3), np.uint8); labels = np.empty(n, np.int64)
    for i in range(n):
        direction, fast = int(rng.integers(8)), int(rng.integers(2))
        clips[i] = render_texture_clip(rng, direction, fast)
        labels[i] = direction * 2 + fast
    return clips, labels


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/learning_search/clips.npz")
    parser.add_argument("--pretrain", type=int, default=4000, help="pretraining clips (the probe trains on the first 1,000)")
    parser.add_argument("--val", type=int, default=1000, help="held-out validation clips: settings are chosen on these")
    parser.add_argument("--test", type=int, default=1000, help="held-out test clips: reported once, for the chosen setting")
    parser.add_argument("--plain", action="store_true", help="flat grey backgrounds (a calibration: the audit's easier digits)")
    parser.add_argument("--audit", action="store_true",
                        help="the audit's moving digits: 20 px white digits sliding on flat grey, label = digit (a calibration)")
    parser.add_argument("--camera", action="store_true",
                        help="synth-ucf's camera-motion clips (shards/synth/ucf.py) instead of v4's digits; no test "
                             "split: the chosen setting is reported on the real synth-ucf test split by the engine")
    parser.add_argument("--textures", action="store_true",
                        help="the third audit's motion check: smooth colour textures translating, 8 directions x 2 "
                             "speeds (16 classes; a calibration of the search loop against that audit)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering --camera clips (the machine's cores)")
    parser.add_argument("--every-2nd", action="store_true",
                        help="--camera: pretrain on 8 frames every 2nd (the old demo sampling, half the probe's motion "
                             "per tubelet; docs/learning.md rows G, F, P, T) instead of the probe's own frames")
    args = parser.parse_args(argv)
    started = time.time()
    if args.textures:
        from pathlib import Path
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pre, pre_labels = make_texture_split(args.pretrain, 1)
        val, val_labels = make_texture_split(args.val, 3)
        np.savez(args.out, pre=pre, pre_labels=pre_labels, val=val, val_labels=val_labels)
        print(f"{args.out}: texture clips in {time.time() - started:.0f} s")
        return
    if args.camera:
        from pathlib import Path
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, **make_camera_splits(args.pretrain, args.val, args.workers, args.every_2nd))
        print(f"{args.out}: camera clips in {time.time() - started:.0f} s")
        return
    pretrain, pretrain_labels = make_split(args.pretrain, 1, True, plain=args.plain, audit=args.audit)
    val, val_labels = make_split(args.val, 3, False, plain=args.plain, audit=args.audit)
    test, test_labels = make_split(args.test, 2, False, plain=args.plain, audit=args.audit)
    from pathlib import Path
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, pre=pretrain, pre_labels=pretrain_labels, val=val, val_labels=val_labels, test=test,
             test_labels=test_labels)
    print(f"{args.out}: {len(pretrain)} pretraining, {len(val)} validation and {len(test)} test clips in "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
