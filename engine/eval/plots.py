"""The study's two figures: Δ(mixed − UCF-only) per variant with its interval, and the appearance vs
motion trade-off of every (variant, regime)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or the study machine
import matplotlib.pyplot as plt  # noqa: E402

from .results import RANDOM_VARIANT, axis_score, question_benchmark, regime_deltas, variants_in_order  # noqa: E402
from .stats import INTERVAL_METHOD  # noqa: E402


def plot_regime_deltas(rows: list[dict], path: Path) -> Path:
    """Bar per variant: mean Δ top-1 (mixed − UCF-only) on the question benchmark, 95% interval as error bars."""
    deltas = regime_deltas(rows)
    benchmark, probe = question_benchmark(rows)
    fig, ax = plt.subplots(figsize=(1.2 * max(len(deltas), 3) + 2, 4))
    xs = range(len(deltas))
    means = [d.delta.mean for d in deltas]
    lower = [d.delta.mean - d.delta.low if not math.isnan(d.delta.low) else 0.0 for d in deltas]
    upper = [d.delta.high - d.delta.mean if not math.isnan(d.delta.high) else 0.0 for d in deltas]
    colours = ["tab:green" if d.delta.excludes_zero() and d.delta.mean > 0 else
               "tab:red" if d.delta.excludes_zero() else "tab:gray" for d in deltas]
    ax.bar(xs, means, yerr=[lower, upper], capsize=4, color=colours)
    for x, d in zip(xs, deltas):
        for diff in d.delta.differences:
            ax.plot(x, diff, "k.", markersize=4)  # each seed's own difference
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [d.variant for d in deltas], rotation=30, ha="right")
    ax.set_ylabel(f"Δ top-1 on {benchmark} (points)")
    ax.set_title(f"Mixed − UCF-only pretraining ({probe} probe)\n{INTERVAL_METHOD}; dots: seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(rows: list[dict], path: Path) -> Path:
    """Appearance (ImageNet-100-like) vs motion (Diving-48 / SSv2-like) top-1, per (variant, regime);
    an arrow joins a variant's UCF-only point to its mixed point."""
    fig, ax = plt.subplots(figsize=(6, 5))
    markers = {"ucf": ("o", "UCF-only"), "mixed": ("s", "mixed")}
    for i, variant in enumerate(variants_in_order(rows)):
        colour = plt.cm.tab10(i % 10)
        points = {}
        for regime, (marker, label) in markers.items():
            x, y = axis_score(rows, variant, regime, "appearance"), axis_score(rows, variant, regime, "motion")
            if math.isnan(x) or math.isnan(y):
                continue
            points[regime] = (x, y)
            ax.scatter([x], [y], marker=marker, color=colour, label=f"{variant} ({label})")
        if len(points) == 2:
            ax.annotate("", xy=points["mixed"], xytext=points["ucf"],
                        arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.6})
    x, y = axis_score(rows, RANDOM_VARIANT, "", "appearance"), axis_score(rows, RANDOM_VARIANT, "", "motion")
    if not (math.isnan(x) or math.isnan(y)):
        ax.scatter([x], [y], marker="x", color="black", label="random init")
    for axis, draw in (("appearance", ax.axvline), ("motion", ax.axhline)):
        chances = [r["chance"] for r in rows if r["axis"] == axis and r["headline"]]
        if chances:  # chance level of the axis (mean over its benchmarks)
            draw(sum(chances) / len(chances), color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("appearance: top-1 on the ImageNet-100-like benchmark (dotted: chance)")
    ax.set_ylabel("motion: mean top-1 on the Diving-48 / SSv2-like benchmarks")
    ax.set_title("Appearance vs motion (mean over seeds, headline probes)", fontsize=9)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=6, loc="best", ncol=2)
    else:
        ax.text(0.5, 0.5, "no appearance and motion benchmarks in this study", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
