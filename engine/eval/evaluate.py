"""`python -m engine.eval.evaluate`: probe one exported encoder on a list of benchmarks, optionally over
several probe seeds and beside its two references (random init, pixel baseline), and print the table.

    python -m engine.eval.evaluate runs/demo_ucf_baseline/export --benchmarks synth     # an export folder
    python -m engine.eval.evaluate runs/demo_ucf_baseline/encoder.safetensors --benchmarks synth
    python -m engine.eval.evaluate runs/demo_ucf_baseline/encoder.safetensors --benchmarks synth-ucf \
        --baselines --probe-seeds 3     # + random init and pixel baseline, mean and 95% interval over 3 probe seeds
    ... --low-label 10                  # + each encoder fine-tuned on 10 labelled clips per class (slow: opt-in)

Every table also has a kNN row per benchmark (k = 20, engine/eval/knn.py) from the same cached features.

Results go to `<out>/evals/<run>.json`, `<run>` being the run the export came from (its metadata, else the
folder holding it); when that file holds another export's results, `<run>-<fingerprint>.json`, so two
exports evaluated into one --out never overwrite each other.

The work is engine/eval/encoder_eval.py (one encoder, one probe seed) and engine/eval/probe_seeds.py (seeds
and references); this file only reads the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from .eval_sets import resolve_benchmarks
from .encoder_eval import EvalConfig, limit_cpu_threads, results_file_name
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
    parser.add_argument("export", help="an export folder (runs/<run>/export) or runs/<run>/encoder.safetensors")
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
    out = Path(args.out)
    try:
        names = tuple(b.name for b in resolve_benchmarks(args.benchmarks))
        source = EncoderSource(name="", kind="run", path=args.export)
        source.check()
        run_name = result_name(source, out / "evals")
        sources = {run_name: dataclasses.replace(source, name=run_name)}
        if args.baselines:
            seed = args.baseline_seed if args.baseline_seed is not None else run_seed(export_folder(args.export))
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


def export_folder(export: str | Path) -> Path:
    """The folder an export lives in: an export folder itself, or the folder holding a .safetensors file."""
    export = Path(export)
    return export if export.is_dir() else export.parent


def result_name(source: EncoderSource, results_dir: Path) -> str:
    """The row and results-file name of an export: the run it came from (its metadata's `run`, else the name
    of its folder), as a plain file name; `<that>-<fingerprint>` when `<that>.json` in `results_dir` holds
    the results of other weights from another path (results of the same weights or the same path are reused
    or refreshed, as before)."""
    from engine.export import read_metadata

    run = read_metadata(source.weights_path()).get("run")
    if not (isinstance(run, str) and run.strip()):
        run = export_folder(source.path).resolve().name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", run).lstrip(".") or "export"  # metadata is not a path to follow
    fingerprint = source.fingerprint()
    try:
        stored = json.loads((results_dir / results_file_name(base, 0)).read_text(encoding="utf-8"))
        owner = Path(stored["encoder"]["path"]).resolve()
        same = stored.get("fingerprint") == fingerprint or owner == Path(source.path).resolve()
    except FileNotFoundError:
        same = True  # nobody's results yet
    except (OSError, ValueError, KeyError, TypeError):
        same = False  # unreadable: not ours to overwrite
    return base if same else f"{base}-{fingerprint[:8]}"


def run_seed(folder: Path) -> int:
    """run.seed of the recipe.yaml beside the export (the seed its encoder was initialised with), 0 without
    one; a recipe that is not plain YAML data is one EvalInputError line (it is read, never executed)."""
    import yaml

    recipe = folder / "recipe.yaml"
    if not recipe.is_file():
        return 0
    fix = "fix: correct or remove that recipe.yaml, or pass --baseline-seed N"
    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise EvalInputError(f"{recipe}:{where} not a plain YAML recipe ({problem}); {fix}") from None
    run = data.get("run") if isinstance(data, dict) else data  # None: an empty file
    seed = 0 if run is None else run.get("seed", 0) if isinstance(run, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EvalInputError(f"{recipe}: run.seed is not an integer ({seed!r}); {fix}")
    return seed


if __name__ == "__main__":
    raise SystemExit(main())
