"""Forward+backward time of every objective variant relative to the baseline, in one run.

Every variant gets the same encoder/predictor weights (same seed), the same clip, and the masks of its
own mask generator drawn once before timing (masking is part of a variant: future-predictive rows
have fewer context tokens). Variants are timed in rounds, each round in a new shuffled order, so a change in machine load spreads
over all of them; the ratio to the baseline compares the fastest round of each (load only adds time).

    python -m benchmarks.objectives                      # CPU defaults, writes benchmarks/results/objectives-cpu.*
    python -m benchmarks.objectives --device cuda --tag gpu --batch 8 --img-size 224 --frames 16 --preset base
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/objectives.py`: Python put benchmarks/ first on sys.path, where this file would
    # shadow the `kernels` package it measures; import from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch

from engine.jepa import JEPA, JEPAConfig
from engine.masking import build_mask_generator
from engine.models import Predictor, VisionTransformer, make_ema_target, model_preset, predictor_preset
from engine.objectives import VARIANTS, ContextLossConfig

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny", help="encoder size preset (engine.models.MODEL_PRESETS)")
    p.add_argument("--embed-dim", type=int, default=64, help="override the preset's width (0 = keep it)")
    p.add_argument("--predictor", default="tiny", help="predictor preset")
    p.add_argument("--img-size", type=int, default=48)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--variants", nargs="*", default=None, help="subset (the baseline is always included)")
    p.add_argument("--tag", default="cpu", help="results file stem: objectives-<tag>.json/.md")
    p.add_argument("--machine", default="2-core CPU, no GPU", help="machine description written with the results")
    return p.parse_args(argv)


def build(args, variant: str, device: torch.device):
    """Same weights for every variant: the seed is reset before the modules are built."""
    torch.manual_seed(0)
    overrides = dict(img_size=args.img_size, patch_size=args.patch, num_frames=args.frames)
    if args.embed_dim:
        overrides["embed_dim"] = args.embed_dim
    cfg = model_preset(args.preset, **overrides)
    encoder = VisionTransformer(cfg)
    predictor = Predictor(predictor_preset(args.predictor), encoder.out_dim, cfg.grid, num_mask_tokens=2)
    # λ_ctx at its final value so that the context loss's backward is part of every timing.
    jepa = JEPA(encoder, predictor, variant, JEPAConfig(context_loss=ContextLossConfig(lambda_start=0, lambda_end=0)))
    jepa.to(device)
    return cfg, jepa, make_ema_target(jepa.encoder)


def pick_clock(device: torch.device):
    """On a single-threaded CPU run, the thread's CPU time: on a shared machine, wall time mostly
    measures how often the scheduler ran us (we saw 3x spreads between identical steps)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "thread CPU time", time.thread_time
    return "wall time", time.perf_counter


