"""The training step at paper scale, in process: throughput, TFLOP/s, MFU and peak memory per variant,
with the Triton kernels on and off.

It builds what engine/train.py builds (encoder, predictor, JEPA losses of the variant, EMA target, mask
generator, AdamW over the model's parameter groups, the recipe's micro-batches and gradient accumulation,
activation checkpointing) and runs the trainer's own step function, engine.training.step.train_step: masks,
forward under bf16 autocast, backward, optimizer step, EMA update, with its timers and FLOP count. What it
leaves out, so that it runs where DeepSpeed and DALI are not installed: DeepSpeed (engine.training.torch_engine
runs AdamW on fp32 weights under torch autocast instead of DeepSpeed's bf16 engine with fp32 master weights;
one GPU, so ZeRO would not shard anything), the collapse-alarm measurements and the metrics files. The batches are either synthetic clips already on the GPU (`--data synthetic`, the default:
the step alone, no data stall) or come through the real loader (`--data loader`, DALI on the shards).
benchmarks/train_step.py measures the real loop (DeepSpeed + loader) where both are installed.

    python -m benchmarks.gpu.step --out benchmarks/results/train_step-h100             # paper scale, CUDA
    python -m benchmarks.gpu.step --recipe-dir recipes/demo --runs baseline:reference \\
        --steps 1 --warmup 1 --out /tmp/train_step-cpu                                  # tiny, on CPU

Runs are `variant:kernels[:nockpt]` (kernels: triton = on, reference = off; nockpt: activation
checkpointing off). Results are rewritten after every run, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_RUNS = ("baseline:reference", "baseline:triton", "fwm_hw_ld:reference", "fwm_hw_ld:triton",
                "motion_guided:reference", "motion_guided:triton", "baseline:triton:nockpt")
SECTIONS = ("data", "masks", "compute", "optimizer", "ema")
GOAL_MFU = 0.40            # issue 14: ViT-B/16 JEPA step >= 40% MFU in bf16
PAPER_CLIPS_PER_S_A100 = 8.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results stem: writes STEM.json and STEM.md")
    p.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma list of variant:kernels[:nockpt]")
    p.add_argument("--recipe-dir", default="recipes", help="recipes/ (paper scale) or recipes/demo (CPU)")
    p.add_argument("--regime", default="mixed", choices=["mixed", "ucf"], help="recipe <regime>_<variant>.yaml")
    p.add_argument("--steps", type=int, default=15, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=4, help="steps dropped first (compilation, autotune, allocator)")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "loader"])
    p.add_argument("--shards", default=None, help="--data loader: folder holding synth-ucf, synth-ssv2, synth-in")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, as engine.train takes it (repeatable)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="seconds from start after which no new run starts and a running one stops measuring")
    p.add_argument("--matmul-tflops", type=float, default=0.0,
                   help="measured bf16 matmul TFLOP/s of this device (benchmarks.gpu.devinfo), for a second MFU")
    p.add_argument("--append", action="store_true", help="keep the runs already in STEM.json (a resumed stage)")
    p.add_argument("--label", default="", help="free text written into the results (e.g. the suite's name)")
    return p.parse_args(argv)


def parse_run(spec: str) -> dict:
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3) or parts[1] not in ("triton", "reference") or (len(parts) == 3 and parts[2] != "nockpt"):
        raise SystemExit(f"--runs: {spec!r} is not variant:triton|reference[:nockpt]")
    return {"id": spec.strip(), "variant": parts[0], "kernels": parts[1], "act_ckpt": len(parts) == 2}


def machine(torch, device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["summary"] = f"1x {info['gpu']}, {os.cpu_count()} CPU cores"
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    else:
        info["summary"] = f"{os.cpu_count()}-core CPU, no GPU"
    return info


class SyntheticClips:
    """Two fixed batches of normalised-looking clips, already on the device: data time is ~0."""

    def __init__(self, torch, recipe, device, dtype):
        m = recipe.model
        shape = (recipe.train.micro_batch, m.in_chans, m.num_frames, m.img_size, m.img_size)
        g = torch.Generator(device="cpu").manual_seed(0)
        self.batches = [torch.randn(shape, generator=g).to(device, dtype) for _ in range(2)]
        self.i = 0

    def next(self):
        self.i += 1
        return {"video": self.batches[self.i % 2]}

    def close(self):
        self.batches = []


class LoaderClips:
    """The engine's DALI loader on real shards, configured as the trainer configures it."""

    def __init__(self, recipe, device, dtype_name: str):
        from engine.data import VideoLoader

        cfg = dataclasses.replace(recipe.data, batch_size=recipe.train.micro_batch, rank=0, world_size=1,
                                  seed=recipe.run.seed, mode="train", infinite=True, dtype=dtype_name)
        self.loader = VideoLoader(cfg)
        self.device = device

    def next(self):
        return self.loader.next_batch()

    def close(self):
        self.loader.close()


