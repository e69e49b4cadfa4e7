"""Frozen evaluation and the study runner.

    features.py     fp16 feature extraction and its on-disk cache (clips x views)
    clips.py        evaluation clips from engine.data's eval mode
    encoders.py     a run's trained encoder export, or a random-init reference
    probes.py       attentive (V-JEPA), the paper's CLS probe, linear
    probe_train.py  multi-head lr x wd sweep trained in one loop, top-1 / top-5
    benchmarks.py   the benchmark protocol table and the split-overlap check
    evaluate.py     one encoder on a list of benchmarks (resumable)
    runs.py         the study's pretraining runs and training what is missing
    stats.py        paired same-seed differences and their t-interval
    results.py      results.csv and the summaries the report is built from
    report.py       REPORT.md;  plots.py  the two figures
    study.py        `python -m engine.eval.study ...`: all of the above in one command
"""
