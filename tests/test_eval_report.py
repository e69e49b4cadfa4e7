"""The report's Δ and 95% interval against a hand computation on a small fixture of results."""
import math

import pytest

from engine.eval.report import write_report
from engine.eval.results import baseline_deltas, read_csv, regime_deltas, write_csv
from engine.eval.stats import paired_delta

# Fixture: synth-ucf top-1 of two variants over three seeds in both regimes.
SINGLE = {"baseline": {0: 50.0, 1: 52.0, 2: 47.0}, "hw": {0: 49.0, 1: 51.0, 2: 48.0}}
MIXED = {"baseline": {0: 53.0, 1: 52.5, 2: 50.0}, "hw": {0: 49.0, 1: 51.0, 2: 48.0}}


def _row(variant, regime, seed, benchmark, probe, top1, axis, headline=True, kind="trained"):
    return {"encoder": f"{variant}_{regime}_{seed}", "kind": kind, "variant": variant, "regime": regime, "seed": seed,
            "benchmark": benchmark, "mirrors": benchmark, "axis": axis, "probe": probe, "headline": headline,
            "top1": top1, "top5": min(100.0, top1 + 20), "best_top1": top1 + 1.0, "best_top5": 100.0, "best_lr": 1e-3,
            "best_wd": 0.01, "heads": 1, "epochs": 5, "num_train": 100, "num_test": 40, "num_classes": 20,
            "chance": 5.0, "trained_encoder": "target_encoder"}


def _rows():
    rows = []
    for regime, table in (("ucf", SINGLE), ("mixed", MIXED)):
        for variant, seeds in table.items():
            for seed, top1 in seeds.items():
                rows.append(_row(variant, regime, seed, "synth-ucf", "paper_attentive", top1, "question"))
                rows.append(_row(variant, regime, seed, "synth-in", "linear", top1 / 2, "appearance"))
                rows.append(_row(variant, regime, seed, "synth-diving", "paper_attentive", top1 / 3, "motion"))
    for seed in range(3):
        rows.append(_row("random_init", "", seed, "synth-ucf", "paper_attentive", 10.0 + seed, "question", kind="random"))
    return rows


def test_paired_delta_matches_hand_computation():
    # Differences 3, 0.5, 3: mean 13/6, sample sd sqrt(25/12), standard error 5/6, t(0.975, 2) = 4.302653.
    delta = paired_delta(SINGLE["baseline"], MIXED["baseline"])
    half = 4.302653 * 5 / 6
    assert delta.mean == pytest.approx(13 / 6)
    assert delta.std == pytest.approx(math.sqrt(25 / 12))
    assert delta.low == pytest.approx(13 / 6 - half, abs=1e-5)
    assert delta.high == pytest.approx(13 / 6 + half, abs=1e-5)
    assert not delta.excludes_zero()
    # Only shared seeds pair; one pair has no interval.
    lone = paired_delta({0: 1.0, 1: 2.0}, {1: 5.0})
    assert lone.num_pairs == 1 and lone.mean == 3.0 and math.isnan(lone.low)


