"""results.csv: one row per (encoder, benchmark, probe), and the summaries the report is built from.

Every number in the report is computed from these rows, so results.csv alone reproduces it. The
reported accuracy of a probe is its protocol head's (lr 1e-3, wd 0.01 unless the study changed it, the
same for every encoder); the best head of a sweep is in its own columns, marked as selected on test.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .eval_sets import BENCHMARKS
from .knn import knn_probe_name
from .stats import PairedDelta, mean_and_std, paired_delta

COLUMNS = ("encoder", "kind", "variant", "regime", "seed", "benchmark", "mirrors", "axis", "probe", "headline",
           "top1", "top5", "best_top1", "best_top5", "best_lr", "best_wd", "heads", "epochs", "num_train",
           "num_test", "num_classes", "chance", "trained_encoder")
RANDOM_VARIANT = "random_init"
PIXEL_VARIANT = "pixel_baseline"  # the architecture's patch embedding and norm, no blocks (engine.eval.pixel_baseline)
REFERENCE_VARIANTS = (RANDOM_VARIANT, PIXEL_VARIANT)


@dataclass(frozen=True)
class EncoderInfo:
    """What the study knows about an evaluated encoder."""

    name: str
    kind: str  # "trained", "random" or "pixel"
    variant: str  # objective variant, or one of REFERENCE_VARIANTS
    regime: str  # "ucf", "mixed", or "" for the references
    seed: int


def rows_from_evaluation(info: EncoderInfo, stored: dict) -> list[dict]:
    """Flatten one encoder's stored evaluation (engine.eval.encoder_eval) into results rows."""
    rows = []
    trained_encoder = stored.get("encoder", {}).get("trained_encoder", "")
    for bench_name, entry in stored["benchmarks"].items():
        benchmark = BENCHMARKS[bench_name]
        for probe_name, result in entry["probes"].items():
            heads = result["heads"]
            best = heads[result["best_index"]]
            rows.append({
                "encoder": info.name, "kind": info.kind, "variant": info.variant, "regime": info.regime,
                "seed": info.seed, "benchmark": bench_name, "mirrors": benchmark.mirrors or bench_name,
                "axis": benchmark.axis, "probe": probe_name, "headline": probe_name == benchmark.headline.name,
                "top1": heads[0]["top1"], "top5": heads[0]["top5"], "best_top1": best["top1"],
                "best_top5": best["top5"], "best_lr": best["lr"], "best_wd": best["weight_decay"],
                "heads": len(heads), "epochs": result["train"]["epochs"], "num_train": result["num_train"],
                "num_test": result["num_test"], "num_classes": result["num_classes"],
                "chance": 100.0 / result["num_classes"], "trained_encoder": trained_encoder,
            })
        if "knn" in entry:  # the kNN probe beside the trained ones (engine/eval/knn.py): no heads, no epochs
            rows.append(knn_row(info, bench_name, entry["knn"], trained_encoder))
    return rows


def knn_row(info: EncoderInfo, bench_name: str, knn: dict, trained_encoder: str) -> dict:
    """results.csv row of a stored kNN result: never the headline; no heads, so no best head or lr."""
    benchmark, nan = BENCHMARKS[bench_name], float("nan")
    return {"encoder": info.name, "kind": info.kind, "variant": info.variant, "regime": info.regime,
            "seed": info.seed, "benchmark": bench_name, "mirrors": benchmark.mirrors or bench_name,
            "axis": benchmark.axis, "probe": knn_probe_name(knn), "headline": False, "top1": knn["top1"],
            "top5": knn["top5"], "best_top1": knn["top1"], "best_top5": knn["top5"], "best_lr": nan, "best_wd": nan,
            "heads": 0, "epochs": 0, "num_train": knn["num_train"], "num_test": knn["num_test"],
            "num_classes": knn["num_classes"], "chance": 100.0 / knn["num_classes"],
            "trained_encoder": trained_encoder}


