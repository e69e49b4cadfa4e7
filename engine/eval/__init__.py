"""Frozen evaluation and the study runner.

    features.py     fp16 feature extraction and its on-disk cache (clips x views)
    clips.py        evaluation clips from engine.data's eval mode
    encoders.py     a run's trained encoder export, or a random-init or pixel-baseline reference
    pixel_baseline.py  the random patch embedding without blocks (what raw pixels give a probe)
    probes.py       attentive (V-JEPA), the paper's CLS probe, linear
    probe_train.py  multi-head lr x wd sweep trained in one loop, top-1 / top-5
    knn.py          the kNN probe (k = 20, DINO's weighted vote) on the same cached features, beside the probes
    eval_sets.py    the evaluation datasets (benchmarks) with their probe protocols; the split-overlap check
    encoder_eval.py one encoder on a list of benchmarks, one probe seed (resumable)
    evaluate.py     `python -m engine.eval.evaluate <export>`: the command over encoder_eval and probe_seeds
    probe_seeds.py  an encoder over several probe seeds (mean, 95% interval) beside its two references
    learning_curve.py  `python -m engine.eval.learning_curve runs/<run>`: checkpoints probed vs steps
    runs.py         the study's pretraining runs and training what is missing
    stats.py        paired same-seed differences and their t-interval; the interval of a mean
    results.py      results.csv and the summaries the report is built from
    report.py       REPORT.md;  plots.py  the two figures
    study.py        `python -m engine.eval.study ...`: all of the above in one command
"""