def dataset_overrides(shards: str) -> list[str]:
    """The synth mix of benchmarks/train_step.py (UCF 0.2, SSv2 0.6, IN 0.2, frame step 2)."""
    return [f"data.datasets=[{{root: {shards}/synth-ucf, weight: 0.2, frame_step: 2}}, "
            f"{{root: {shards}/synth-ssv2, weight: 0.6, frame_step: 2}}, "
            f"{{root: {shards}/synth-in, weight: 0.2, frame_step: 2}}]"]


def run_one(run: dict, args, torch, device, deadline: float) -> dict:
    """Build the variant's model and optimizer, run warmup + steps of engine.training.step.train_step, return
    medians per step."""
    from engine.models import Predictor, VisionTransformer, make_ema_target
    from engine.jepa import JEPA
    from engine.masking import build_mask_generator
    from engine.objectives.registry import resolve_variant
    from engine.recipe import load_recipe
    from engine.training.ds_config import resolve_precision
    from engine.training.step import StepParts, train_step
    from engine.training.torch_engine import TorchEngine
    from kernels import use_backend

    overrides = list(args.overrides) + (dataset_overrides(args.shards) if args.data == "loader" else [])
    recipe_path = Path(args.recipe_dir) / f"{args.regime}_{run['variant']}.yaml"
    r = load_recipe(recipe_path, overrides, check_files=args.data == "loader", world_size=1)
    cuda = device.type == "cuda"
    precision = resolve_precision(r.parallel.precision, device.type)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    accum = r.train.global_batch // r.train.micro_batch

    torch.manual_seed(r.run.seed)
    variant = resolve_variant(r.objective.spec())
    masks_gen = build_mask_generator(r.masking, default=variant.mask_generator)
    encoder = VisionTransformer(r.model)
    predictor = Predictor(r.predictor, in_dim=encoder.out_dim, grid=r.model.grid,
                          num_mask_tokens=masks_gen.num_mask_configs)
    jepa = JEPA(encoder, predictor, variant, r.loss).to(device)
    target = make_ema_target(encoder).to(device)
    encoder.set_grad_checkpointing(r.parallel.activation_checkpointing and run["act_ckpt"])
    optimizer = torch.optim.AdamW(jepa.param_groups(r.optim.weight_decay), lr=r.optim.lr, betas=r.optim.betas,
                                  eps=r.optim.eps, fused=cuda)
    source = (SyntheticClips(torch, r, device, dtype) if args.data == "synthetic"
              else LoaderClips(r, device, "bfloat16" if precision == "bf16" else "float32"))
    parts = StepParts(TorchEngine(jepa, optimizer, accum, r.optim.grad_clip), jepa, target, masks_gen, source.next,
                      r, accum, device, precision=precision)
    peak = parts.peak
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rows, losses, nonfinite = [], [], 0
    started = time.perf_counter()
    try:
        with use_backend(run["kernels"]):
            for step in range(args.warmup + args.steps):
                if step >= args.warmup + 2 and time.perf_counter() > deadline:
                    break                                           # out of budget: keep what was measured
                row = train_step(parts, step)
                losses.append(row["loss"])
                nonfinite += int(row["nonfinite"])
                if step >= args.warmup:
                    rows.append({"wall": row["time.wall"], "flops": row["tflops_per_s"] * 1e12 * row["time.wall"],
                                 **{k: row.get(f"time.{k}", 0.0) for k in SECTIONS}})
    finally:
        source.close()
    if not rows:
        raise RuntimeError("no step was measured (deadline before the first measured step)")
    wall = statistics.median(x["wall"] for x in rows)
    flops = statistics.median(x["flops"] for x in rows)                  # varies a little with the mask sizes
    rate = statistics.median(x["flops"] / x["wall"] for x in rows)       # FLOP/s per step, as the trainer logs it
    clips = r.train.global_batch / wall
    result = {
        **run, "recipe": str(recipe_path), "precision": precision, "micro_batch": r.train.micro_batch,
        "global_batch": r.train.global_batch, "accumulation": accum, "tokens_per_clip": r.model.num_tokens,
        "act_ckpt_effective": bool(r.parallel.activation_checkpointing and run["act_ckpt"]),
        "measured_steps": len(rows), "warmup_steps": args.warmup, "step_s": wall, "step_s_min": min(x["wall"] for x in rows),
        "clips_per_s": clips, "tokens_per_s": clips * r.model.num_tokens, "flops_per_step": flops,
        "tflops_per_s": rate / 1e12, "mfu": None if peak is None else rate / peak,
        "peak_tflops": None if peak is None else peak / 1e12,
        "mfu_vs_measured_matmul": (rate / 1e12 / args.matmul_tflops) if args.matmul_tflops else None,
        "data_stall": statistics.median(x["data"] / x["wall"] for x in rows),
        "loss_first": losses[0], "loss_last": losses[-1], "nonfinite_losses": nonfinite,
        "run_wall_s": time.perf_counter() - started,
    }
    for section in SECTIONS:
        result[f"{section}_frac"] = statistics.median(x[section] / x["wall"] for x in rows)
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def to_markdown(report: dict) -> str:
    m = report["machine"]
    results = report["results"]
    peak = next((r["peak_tflops"] for r in results if r.get("peak_tflops")), None)
    peak_note = f" ({peak:.0f} TFLOP/s)" if peak else ""
    lines = [f"# Training step, in process ({m['summary']})", "",
             f"Device: {m.get('gpu') or m['device']}; torch {m['torch']}, triton {m.get('triton', '-')}. "
             f"Data: {report['data']}. {report['steps']} measured steps per run after {report['warmup']} dropped; "
             f"medians per step. Recipes `{report['recipe_dir']}/{report['regime']}_<variant>.yaml`"
             + (f" with {' '.join('--set ' + o for o in report['overrides'])}" if report["overrides"] else "") + ".",
             "One step = global batch over micro-batches with gradient accumulation, as the trainer runs it; "
             + ("torch AMP bf16 (fp32 weights, bf16 autocast) stands in for DeepSpeed's bf16 engine"
                if any(r.get("precision") == "bf16" for r in results) else "fp32 (no GPU)")
             + "; no collapse-alarm measurements. MFU = model FLOPs of the step (encoder, EMA target, predictor; x3 for backward; "
             "recomputation of checkpointed activations not counted) / step time / the device's dense bf16 "
             f"peak{peak_note}"
             + (f"; 'MFU vs matmul' divides by the {report['matmul_tflops']:.0f} TFLOP/s a large bf16 matmul "
                f"reached here." if report.get("matmul_tflops") else "."),
             "", "| variant | kernels | act. ckpt | step (s) | clips/s | tokens/s | TFLOP/s | MFU | MFU vs matmul | "
                 "× kernels off | peak mem (GiB) | data | masks | compute | optimizer | EMA | loss |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["variant"], r["kernels"], r["act_ckpt"]): r for r in results if "step_s" in r}

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}%"

    for r in results:
        if "step_s" not in r:
            lines.append(f"| {r['variant']} | {r['kernels']} | {'on' if r['act_ckpt'] else 'off'} | "
                         f"{r.get('status', 'failed')}: {r.get('error', '')[:140]} |" + " |" * 13)
            continue
        off = by_key.get((r["variant"], "reference", r["act_ckpt"]))
        speed = f"{off['step_s'] / r['step_s']:.2f}" if off and r["kernels"] == "triton" else "—"
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "—"
        lines.append(f"| {r['variant']} | {r['kernels']} | {'on' if r['act_ckpt_effective'] else 'off'} | "
                     f"{r['step_s']:.3f} | {r['clips_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops_per_s']:.1f} | "
                     f"{pct(r['mfu'])} | {pct(r['mfu_vs_measured_matmul'])} | {speed} | {mem} | "
                     f"{pct(r['data_frac'])} | {pct(r['masks_frac'])} | {pct(r['compute_frac'])} | "
                     f"{pct(r['optimizer_frac'])} | {pct(r['ema_frac'])} | {r['loss_last']:.4f} |")
    lines += ["", f"Goals (issue 14): MFU >= {100 * GOAL_MFU:.0f}% in bf16; the paper's original ran about "
                  f"{PAPER_CLIPS_PER_S_A100:g} clips/s per A100. × kernels off = step time with the PyTorch "
                  "references / with the Triton kernels, same variant. Time split columns are fractions of the "
                  "step (data = waiting for the batch; masks include the motion scores; compute = forward + "
                  "backward).", ""]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def write(report: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(report))


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.deadline_s if args.deadline_s > 0 else float("inf")
    runs = [parse_run(s) for s in args.runs.split(",") if s.strip()]
    if args.data == "loader" and not args.shards:
        raise SystemExit("--data loader needs --shards")
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(1)                 # tiny CPU shapes: threads only add barrier waits
    stem = args.out
    report = {"machine": machine(torch, device), "label": args.label, "data": args.data, "shards": args.shards,
              "recipe_dir": args.recipe_dir, "regime": args.regime, "overrides": args.overrides,
              "steps": args.steps, "warmup": args.warmup, "matmul_tflops": args.matmul_tflops or None,
              "results": [], "notes": []}
    if args.append and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        # Keep what was measured and what failed (a run that broke the CUDA context must not run again);
        # runs skipped for time get their chance.
        report["results"] = [r for r in old.get("results", []) if r.get("status") != "skipped"]
        report["notes"] = old.get("notes", [])
    done = {r["id"] for r in report["results"]}
    for run in runs:
        if run["id"] in done:
            continue
        if time.perf_counter() > deadline:
            report["results"].append({**run, "status": "skipped", "error": "out of the stage's time budget"})
            write(report, stem)
            continue
        if run["kernels"] == "triton" and device.type != "cuda":
            report["results"].append({**run, "status": "skipped",
                                      "error": "no CUDA: the Triton kernels run compiled only on a GPU"})
            write(report, stem)
            continue
        print(f"[step] {run['id']} ...", flush=True)
        try:
            result = run_one(run, args, torch, device, deadline)
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            traceback.print_exc()
            report["results"].append({**run, "status": "failed", "error": message[:400]})
            write(report, stem)
            if device.type == "cuda" and ("CUDA error" in str(err) or "illegal memory" in str(err)):
                print("[step] CUDA context is unusable after this error; stopping (exit 3)", flush=True)
                return 3
            continue
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report["results"].append(result)
        write(report, stem)
        mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
        mem = f", peak {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
        print(f"[step] {run['id']}: {result['step_s']:.3f} s/step, {result['clips_per_s']:.1f} clips/s, "
              f"{result['tflops_per_s']:.1f} TFLOP/s, MFU {mfu}{mem} ({result['measured_steps']} steps)", flush=True)
    write(report, stem)
    failed = [r for r in report["results"] if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