HEAD_COLUMNS = ("encoder", "benchmark", "probe", "head", "lr", "weight_decay", "top1", "top5", "final_train_loss",
                "protocol", "best")


def head_rows_from_evaluation(info: EncoderInfo, stored: dict) -> list[dict]:
    """Every head of every probe's sweep (heads.csv): the sweep reported in full, not only its best."""
    rows = []
    for bench_name, entry in stored["benchmarks"].items():
        for probe_name, result in entry["probes"].items():
            for index, head in enumerate(result["heads"]):
                rows.append({"encoder": info.name, "benchmark": bench_name, "probe": probe_name, "head": index,
                             **{k: head[k] for k in ("lr", "weight_decay", "top1", "top5", "final_train_loss")},
                             "protocol": index == 0, "best": index == result["best_index"]})
    return rows


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in columns})


def read_csv(path: Path) -> list[dict]:
    """results.csv back into typed rows."""
    numeric = {"top1", "top5", "best_top1", "best_top5", "best_lr", "best_wd", "chance"}
    integer = {"seed", "heads", "epochs", "num_train", "num_test", "num_classes"}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = dict(raw)
            for key in numeric:
                row[key] = float(row[key])
            for key in integer:
                row[key] = int(row[key])
            row["headline"] = row["headline"] == "True"
            rows.append(row)
    return rows


def by_seed(rows: list[dict], variant: str, regime: str, benchmark: str, probe: str, column: str = "top1") -> dict[int, float]:
    """{seed: value} of one (variant, regime) on one benchmark's probe."""
    return {r["seed"]: r[column] for r in rows
            if r["variant"] == variant and r["regime"] == regime and r["benchmark"] == benchmark and r["probe"] == probe}


def question_benchmark(rows: list[dict]) -> tuple[str, str]:
    """(benchmark, headline probe) of the research question (UCF-101 or synth-ucf) present in the rows."""
    for row in rows:
        if row["axis"] == "question" and row["headline"]:
            return row["benchmark"], row["probe"]
    raise ValueError("results hold no UCF-101 (or synth-ucf) row; add it to the study's benchmarks")


def variants_in_order(rows: list[dict]) -> list[str]:
    """Trained variants in first-seen order, the baseline first."""
    seen: list[str] = []
    for row in rows:
        if row["kind"] == "trained" and row["variant"] not in seen:
            seen.append(row["variant"])
    return sorted(seen, key=lambda v: (v != "baseline", seen.index(v)))


@dataclass
class RegimeDelta:
    """One variant's question-benchmark numbers in both regimes and the paired difference."""

    variant: str
    single: dict[int, float]
    mixed: dict[int, float]
    delta: PairedDelta  # mixed - single, paired by seed


def regime_deltas(rows: list[dict]) -> list[RegimeDelta]:
    benchmark, probe = question_benchmark(rows)
    out = []
    for variant in variants_in_order(rows):
        single = by_seed(rows, variant, "ucf", benchmark, probe)
        mixed = by_seed(rows, variant, "mixed", benchmark, probe)
        out.append(RegimeDelta(variant, single, mixed, paired_delta(single, mixed)))
    return out


def baseline_deltas(rows: list[dict], regime: str) -> dict[str, PairedDelta]:
    """variant - baseline of the same regime and seed, on the question benchmark."""
    benchmark, probe = question_benchmark(rows)
    base = by_seed(rows, "baseline", regime, benchmark, probe)
    return {v: paired_delta(base, by_seed(rows, v, regime, benchmark, probe))
            for v in variants_in_order(rows) if v != "baseline"}


def mean_std_text(values: list[float]) -> str:
    mean, std = mean_and_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def axis_score(rows: list[dict], variant: str, regime: str, axis: str) -> float:
    """Mean over seeds and over the axis's benchmarks (headline probes) of the protocol top-1."""
    values = [r["top1"] for r in rows if r["variant"] == variant and r["regime"] == regime
              and r["axis"] == axis and r["headline"]]
    return mean_and_std(values)[0]
