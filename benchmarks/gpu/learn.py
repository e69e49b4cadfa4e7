"""The GPU check's learning figure: a short run of the winning small-scale recipe at GPU scale, probed beside
its references, so that a lent GPU also says whether pretraining learns.

    python -m benchmarks.gpu.learn --out benchmarks/results/learn-h100 --work /tmp/vjepa-gpu/learn --deadline-s 230
    python -m benchmarks.gpu.learn --out /tmp/learn-cpu --work /tmp/learn-work --device cpu --tiny   # the dry run

Two commands, both written into the report: (1) benchmarks/learning_search/clips.py --camera renders synth-ucf's
camera-motion clips in memory (every training group's clip for pretraining, the held-out groups for
validation) on the machine's cores; (2) benchmarks/learning_search/search.py trains the engine's encoder,
predictor, JEPA loss and masks on them with VARIANT on the device, a larger batch with the learning rate
scaled, and probes the online encoder (the attentive probe, 20 classes, chance 5%) at step 0 (random init), at
the end, and the pixel baseline (patch embedding only). Writes OUT.md and OUT.json: the three figures, the
trained encoder minus the better reference, steps, time and the commands. Needs scikit-learn and Pillow
(the synth clips' bundled digits and photos); without them it says so in one line and exits 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The winning small-scale objective (docs/learning.md names it): SIGReg at 0.05 beside the prediction loss,
# 256 slices, EMA off; probed on the online encoder. The one place to change when the winner changes.
VARIANT = "sigreg_small"                     # the demo's recipe (docs/learning.md): L_pred + 0.05 SIGReg, EMA off
SEARCH_BATCH, SEARCH_LR = 16, 2e-4          # the CPU search's batch and learning rate (row G3), which GPU scale scales
GPU_SCALE = {"pretrain": 2520,              # every clip of synth-ucf demo's training groups
             "val": 980,                    # every clip of its held-out groups
             "batch": 128, "warmup": 100, "steps": 3000, "probe_seeds": 2, "probe_epochs": 20, "probe_n": 1000}
TINY = {"pretrain": 12, "val": 12, "batch": 4, "warmup": 1, "steps": 2, "probe_seeds": 1, "probe_epochs": 1,
        "probe_n": 12}
PROBE_RESERVE_S = 75                        # search.py's start (torch, CUDA, 0.6 GB of clips), three probes of
                                            # 2 seeds x 20 epochs and the token statistics, outside its --max-minutes
CHANCE = 100.0 / 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--out", type=Path, required=True, help="report stem: writes OUT.md and OUT.json")
    p.add_argument("--work", type=Path, required=True, help="folder for the rendered clips and the search's JSON")
    p.add_argument("--device", default="cuda", help="where search.py trains and probes (default cuda)")
    p.add_argument("--tiny", action="store_true", help="the dry run's shapes: 12 + 12 clips, 2 steps, one 1-epoch probe")
    p.add_argument("--variant", default=VARIANT, help="the objective, as search.py --variant takes it (default: the winner)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes rendering the clips (default: every core)")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="finish within this many seconds: training stops early to leave time for the last probe (0 = no limit)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the training step (search.py --bf16)")
    p.add_argument("--machine", default="", help="the machine, in words, for the report")
    return p


def scaled_lr(batch: int) -> float:
    """The CPU search's learning rate scaled to a larger batch by the square root of the ratio (AdamW)."""
    return SEARCH_LR * math.sqrt(batch / SEARCH_BATCH)


def commands(args, shape: dict, clips: Path, result: Path, max_minutes: float) -> tuple[list[str], list[str]]:
    py = sys.executable
    render = [py, "-m", "benchmarks.learning_search.clips", "--camera", "--pretrain", str(shape["pretrain"]),
              "--val", str(shape["val"]), "--workers", str(args.workers), "--out", str(clips)]
    lr = scaled_lr(shape["batch"])
    search = [py, "-m", "benchmarks.learning_search.search", "--data", str(clips), "--device", args.device,
              "--variant", args.variant, "--eval-online", "--pixel", "--batch", str(shape["batch"]), "--lr", f"{lr:.3g}",
              "--warmup", str(shape["warmup"]), "--steps", str(shape["steps"]), "--eval-at", f"0,{shape['steps']}",
              "--probe-seeds", str(shape["probe_seeds"]), "--probe-epochs", str(shape["probe_epochs"]),
              "--probe-n", str(shape["probe_n"]), "--threads", "4" if args.device != "cpu" else "2", "--out", str(result)]
    if max_minutes > 0:
        search += ["--max-minutes", f"{max_minutes:.2f}"]
    if args.bf16:
        search.append("--bf16")
    return render, search


def run(argv: list[str]) -> int:
    print("$ " + " ".join(argv), flush=True)
    rc = subprocess.run(argv, cwd=REPO).returncode
    if rc:
        print(f"learn: {argv[2].rsplit('.', 1)[-1]} failed (exit {rc}); its output is above", flush=True)
    return rc


def variant_name(variant: str) -> str:
    return json.loads(variant)["name"] if variant.lstrip().startswith("{") else variant


def mean_top1(per_seed: list[list[float]]) -> float:
    """search.py's probe result: per probe seed, the top-1 of each head of the sweep; here the first head."""
    return sum(heads[0] for heads in per_seed) / len(per_seed)


