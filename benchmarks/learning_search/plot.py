"""Learning curves of search runs (benchmarks/learning_search/search.py JSONs): probe top-1 against minutes
of training, one line per run with every probe seed as a dot, the step-0 random init and the pixel baseline
of the first run as horizontal references.

    python -m benchmarks.learning_search.plot P.json L.json --labels "pixel target" "latent" --out curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run: dict) -> tuple[list[float], list[float], list[list[float]]]:
    """(minutes, mean top-1, per-seed top-1) of a run's probes; each probe's first head is its protocol head."""
    minutes, means, seeds = [], [], []
    for entry in run["evals"]:
        per_seed = [heads[0] for heads in entry["top1"]]
        minutes.append(entry["train_s"] / 60.0)
        means.append(sum(per_seed) / len(per_seed))
        seeds.append(per_seed)
    return minutes, means, seeds


def plot(runs: list[dict], labels: list[str], out: Path, title: str, reference_run: dict | None = None) -> Path:
    """reference_run: the run whose step-0 probe and pixel baseline draw the references (default: the first)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, label in zip(runs, labels):
        minutes, means, seeds = curve(run)
        steps = run["evals"][-1]["step"]
        line, = ax.plot(minutes, means, marker="o", label=f"{label} ({steps} steps)")
        for x, values in zip(minutes, seeds):
            ax.scatter([x] * len(values), values, color=line.get_color(), s=8, alpha=0.5)
    first = reference_run or runs[0]
    references = [("random init (step 0)", "--", [h[0] for h in first["evals"][0]["top1"]])
                  if first["evals"][0]["step"] == 0 else None,
                  ("pixel baseline (patch embedding, no blocks)", ":", [h[0] for h in first["pixel"]])
                  if first.get("pixel") else None]
    for name, style, values in [r for r in references if r]:
        ax.axhline(sum(values) / len(values), color="grey", linestyle=style, label=name)
    ax.set_xlabel("minutes of training (wall time of the training steps, probes excluded)")
    ax.set_ylabel("probe top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="search JSONs (--out of benchmarks.learning_search.search)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the file names)")
    parser.add_argument("--title", default="Learning search: probe top-1 vs training time")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--references", type=Path, default=None,
                        help="a search JSON on the same data and probe whose step-0 probe and --pixel give the "
                             "reference lines (default: the first run)")
    args = parser.parse_args(argv)
    labels = args.labels or [p.stem for p in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(args.runs)} runs; give one per run")
    runs = [json.loads(p.read_text()) for p in args.runs]
    for path, run in zip(args.runs, runs):
        if not run.get("evals"):
            raise SystemExit(f"{path}: no probe recorded yet; wait for the run's first probe")
    reference_run = json.loads(args.references.read_text()) if args.references else None
    print(plot(runs, labels, args.out, args.title, reference_run))


if __name__ == "__main__":
    main()