def one_step(jepa, target_encoder, video, masks, step: int, device: torch.device, clock) -> float:
    jepa.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    losses = jepa(video, masks, step, target_encoder)
    losses["total"].backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    clock_name, clock = pick_clock(device)
    names = ["baseline"] + [n for n in (args.variants or sorted(VARIANTS)) if n != "baseline"]
    gen = torch.Generator().manual_seed(0)
    cfg, _, _ = build(args, "baseline", device)
    video = torch.randn(args.batch, 3, args.frames, args.img_size, args.img_size, generator=gen)
    # A moving bright square, so motion-guided masks and motion-based terms see real motion.
    side = args.img_size // 4
    for t in range(args.frames):
        x = (t * args.patch // 2) % (args.img_size - side)
        video[:, :, t, side:2 * side, x:x + side] += 2.0
    video = video.to(device)

    runs = {}
    for name in names:
        cfg, jepa, target_encoder = build(args, name, device)
        # Reseeded per variant: every variant with the same mask generator gets the same masks.
        mask_gen = torch.Generator().manual_seed(1)
        masks = build_mask_generator(jepa.mask_generator)(args.batch, cfg.grid, mask_gen, video=video.cpu())
        masks = [type(m)(m.context_idx.to(device), m.target_idx.to(device)) for m in masks]
        for i in range(args.warmup):
            one_step(jepa, target_encoder, video, masks, i, device, clock)
        runs[name] = dict(jepa=jepa, target=target_encoder, masks=masks, times=[])
    order = list(names)
    shuffler = random.Random(0)
    for round_id in range(args.rounds):
        shuffler.shuffle(order)  # no variant is always first (cold caches) or last in a round
        for name in order:
            r = runs[name]
            r["times"].append(one_step(r["jepa"], r["target"], video, r["masks"], args.warmup + round_id, device, clock))

    # Contention on a shared machine only ever adds time, so the fastest round is the least
    # disturbed estimate; the ratio uses it, the median is reported beside it.
    base = min(runs["baseline"]["times"])
    rows = []
    for name in names:
        r, variant = runs[name], VARIANTS[name]
        median = statistics.median(r["times"])
        head_params = sum(p.numel() for p in r["jepa"].objective.parameters())
        rows.append(dict(
            variant=name,
            terms=[dict(name=t.name, coeff=t.coeff, params=dict(t.params)) for t in variant.terms],
            mask_generator=variant.mask_generator,
            disable_ema=variant.disable_ema,
            context_tokens=[int(m.context_idx.shape[1]) for m in r["masks"]],
            target_tokens=[int(m.target_idx.shape[1]) for m in r["masks"]],
            head_params=head_params,
            median_ms=round(1000 * median, 2),
            min_ms=round(1000 * min(r["times"]), 2),
            max_ms=round(1000 * max(r["times"]), 2),
            relative_to_baseline=round(min(r["times"]) / base, 3),
        ))
    result = dict(
        benchmark="objectives: forward+backward of one JEPA step per variant",
        machine=args.machine,
        cpu=cpu_name(),
        logical_cpus=os.cpu_count(),
        device=str(device),
        torch=torch.__version__,
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        clock=clock_name,
        load_average_1min_at_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        config=dict(preset=args.preset, embed_dim=cfg.embed_dim, depth=cfg.depth, out_dim=cfg.out_dim,
                    predictor=args.predictor, img_size=args.img_size, patch=args.patch, frames=args.frames,
                    grid=list(cfg.grid), batch=args.batch, warmup=args.warmup, rounds=args.rounds,
                    dtype="float32"),
        results=rows,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"objectives-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [
        f"# Objective variants: forward+backward time relative to the baseline ({result['device']})",
        "",
        f"Machine: {result['machine']} ({result['cpu']}, {result['logical_cpus']} logical CPUs, "
        f"torch {result['torch']}, {result['threads']} thread(s); 1-min load average at the end "
        f"{result['load_average_1min_at_end']:.1f}, the machine was shared with other jobs).",
        f"Model: {c['preset']} encoder, width {c['embed_dim']}, depth {c['depth']}, features {c['out_dim']}-d; "
        f"{c['predictor']} predictor; clip {c['frames']}×{c['img_size']}² patch {c['patch']} → grid "
        f"{'×'.join(map(str, c['grid']))}; batch {c['batch']}; fp32; {c['warmup']} warm-up step(s), "
        f"{result['clock']} over {c['rounds']} rounds in shuffled order; the ratio compares the fastest rounds. Masks: each variant's own generator with one seed, drawn once (variants sharing a generator share masks).",
        "",
        "| variant | terms (coeff) | masks | ctx/tgt tokens per mask config | head params | min ms | median ms | × baseline (min) |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in result["results"]:
        terms = ", ".join(f"{t['name']} {t['coeff']:g}" for t in r["terms"]) or "—"
        if r["disable_ema"]:
            terms += " (no EMA)"
        tokens = ", ".join(f"{a}/{b}" for a, b in zip(r["context_tokens"], r["target_tokens"]))
        lines.append(f"| {r['variant']} | {terms} | {r['mask_generator']} | {tokens} | {r['head_params']} | "
                     f"{r['min_ms']:.1f} | {r['median_ms']:.1f} | {r['relative_to_baseline']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
