"""REPORT.md of a study, written from results.csv rows and the study's record (command, commits,
machine, wall times, runs). Nothing in it is typed in by hand."""
from __future__ import annotations

import math
from pathlib import Path

from .eval_sets import BENCHMARKS
from .plots import plot_regime_deltas, plot_tradeoff
from .results import (PIXEL_VARIANT, RANDOM_VARIANT, REFERENCE_VARIANTS, baseline_deltas, mean_std_text,
                      question_benchmark, regime_deltas, variants_in_order)
from .runs import REGIMES
from .stats import INTERVAL_METHOD, PairedDelta, mean_interval, paired_delta, t_quantile


def _num(value: float, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval_text(delta: PairedDelta) -> str:
    if delta.num_pairs < 2:
        return f"n={delta.num_pairs}: no interval"
    return f"[{_num(delta.low, signed=True)}, {_num(delta.high, signed=True)}]"


def verdict(delta: PairedDelta) -> str:
    if delta.num_pairs < 2:
        return "too few seeds"
    if delta.excludes_zero():
        return "mixed helps" if delta.mean > 0 else "mixed hurts"
    return "no clear effect"


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


REFERENCE_LABELS = {RANDOM_VARIANT: "random init (same architecture, untrained)",
                    PIXEL_VARIANT: "pixel baseline (patch embedding, no blocks)"}


def _interval_cell(values: list[float]) -> str:
    summary = mean_interval(values)
    if not values:
        return "—"
    if math.isnan(summary.low):
        return f"{summary.mean:.2f} (one seed)"
    return f"{summary.mean:.2f} [{summary.low:.2f}, {summary.high:.2f}]"


def learning_verdicts(rows: list[dict]) -> list[str]:
    """One line per trained variant and regime on the question benchmark: trained − the better reference
    (higher mean over seeds), paired by seed, with its 95% t-interval, and whether the 95% intervals of the
    trained encoder and of each reference overlap. The line `make demo` ends with."""
    benchmark, probe = question_benchmark(rows)
    on_question = [r for r in rows if r["benchmark"] == benchmark and r["probe"] == probe]
    references = {v: {r["seed"]: r["top1"] for r in on_question if r["variant"] == v} for v in REFERENCE_VARIANTS}
    references = {v: values for v, values in references.items() if values}
    if not references:
        return []
    best = max(references, key=lambda v: mean_interval(list(references[v].values())).mean)
    lines = []
    for variant in variants_in_order(rows):
        for regime in ("ucf", "mixed"):
            trained = {r["seed"]: r["top1"] for r in on_question if r["variant"] == variant and r["regime"] == regime}
            if not trained:
                continue
            delta = paired_delta(references[best], trained)
            own = mean_interval(list(trained.values()))
            apart = all(own.low > mean_interval(list(v.values())).high or own.high < mean_interval(list(v.values())).low
                        for v in references.values()) if len(trained) > 1 else False
            reading = ("pretraining helps" if delta.excludes_zero() and delta.mean > 0 else
                       "pretraining hurts" if delta.excludes_zero() else "no clear effect") \
                if delta.num_pairs > 1 else "too few seeds"
            lines.append(f"verdict: {variant}, {regime} regime − {REFERENCE_LABELS[best].split(' (')[0]} on {benchmark}: "
                         f"{_num(delta.mean, signed=True)} points top-1, 95% interval {interval_text(delta)} over "
                         f"{delta.num_pairs} paired seeds; intervals {'' if apart else 'not '}apart from both "
                         f"references: {reading}")
    return lines


def _learning_section(rows: list[dict]) -> list[str]:
    """Trained encoders against the two references on the question benchmark: does pretraining learn here
    at all? Without a clear gain over both references the mixed vs UCF-only answer below means nothing."""
    benchmark, probe = question_benchmark(rows)
    on_question = [r for r in rows if r["benchmark"] == benchmark and r["probe"] == probe]
    lines = [f"## Does pretraining learn here? Trained encoders vs the references on {benchmark} ({probe} probe)", "",
             "Mean top-1 over seeds with its 95% t-interval (n−1 dof); a reference is evaluated once per seed with "
             "the architecture of the runs. Gap = trained mean − the better reference's mean.", "",
             "| encoder | regime | top-1, mean [95% interval] | seeds | gap to the better reference |",
             "|---|---|---|---|---|"]
    reference_means = {}
    for variant in REFERENCE_VARIANTS:
        values = [r["top1"] for r in on_question if r["variant"] == variant]
        if values:
            reference_means[variant] = mean_interval(values).mean
    best_reference = max(reference_means.values()) if reference_means else float("nan")
    for variant in variants_in_order(rows):
        for regime in ("ucf", "mixed"):
            values = [r["top1"] for r in on_question if r["variant"] == variant and r["regime"] == regime]
            if values:
                gap = mean_interval(values).mean - best_reference
                lines.append(f"| {variant} | {REGIMES[regime]} | {_interval_cell(values)} | {len(values)} | "
                             f"{_num(gap, signed=True)} |")
    for variant in REFERENCE_VARIANTS:
        values = [r["top1"] for r in on_question if r["variant"] == variant]
        if values:
            lines.append(f"| {REFERENCE_LABELS[variant]} | — | {_interval_cell(values)} | {len(values)} | — |")
    if not reference_means:
        lines.append("")
        lines.append("No reference was evaluated (--no-random-init and --no-pixel-baseline): nothing shows whether "
                     "pretraining learned.")
    lines.append("")
    lines += [f"- {line}" for line in learning_verdicts(rows)]
    lines.append("")
    return lines


def _question_section(rows: list[dict]) -> list[str]:
    benchmark, probe = question_benchmark(rows)
    random_values = [r["top1"] for r in rows if r["variant"] == RANDOM_VARIANT and r["benchmark"] == benchmark
                     and r["probe"] == probe]
    lines = [f"## The answer: top-1 on {benchmark} ({probe} probe, protocol head)", "",
             f"Δ = mixed − UCF-only of the same variant and seed. Interval: {INTERVAL_METHOD}.", "",
             "| variant | UCF-only (mean ± sd) | mixed (mean ± sd) | Δ mixed − UCF-only | 95% interval | seeds | reading |",
             "|---|---|---|---|---|---|---|"]
    for d in regime_deltas(rows):
        lines.append(f"| {d.variant} | {mean_std_text(list(d.single.values()))} | {mean_std_text(list(d.mixed.values()))} "
                     f"| {_num(d.delta.mean, signed=True)} | {interval_text(d.delta)} | {d.delta.num_pairs} | {verdict(d.delta)} |")
    if random_values:
        lines.append(f"| random init (reference) | {mean_std_text(random_values)} | — | — | — | {len(random_values)} | untrained encoder |")
    pixel_values = [r["top1"] for r in rows if r["variant"] == PIXEL_VARIANT and r["benchmark"] == benchmark
                    and r["probe"] == probe]
    if pixel_values:
        lines.append(f"| pixel baseline (reference) | {mean_std_text(pixel_values)} | — | — | — | {len(pixel_values)} | "
                     "patch embedding, no blocks |")
    chance = next((r["chance"] for r in rows if r["benchmark"] == benchmark), float("nan"))
    lines += ["", f"Chance on {benchmark}: {_num(chance)}%. Per-seed values are in results.csv.", ""]
    for regime in ("ucf", "mixed"):
        # Only variants paired with a baseline row of the same seed (a study without `baseline` has none).
        deltas = {v: d for v, d in baseline_deltas(rows, regime).items() if d.num_pairs > 0}
        if not deltas:
            continue
        lines += [f"### Variant − same-seed baseline on {benchmark}, {REGIMES[regime]}", "",
                  "| variant | Δ vs baseline | 95% interval | seeds |", "|---|---|---|---|"]
        lines += [f"| {v} | {_num(d.mean, signed=True)} | {interval_text(d)} | {d.num_pairs} |" for v, d in deltas.items()]
        lines.append("")
    return lines


def _benchmarks_section(rows: list[dict]) -> list[str]:
    columns = sorted({(r["benchmark"], r["probe"]) for r in rows},
                     key=lambda bp: (list(BENCHMARKS).index(bp[0]), not _is_headline(rows, *bp), bp[1]))
    header = " | ".join(f"{b} ({p})" for b, p in columns)
    lines = ["## Every benchmark (protocol head top-1, mean ± sd over seeds)", "",
             f"| variant | regime | {header} |", "|---|---|" + "---|" * len(columns)]
    groups = [(v, g) for v in variants_in_order(rows) for g in ("ucf", "mixed")] + [(v, "") for v in REFERENCE_VARIANTS]
    for variant, regime in groups:
        cells = []
        for benchmark, probe in columns:
            values = [r["top1"] for r in rows if r["variant"] == variant and r["regime"] == regime
                      and r["benchmark"] == benchmark and r["probe"] == probe]
            cells.append(mean_std_text(values))
        if any(c != "—" for c in cells):
            lines.append(f"| {variant} | {regime or '—'} | " + " | ".join(cells) + " |")
    sweep = [r for r in rows if r["heads"] > 1]
    if sweep:
        lines += ["", f"Multi-head sweep: {sweep[0]['heads']} heads per probe trained in one loop; the best head is "
                  "selected on the test split (optimistic, as V-JEPA reports it); every head is in heads.csv. "
                  "Mean best-head top-1:", "",
                  "| variant | regime | " + header + " |", "|---|---|" + "---|" * len(columns)]
        for variant, regime in groups:
            cells = [mean_std_text([r["best_top1"] for r in sweep if r["variant"] == variant and r["regime"] == regime
                                    and r["benchmark"] == b and r["probe"] == p]) for b, p in columns]
            if any(c != "—" for c in cells):
                lines.append(f"| {variant} | {regime or '—'} | " + " | ".join(cells) + " |")
    return lines + [""]


def _is_headline(rows: list[dict], benchmark: str, probe: str) -> bool:
    return any(r["headline"] for r in rows if r["benchmark"] == benchmark and r["probe"] == probe)


def _protocol_section(rows: list[dict], record: dict) -> list[str]:
    lines = ["## Protocol", "",
             "Frozen encoder (the one each run actually trained: `trained_encoder` below), eval-layer tokens, "
             "T frames uniformly over the whole video, short-side resize + centre crop, features cached in fp16; "
             "AdamW, constant lr, cross-entropy, no augmentation, top-1 / top-5 on the official test/val split after "
             "the last epoch. Every encoder is probed with the same epochs and hyperparameters.", "",
             "| benchmark | train / test split | train / test samples | classes | probes | epochs | batch | split overlap |",
             "|---|---|---|---|---|---|---|---|"]
    for name, info in record.get("benchmarks", {}).items():
        bench = BENCHMARKS[name]
        probe_rows = [r for r in rows if r["benchmark"] == name]
        epochs = sorted({r["epochs"] for r in probe_rows})
        check = info.get("split_check", {})
        lines.append(f"| {name}{f' (mirrors {bench.mirrors})' if bench.mirrors else ''} | {bench.train_split} / "
                     f"{bench.test_split} | {check.get('train', '?')} / {check.get('test', '?')} | "
                     f"{info.get('num_classes', '?')} | {', '.join(p.name + ' on ' + p.pooling for p in bench.probes)} | "
                     f"{', '.join(map(str, epochs))} | {info.get('batch_size', '?')} | "
                     f"{check.get('shared_keys', '?')} keys, {check.get('shared_sources', '?')} sources |")
    evaluation = record.get("eval_config", {})
    lines += ["", f"Protocol head: lr {evaluation.get('lr')}, wd {evaluation.get('weight_decay')}; sweep lrs "
              f"{list(evaluation.get('sweep_lrs', ())) or 'none'}, wds {list(evaluation.get('sweep_wds', ())) or 'none'}; "
              f"clips × views {evaluation.get('num_clips')} × {evaluation.get('num_views')}.", ""]
    return lines


def _runs_section(record: dict) -> list[str]:
    lines = ["## Runs, recipes and commits", "",
             "| run | variant | regime | seed | trained encoder | recipe (resolved copy) | trained at commit | train time |",
             "|---|---|---|---|---|---|---|---|"]
    failed = [run for run in record.get("runs", []) if run.get("failed")]
    for run in record.get("runs", []):
        seconds = run.get("train_seconds")
        lines.append(f"| {run['name']} | {run['variant']} | {run['regime']} | {run['seed']} | "
                     f"{run.get('trained_encoder') or '?'} | [{run['recipe']}]({run.get('recipe_copy', '')}) | "
                     f"{run.get('commit') or 'before this study'} | {_hours(seconds) if seconds else '—'} |")
    overrides = record.get("train_overrides") or []
    lines += ["", f"Training command per run: `python -m engine.train --recipe <recipe> --set run.name=<run> "
              f"--set run.seed=<seed> --set run.out_dir={record.get('runs_dir')}"
              + "".join(f" --set {o}" for o in overrides) + " --resume auto`.", ""]
    if failed:
        lines += ["**Runs that failed (not in the tables above; rerun the command to retry them):**", ""]
        lines += [f"- {run['name']}: {run['failed']}" for run in failed] + [""]
    return lines


def write_report(rows: list[dict], record: dict, out: Path) -> Path:
    """REPORT.md and the two PNG plots into `out`."""
    delta_png = plot_regime_deltas(rows, out / "delta_ucf.png")
    tradeoff_png = plot_tradeoff(rows, out / "tradeoff.png")
    machine = record.get("machine", {})
    walls = record.get("wall_seconds", {})
    lines = [f"# Mixed vs UCF-only pretraining: {record.get('scale', '')} study", "",
             "Does mixed-dataset pretraining (UCF-101 + SSv2 + ImageNet-100) help or hurt UCF-101 accuracy of "
             "Video-JEPA models with auxiliary objectives, compared with UCF-101-only pretraining?", "",
             f"- Command: `{record.get('command', '')}`",
             f"- Code: commit {record.get('commit', '?')}{' (with uncommitted changes)' if record.get('dirty') else ''}",
             f"- Machine: {machine.get('summary', '?')}",
             f"- Wall time: {_hours(walls.get('total', 0.0))} in all this invocation (pretraining "
             f"{_hours(walls.get('train', 0.0))} for {record.get('runs_trained_now', 0)} runs, evaluation "
             f"{_hours(walls.get('eval', 0.0))}); {_hours(walls.get('all_invocations', walls.get('total', 0.0)))} over "
             f"{record.get('invocations', 1)} invocation(s); {len(record.get('runs', []))} runs, seeds {record.get('seeds')}", ""]
    lines += _learning_section(rows)
    lines += _question_section(rows)
    lines += [f"![Δ per variant]({delta_png.name})", "", f"![appearance vs motion]({tradeoff_png.name})", ""]
    lines += _benchmarks_section(rows)
    lines += _protocol_section(rows, record)
    lines += _runs_section(record)
    notes = list(record.get("notes") or [])
    seeds = len(record.get("seeds") or [])
    if seeds >= 2:
        notes.append(f"{seeds} seeds give a t-interval with {seeds - 1} degrees of freedom "
                     f"(t = {t_quantile(0.975, seeds - 1):.2f}): only effects larger than about that many standard "
                     f"errors of the paired difference exclude zero.")
    if notes:
        lines += ["## What this cannot show", ""] + [f"- {n}" for n in notes] + [""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
