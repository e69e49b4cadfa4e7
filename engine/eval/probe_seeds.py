"""One encoder probed with several probe seeds, its reference rows, and the table that sets them side by side.

Probe noise is large at demo scale (random init alone spans 25-33% top-1 over probe seeds on 280 test
clips), so a number from one probe seed says little: every row here is the mean over probe seeds 0..n-1
with the 95% t-interval of that mean. The references are the encoders an SSL encoder must beat: the
random init of the same architecture and seed, and the pixel baseline (its patch embedding alone). Each
seed's evaluation is stored and reused (engine.eval.encoder_eval), and all seeds share one feature cache.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .encoders import EncoderSource, pixel_encoder, random_encoder
from .encoder_eval import BatchSource, EvalConfig, evaluate_encoder
from .knn import knn_probe_name
from .stats import MeanInterval, mean_interval

RANDOM_INIT, PIXEL_BASELINE = "random init", "pixel baseline"


def reference_sources(prefix: str, model_config: dict, seed: int) -> dict[str, EncoderSource]:
    """{label: source} of the two references of an architecture: random init and pixel baseline."""
    return {RANDOM_INIT: random_encoder(f"{prefix}_random_init_s{seed}", model_config, seed),
            PIXEL_BASELINE: pixel_encoder(f"{prefix}_pixel_baseline_s{seed}", model_config, seed)}


def evaluate_probe_seeds(source: EncoderSource, config: EvalConfig, probe_seeds: int, shards_root: str | Path,
                         cache_root: str | Path, results_dir: str | Path, batch_source: BatchSource | None = None,
                         device=None, with_knn: bool = False) -> dict[tuple[str, str], MeanInterval]:
    """{(benchmark, probe): protocol-head top-1 over probe seeds 0..probe_seeds-1}; `batch_source` None is
    the real loader. `with_knn` adds the kNN probe as (benchmark, "knn_k20"): one value, it has no seed."""
    if probe_seeds < 1:
        raise ValueError(f"probe_seeds={probe_seeds}: probe each encoder with at least one seed")
    loader = {} if batch_source is None else {"batch_source": batch_source}
    per_seed: dict[tuple[str, str], list[float]] = {}
    for seed in range(probe_seeds):
        stored = evaluate_encoder(source, dataclasses.replace(config, probe_seed=seed), shards_root, cache_root,
                                  results_dir, device=device, **loader)
        for benchmark in config.benchmarks:
            entry = stored["benchmarks"][benchmark]
            for probe, result in entry["probes"].items():
                per_seed.setdefault((benchmark, probe), []).append(result["heads"][0]["top1"])
            if with_knn and seed == 0 and "knn" in entry:  # trains nothing, so every probe seed has the same value: one row
                per_seed[(benchmark, knn_probe_name(entry["knn"]))] = [entry["knn"]["top1"]]
    return {key: mean_interval(values) for key, values in per_seed.items()}


def format_interval(summary: MeanInterval) -> str:
    if math.isnan(summary.low):
        return "-"
    return f"[{summary.low:.2f}, {summary.high:.2f}]"


def format_table(rows: dict[str, dict[tuple[str, str], MeanInterval]]) -> str:
    """Rows {encoder label: {(benchmark, probe): top-1}} -> a text table, encoders grouped per probe."""
    keys = list(dict.fromkeys(key for results in rows.values() for key in results))
    width = max([len(label) for label in rows] + [7])
    seeds = max((len(s.values) for results in rows.values() for s in results.values()), default=0)
    lines = [f"{'benchmark':14s} {'probe':22s} {'encoder':{width}s} {'top-1':>7s}  {'95% interval':17s} "
             f"per probe seed ({seeds} seeds, mean and t-interval of the mean)"]
    for benchmark, probe in keys:
        for label, results in rows.items():
            summary = results.get((benchmark, probe))
            if summary is None:
                continue
            values = " / ".join(f"{v:.2f}" for v in summary.values)
            lines.append(f"{benchmark:14s} {probe:22s} {label:{width}s} {summary.mean:7.2f}  "
                         f"{format_interval(summary):17s} {values}")
    return "\n".join(lines)


TABLE_COLUMNS = ("encoder", "benchmark", "probe", "values", "top1_mean", "top1_low", "top1_high", "top1_per_seed")


def write_table_csv(rows: dict[str, dict[tuple[str, str], MeanInterval]], path: Path) -> None:
    """The printed table as CSV: one line per (encoder, benchmark, probe), the attentive probe, the kNN probe
    (one value: it has no seed) and low-label fine-tuning alike; an empty interval where there is none."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for label, results in rows.items():
            for (benchmark, probe), summary in results.items():
                interval = ["", ""] if math.isnan(summary.low) else [f"{summary.low:.4f}", f"{summary.high:.4f}"]
                writer.writerow([label, benchmark, probe, len(summary.values), f"{summary.mean:.4f}", *interval,
                                 " ".join(f"{v:.4f}" for v in summary.values)])