def test_report_numbers_and_files(tmp_path):
    rows = _rows()
    write_csv(rows, tmp_path / "results.csv")
    rows = read_csv(tmp_path / "results.csv")  # the report is built from what the CSV holds
    deltas = {d.variant: d.delta for d in regime_deltas(rows)}
    assert list(deltas) == ["baseline", "hw"]
    assert deltas["baseline"].mean == pytest.approx(13 / 6)
    assert deltas["hw"].mean == 0.0 and deltas["hw"].std == 0.0  # identical regimes: a zero-width interval
    # hw - baseline in the UCF-only regime: -1, -1, +1.
    versus = baseline_deltas(rows, "ucf")["hw"]
    assert versus.mean == pytest.approx(-1 / 3)
    record = {"command": "python -m engine.eval.study ...", "scale": "demo", "commit": "abc123", "seeds": [0, 1, 2],
              "machine": {"summary": "test machine"}, "wall_seconds": {"total": 90.0, "train": 60.0, "eval": 30.0},
              "runs": [], "benchmarks": {}, "eval_config": {}, "notes": ["tiny fixture"]}
    report = write_report(rows, record, tmp_path)
    text = report.read_text()
    assert "| baseline | 49.67 ± 2.52 | 51.83 ± 1.61 | +2.17 | [-1.42, +5.75] | 3 | no clear effect |" in text
    assert "| hw | 49.33 ± 1.53 | 49.33 ± 1.53 | +0.00 | [+0.00, +0.00] | 3 |" in text
    assert "random init (reference) | 11.00 ± 1.00" in text
    assert "t-interval of paired same-seed differences" in text
    assert "abc123" in text and "test machine" in text
    for png in ("delta_ucf.png", "tradeoff.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_report_leads_with_trained_against_both_references(tmp_path):
    rows = _rows()
    for seed in range(3):  # pixel baseline 20, 21, 22: the better reference (random init is 10, 11, 12)
        rows.append(_row("pixel_baseline", "", seed, "synth-ucf", "paper_attentive", 20.0 + seed, "question", kind="pixel"))
    write_csv(rows, tmp_path / "results.csv")
    text = write_report(read_csv(tmp_path / "results.csv"), {"seeds": [0, 1, 2]}, tmp_path).read_text()
    learning = text[text.index("## Does pretraining learn here?"):text.index("## The answer")]
    # baseline, UCF-only: 50, 52, 47 -> mean 49.67, sd sqrt(6.3333), half width 4.302653 * sd / sqrt(3) = 6.2515.
    assert "| baseline | UCF-101 only (synth: synth-ucf only) | 49.67 [43.42, 55.92] | 3 | +28.67 |" in learning
    assert "| random init (same architecture, untrained) | — | 11.00 [8.52, 13.48] | 3 | — |" in learning
    assert "| pixel baseline (patch embedding, no blocks) | — | 21.00 [18.52, 23.48] | 3 | — |" in learning


def test_learning_verdict_pairs_the_better_reference_by_seed(tmp_path, capsys):
    """trained − the reference with the higher mean, paired by seed, against a hand computation; the intervals
    of the trained encoder and of each reference decide "apart"; engine.eval.verdict ends with that line."""
    from engine.eval.report import learning_verdicts
    from engine.eval.verdict import main as verdict_main

    trained = {0: 75.0, 1: 78.0, 2: 76.0}
    random_init = {0: 62.0, 1: 63.0, 2: 64.0}
    pixels = {0: 65.0, 1: 62.0, 2: 65.0}  # mean 64.0 beats random init's 63.0: the better reference
    rows = [_row("sigreg_small", "ucf", s, "synth-ucf", "paper_attentive", v, "question") for s, v in trained.items()]
    rows += [_row("random_init", "", s, "synth-ucf", "paper_attentive", v, "question", kind="random")
             for s, v in random_init.items()]
    rows += [_row("pixel_baseline", "", s, "synth-ucf", "paper_attentive", v, "question", kind="pixel")
             for s, v in pixels.items()]
    # Paired with pixels: 75 - 65, 78 - 62, 76 - 65.
    diffs = [10.0, 16.0, 11.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    (line,) = learning_verdicts(rows)
    assert line.startswith("verdict: sigreg_small, ucf regime − pixel baseline on synth-ucf: ")
    assert f"{mean:+.2f} points" in line and f"[{mean - half:+.2f}, {mean + half:+.2f}]" in line
    assert "intervals apart from both references: pretraining helps" in line
    # Trained within a reference's interval: not apart, no clear effect; far below both: apart, "hurts".
    level = [dict(r, top1=r["top1"] - 12.0) if r["kind"] == "trained" else r for r in rows]
    assert learning_verdicts(level)[0].endswith("intervals not apart from both references: no clear effect")
    worse = [dict(r, top1=r["top1"] - 30.0) if r["kind"] == "trained" else r for r in rows]
    assert learning_verdicts(worse)[0].endswith("intervals apart from both references: pretraining hurts")
    write_csv(rows, tmp_path / "results.csv")
    assert verdict_main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    assert verdict_main([str(tmp_path / "nothing")]) == 2
