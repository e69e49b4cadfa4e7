"""`python -m engine.eval.evaluate`: probe one exported encoder on a list of benchmarks, optionally over
several probe seeds and beside its two references (random init, pixel baseline), and print the table.

    python -m engine.eval.evaluate runs/demo_ucf_baseline/encoder.safetensors --benchmarks synth
    python -m engine.eval.evaluate runs/demo_ucf_baseline/encoder.safetensors --benchmarks synth-ucf \
        --baselines --probe-seeds 3     # + random init and pixel baseline, mean and 95% interval over 3 probe seeds
    ... --low-label 10                  # + each encoder fine-tuned on 10 labelled clips per class (slow: opt-in)

Every table also has a kNN row per benchmark (k = 20, engine/eval/knn.py) from the same cached features.

The work is engine/eval/encoder_eval.py (one encoder, one probe seed) and engine/eval/probe_seeds.py (seeds
and references); this file only reads the command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .eval_sets import resolve_benchmarks
from .encoder_eval import EvalConfig, limit_cpu_threads
from .encoders import EncoderSource, export_model_config
from .errors import EvalInputError
from .finetune import LowLabelConfig, evaluate_low_label
from .probe_seeds import evaluate_probe_seeds, format_table, reference_sources, write_table_csv


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Frozen-probe evaluation of one exported encoder.")
    parser.add_argument("export", help="runs/<run>/encoder.safetensors")
    parser.add_argument("--benchmarks", default="synth", help="'synth', 'real' or a comma-separated list")
    parser.add_argument("--shards", default="data/shards",
                        help="folder holding the benchmarks' shard folders, or its fsspec URL (s3://, https://, ...)")
    parser.add_argument("--out", default="eval_out", help="results and feature cache folder")
    parser.add_argument("--probe-epochs", type=positive_int, default=None,
                        help="epochs of every probe (default: the paper's)")
    parser.add_argument("--probe-seeds", type=positive_int, default=1,
                        help="probe every encoder with seeds 0..N-1 and print the mean and its 95%% interval")
    parser.add_argument("--baselines", action="store_true",
                        help="also probe the random init and the pixel baseline (patch embedding, no blocks) of "
                             "the export's architecture")
    parser.add_argument("--baseline-seed", type=int, default=None,
                        help="init seed of the baselines (default: run.seed of the recipe.yaml beside the export, "
                             "else 0)")
    parser.add_argument("--low-label", type=positive_int, default=None, metavar="N",
                        help="also fine-tune each encoder (a copy) with a linear head on N labelled clips per class "
                             "and score it on the test split, for every probe seed (engine/eval/finetune.py; off "
                             "by default: it decodes clips and trains the encoder)")
    parser.add_argument("--low-label-epochs", type=positive_int, default=LowLabelConfig.epochs,
                        help="epochs of the low-label fine-tuning (default %(default)s)")
    args = parser.parse_args(argv)
    limit_cpu_threads()
    run_name = Path(args.export).parent.name
    out = Path(args.out)
    try:
        names = tuple(b.name for b in resolve_benchmarks(args.benchmarks))
        sources = {run_name: EncoderSource(name=run_name, kind="run", path=args.export)}
        sources[run_name].check()
        if args.baselines:
            seed = args.baseline_seed if args.baseline_seed is not None else run_seed(Path(args.export).parent)
            references = reference_sources(run_name, export_model_config(args.export), seed)
            sources.update({f"{label} (seed {seed})": source for label, source in references.items()})
        config = EvalConfig(benchmarks=names, probe_epochs=args.probe_epochs)
        rows = {label: evaluate_probe_seeds(source, config, args.probe_seeds, args.shards, out / "features",
                                            out / "evals", with_knn=True)
                for label, source in sources.items()}
        if args.low_label:  # beside the probes: the whole encoder fine-tuned on a few labels
            low_label = LowLabelConfig(per_class=args.low_label, epochs=args.low_label_epochs)
            for label, source in sources.items():
                rows[label].update(evaluate_low_label(source, names, low_label, args.probe_seeds, args.shards,
                                                      out / "features", out / "evals"))
    except EvalInputError as error:  # the user's input: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    write_table_csv(rows, out / "table.csv")
    return 0


def run_seed(run_dir: Path) -> int:
    """run.seed of the run's resolved recipe (the seed its encoder was initialised with), 0 without one."""
    import yaml

    recipe = run_dir / "recipe.yaml"
    if not recipe.is_file():
        return 0
    return int((yaml.safe_load(recipe.read_text(encoding="utf-8")).get("run") or {}).get("seed", 0))


if __name__ == "__main__":
    raise SystemExit(main())
