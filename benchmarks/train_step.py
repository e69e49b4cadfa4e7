"""Training-step throughput of the real loop: clips/s, tokens/s, where the time goes, and MFU.

Runs engine/train.py itself (same loader, masks, DeepSpeed engine, EMA) for a few steps per kernel
backend, side by side, and summarises its per-step metrics after a warm-up:

    python benchmarks/train_step.py                                # CPU: demo model, synth demo shards
    python benchmarks/train_step.py --paper --shards data/shards   # GPU: ViT-B/16, 16x224^2, bf16, batch 32

Kernel backends compared: `reference` (PyTorch composites, what the original code does) and `triton`
(the fused kernels; on CPU they run in the Triton *interpreter*, a correctness path: a few steps
only, labelled as such). The recipe's variant is `combo` by
default because it exercises all three kernels: masked gather, hard-weighted loss, motion-guided masks.
Results go to benchmarks/results/train_step-<cpu|gpu>.{json,md} with the machine they ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.training.metrics import read_metrics  # noqa: E402

SECTIONS = ("data", "masks", "compute", "optimizer", "ema")


def machine() -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["summary"] = f"1x {info['gpu']}, {os.cpu_count()} CPU cores"
    else:
        info["summary"] = f"{os.cpu_count()}-core CPU, no GPU"
    try:
        load = os.getloadavg()
        info["load_average_at_start"] = [round(x, 2) for x in load]
    except OSError:
        pass
    return info


def run_backend(recipe: str, backend: str, steps: int, overrides: list[str], workdir: Path) -> tuple[Path, float]:
    """One training run of `steps` steps on `backend`; returns its run folder and wall time."""
    name = f"bench_{backend}"
    cmd = [sys.executable, "-m", "engine.train", "--recipe", recipe,
           "--set", f"run.out_dir={workdir}", "--set", f"run.name={name}", "--set", f"train.steps={steps}",
           "--set", "train.checkpoint_every=1000000", "--set", "train.export_at_end=false",
           "--set", "train.progress_bar=false", "--set", f"parallel.kernels={backend}", "--set", "train.log_every=1"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ)
    if not _has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")   # on a GPU DeepSpeed must pick its CUDA accelerator
    if backend == "triton":
        env.setdefault("TRITON_INTERPRET", "0" if _has_cuda() else "1")
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"benchmark run ({backend}) failed:\n{result.stderr[-4000:]}")
    return workdir / name, time.perf_counter() - start


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def summarise(run_dir: Path, warmup: int) -> dict:
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["step"] > warmup and r.get("step_applied", 1) == 1]
    if not rows:
        raise SystemExit(f"{run_dir}: no measured steps after {warmup} warm-up steps; raise --steps")

    def med(key):
        values = [r[key] for r in rows if key in r]
        return statistics.median(values) if values else None

    wall = med("time.wall")
    out = {"measured_steps": len(rows), "step_s": wall, "clips_per_s": med("clips_per_s"),
           "tokens_per_s": med("tokens_per_s"), "tflops_per_s": med("tflops_per_s"), "mfu": med("mfu"),
           "data_stall": med("data_stall"), "loss_last": rows[-1].get("loss")}
    for section in SECTIONS:
        value = med(f"time.{section}")
        out[f"{section}_s"] = value
        out[f"{section}_frac"] = None if value is None else value / wall
    return out


def to_markdown(report: dict) -> str:
    lines = [f"# Training-step benchmark ({report['machine']['summary']})", "",
             f"Recipe `{report['recipe']}` with {' '.join('--set ' + o for o in report['overrides']) or 'no overrides'}; "
             f"{report['steps']} steps per backend, the first {report['warmup']} dropped, medians per step.",
             f"Model: {report['model']}. Tokens per clip: {report['tokens_per_clip']}. Global batch: {report['global_batch']}.",
             f"Machine: {report['machine'].get('cpu', '?')}, torch {report['machine']['torch']}; load average at "
             f"start {report['machine'].get('load_average_at_start')}"
             + (f", GPU {report['machine']['gpu']}." if report["machine"].get("gpu") else
                " (the machine was shared with other jobs when this ran, so absolute figures are pessimistic)."),
             "", "| kernels | step (s) | clips/s | tokens/s | data | masks | compute (fwd+bwd) | optimizer | EMA | "
                 "data stall | achieved TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for backend, s in report["results"].items():
        def pct(key):
            return "n/a" if s[key] is None else f"{100 * s[key]:.1f}%"
        mfu = "n/a (CPU)" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
        lines.append(f"| {backend} | {s['step_s']:.3f} | {s['clips_per_s']:.1f} | {s['tokens_per_s']:.0f} | "
                     f"{pct('data_frac')} | {pct('masks_frac')} | {pct('compute_frac')} | {pct('optimizer_frac')} | "
                     f"{pct('ema_frac')} | {pct('data_stall')} | {s['tflops_per_s']:.4f} | {mfu} |")
    lines += ["", "Time split columns are fractions of the step's wall time (data = waiting for the loader; masks ="
                  " mask generation incl. motion scores; compute = forward + backward; optimizer = ZeRO step; "
                  "EMA = target update). MFU counts encoder, target and predictor FLOPs against the GPU's dense "
                  "bf16 peak; on CPU there is no peak to divide by.", ""]
    if report.get("notes"):
        lines += [f"Note: {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def rewrite_markdown(json_path: str | Path) -> None:
    """Regenerate the .md next to a results .json (after a change of the table layout)."""
    json_path = Path(json_path)
    json_path.with_suffix(".md").write_text(to_markdown(json.loads(json_path.read_text())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=None, help="default: demo mixed_combo on CPU, paper mixed_combo with --paper")
    parser.add_argument("--paper", action="store_true", help="ViT-B/16 at 16x224^2, batch 32 (needs a GPU)")
    parser.add_argument("--shards", default="data/shards", help="folder holding synth-ucf, synth-ssv2, synth-in")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--kernels", default=None, help="comma list of backends (default: reference,triton)")
    parser.add_argument("--interpreter-steps", type=int, default=3,
                        help="steps of the `triton` backend on CPU (Triton interpreter)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="results path stem (default benchmarks/results/train_step-<cpu|gpu>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    cuda = _has_cuda()
    if args.paper and not cuda:
        raise SystemExit("--paper runs ViT-B/16 at 16x224^2 with batch 32: it needs a GPU; on CPU use the default demo recipe")
    recipe = args.recipe or ("recipes/mixed_combo.yaml" if args.paper else "recipes/demo/mixed_combo.yaml")
    backends = (args.kernels or "reference,triton").split(",")
    datasets = (f"data.datasets=[{{root: {args.shards}/synth-ucf, weight: 0.2, frame_step: 2}}, "
                f"{{root: {args.shards}/synth-ssv2, weight: 0.6, frame_step: 2}}, "
                f"{{root: {args.shards}/synth-in, weight: 0.2, frame_step: 2}}]")
    overrides = [datasets] + list(args.overrides)

    from engine.recipe import load_recipe
    r = load_recipe(recipe, overrides, check_files=True, world_size=1)
    report = {"machine": machine(), "recipe": recipe, "overrides": overrides, "steps": args.steps,
              "warmup": args.warmup, "model": f"embed {r.model.embed_dim}, depth {r.model.depth}, "
              f"{r.model.img_size}px x {r.model.num_frames} frames, patch {r.model.patch_size}, tubelet "
              f"{r.model.tubelet_size}; predictor depth {r.predictor.depth} width {r.predictor.width}; "
              f"variant {r.objective.variant}",
              "tokens_per_clip": r.model.num_tokens, "global_batch": r.train.global_batch, "results": {},
              "notes": []}
    if not cuda:
        report["notes"].append("On CPU the `auto` backend is the PyTorch reference: the Triton kernels run only "
                               "on CUDA (or in the interpreter, which is a correctness tool, not a speed path). "
                               "Kernel on/off figures need a GPU: run with --paper there.")
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        for backend in backends:
            steps, warmup = args.steps, args.warmup
            label = backend
            if backend == "triton" and not cuda:
                # The interpreter runs every program instance in Python (~a minute a step here): a few
                # steps show that the kernel path trains end to end; they say nothing about GPU speed.
                steps, warmup, label = args.interpreter_steps, 1, "triton (interpreter)"
                report["notes"].append(f"`triton (interpreter)`: the Triton kernels under TRITON_INTERPRET=1, "
                                       f"{steps} steps, first dropped; a correctness path, not a speed figure.")
            run_dir, wall = run_backend(recipe, backend, steps, overrides, Path(tmp))
            report["results"][label] = {**summarise(run_dir, warmup), "process_wall_s": wall}
            print(f"{label}: {report['results'][label]}", flush=True)
    stem = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"train_step-{'gpu' if cuda else 'cpu'}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