def interval(top1: float, n: int) -> float:
    """Half-width of the 95% binomial interval (Agresti-Coull: never zero at 0% or 100%) of an accuracy
    measured on n clips, in percentage points."""
    p = (top1 / 100.0 * n + 2) / (n + 4)
    return 196.0 * math.sqrt(p * (1 - p) / (n + 4))


def summarise(search: dict, n_val: int) -> dict:
    evals = search["evals"]
    first, last = evals[0], evals[-1]
    rows = {"pixels": {"top1": mean_top1(search["pixel"]), "per_seed": search["pixel"], "knn_top1": search.get("pixel_knn")},
            "random init": {"top1": mean_top1(first["top1"]), "per_seed": first["top1"], "step": first["step"],
                            "rank": first["rank"], "knn_top1": first.get("knn_top1")},
            "trained": {"top1": mean_top1(last["top1"]), "per_seed": last["top1"], "step": last["step"],
                        "rank": last["rank"], "train_s": last["train_s"], "loss": last["loss"],
                        "knn_top1": last.get("knn_top1")}}
    for row in rows.values():
        row["ci95"] = interval(row["top1"], n_val)
    best_name = max(("random init", "pixels"), key=lambda k: rows[k]["top1"])
    diff = rows["trained"]["top1"] - rows[best_name]["top1"]
    half = math.hypot(rows["trained"]["ci95"], rows[best_name]["ci95"])
    return {"rows": rows, "better_reference": best_name, "difference": diff, "difference_ci95": half,
            "verdict": "learns" if diff - half > 0 else ("hurts" if diff + half < 0 else "no clear difference")}


def write_report(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    s, shape = record["summary"], record["shape"]
    trained = s["rows"]["trained"]
    steps, train_s = trained["step"], trained["train_s"]
    lines = [f"# Learning figure on {record['machine'] or record['device']}" + (" (dry run, tiny shapes)" if record["tiny"] else ""), "",
             f"The winning small-scale objective `{variant_name(record['variant'])}` trained on synth-ucf's camera-motion "
             f"clips ({record['pretrain_clips']} pretraining clips, batch {shape['batch']}, lr {record['lr']:.3g}), "
             f"{steps} steps in {train_s:.0f} s ({steps * shape['batch'] / max(train_s, 1e-9):.0f} clips/s on "
             f"{record['device']}); attentive probe on {shape['probe_n']} training clips, scored on {record['n_val']} "
             f"held-out clips, mean of {shape['probe_seeds']} probe seed(s); 20 classes, chance {CHANCE:.0f}%. "
             f"One pretraining seed: the intervals are the clips' binomial 95% only.", "",
             "| encoder | steps | top-1 (%) | 95% | kNN top-1 (%, k = 20) | token rank |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("trained", "random init", "pixels"):
        r = s["rows"][name]
        rank = f"{r['rank']:.1f}" if "rank" in r else "—"
        knn = "—" if r.get("knn_top1") is None else f"{r['knn_top1']:.1f}"
        lines.append(f"| {name} | {r.get('step', '—')} | {r['top1']:.1f} | ±{r['ci95']:.1f} | {knn} | {rank} |")
    lines += ["", f"verdict: trained − {s['better_reference']} = {s['difference']:+.1f} ± {s['difference_ci95']:.1f} "
                  f"points: {s['verdict']}.", "",
              f"Rendering the clips took {record['render_s']:.0f} s on {record['workers']} processes; the whole stage "
              f"{record['wall_s']:.0f} s. Commands:", ""]
    lines += [f"    {' '.join(a if ' ' not in a else repr(a) for a in cmd)}" for cmd in record["commands"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    missing = [dist for module, dist in (("sklearn", "scikit-learn"), ("PIL", "pillow"))
               if importlib.util.find_spec(module) is None]
    if missing:
        print(f"learn: skipped, {', '.join(missing)} missing here (the synth clips' bundled digits and photos); "
              f"fix: pip install {' '.join(missing)}", flush=True)
        return 2
    shape = TINY if args.tiny else GPU_SCALE
    args.work.mkdir(parents=True, exist_ok=True)
    clips, result = args.work / "clips.npz", args.work / "search.json"
    render, _ = commands(args, shape, clips, result, 0)
    result.unlink(missing_ok=True)                 # never report an earlier call's search
    if run(render):
        return 1
    render_s = time.monotonic() - started
    max_minutes = 0.0
    if args.deadline_s > 0:
        left = args.deadline_s - (time.monotonic() - started) - PROBE_RESERVE_S
        if left < 20:
            print(f"learn: rendering took {render_s:.0f} s, {left + PROBE_RESERVE_S:.0f} s are left: too little to train",
                  flush=True)
            return 3
        max_minutes = left / 60
    _, search = commands(args, shape, clips, result, max_minutes)
    if run(search):
        return 1
    import numpy as np
    with np.load(clips) as data:                   # the counts rendered (the plan may hold fewer than asked)
        n_pre, n_val = len(data["pre_labels"]), len(data["val_labels"])
    record = {"device": args.device, "machine": args.machine, "tiny": args.tiny, "variant": args.variant,
              "shape": shape, "pretrain_clips": n_pre, "n_val": n_val, "lr": scaled_lr(shape["batch"]),
              "workers": args.workers, "render_s": render_s, "commands": [render, search]}
    found = json.loads(result.read_text())
    record["summary"] = summarise(found, n_val)
    record["search"] = found
    record["wall_s"] = time.monotonic() - started
    write_report(args.out, record)
    print(args.out.with_suffix(".md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
