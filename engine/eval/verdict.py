"""`python -m engine.eval.verdict STUDY_DIR`: does pretraining learn? The trained encoders of a study against
its two references on the question benchmark, as a table, then one verdict line per trained variant and regime
(trained − the better reference, paired by seed, with its 95% interval), then where the learning curve is.

What `make demo` ends with. Everything is read from the study's results.csv (engine.eval.study).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import _learning_section, learning_verdicts
from .results import read_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("study", help="a study's output folder (holding results.csv)")
    parser.add_argument("--curve", default=None, help="the learning curve PNG to point at, if there is one")
    args = parser.parse_args(argv)
    results = Path(args.study) / "results.csv"
    if not results.is_file():
        print(f"error: {results} does not exist; fix: run `python -m engine.eval.study ... --out {args.study}` first",
              file=sys.stderr)
        return 2
    rows = read_csv(results)
    try:
        table = [line for line in _learning_section(rows) if line and not line.startswith("- verdict")]
    except ValueError as error:  # no headline row of a question benchmark (UCF-101 or its stand-in)
        print(f"error: {results}: {error}; fix: include synth-ucf or ucf101 in the study's --benchmarks",
              file=sys.stderr)
        return 2
    print("\n".join(table))
    if args.curve and Path(args.curve).is_file():
        print(f"learning curve: {args.curve} (probe top-1 against the training step, references as bands)")
    verdicts = learning_verdicts(rows)
    print("\n".join(verdicts) if verdicts else "verdict: no reference was evaluated, so none can be given")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
