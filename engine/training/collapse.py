"""The collapse alarm: four statistics of the target features of the batch being trained on, every N steps.

JEPA training can lower its loss by making the target features say less (issue 12: on the demo recipe
the tokens of a clip drift toward the clip's average token, and the encoder ends below random init).
The step already computes the targets h (engine.jepa: per-level LayerNorm of the target encoder's
output, [B, N, levels * D]); the trainer asks it to keep them on a measuring step, and this module
reduces their last level (the block the frozen evaluation reads by default) to:

    collapse.rank           token effective rank (RankMe): exp of the entropy of the normalised singular
                            values of the [B*N, D] token matrix, centred on the batch's mean token, so a
                            direction shared by every token (a LayerNormed ViT has a large one) does not
                            count as spread; from 0 (one point) to D
    collapse.within_share   mean over clips of the within-clip token variance / the total token variance
                            of the batch: 0 when every token of a clip is that clip's average token
    collapse.pooled_cosine  mean pairwise cosine (off the diagonal) of the clips' mean-pooled features:
                            1 when every clip looks alike (global collapse)
    collapse.feature_std    mean over the D dimensions of the tokens' standard deviation: falls when every
                            token nears one common vector, which the rank and the within-clip share, being
                            blind to scale, read off the residual spread and miss

The rule (recipe section `collapse:`, every key a recipe key):
  - reference: the mean of the measurements at each of the first `reference_steps` steps (0-based 0..4 by
    default), taken from the random-init target (warmup barely moves it in a few steps). One batch is not
    enough: on the demo recipe's random-init target, 8-clip batches gave within-clip shares of 0.15-0.38.
  - value: the mean of the last `window` measurements (every `every` steps after the reference).
  - a WARNING is logged when the value of the rank, the within-clip share or the feature std falls below
    `min_fraction` of its reference, or when the pooled cosine rises above `max_pooled_cosine` (an absolute
    bound: the random-init value is near 0, -0.1 to 0.4 per batch on the demo data).
  - once per crossing: a condition warns when it becomes true and again only after it has recovered.
The alarm's state travels in the checkpoint, so a resumed run keeps its random-init reference.

A measurement of the forward at 0-based step s lands in the metrics.csv row of step s+1 (the rows count
finished steps), with its cost in `time.collapse`. Rank 0 measures its first micro-batch only: the
statistics are a monitor, not a gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.fields import at_least, between, check_fields, field_doc

# Singular values below this fraction of the (uncentred) token matrix's norm are rounding, not spread:
# without the cut, the fp64 residue of identical tokens would read as a full-rank cloud.
RELATIVE_SPREAD_FLOOR = 1e-6

COLUMNS = ("collapse.rank", "collapse.within_share", "collapse.pooled_cosine", "collapse.feature_std")
RELATIVE_COLUMNS = ("collapse.rank", "collapse.within_share", "collapse.feature_std")  # warned on below a fraction


@dataclass
class CollapseConfig:
    """The collapse alarm: target-feature statistics every N steps, warned on against their random-init values."""

    every: int = field_doc(10, "Measure every N steps (rank 0's first micro-batch); 0 = never. At 10, 0.2% of a "
                               "demo run's time (7 ms a measurement, 1.7% of a step, on the 2-core CPU).",
                           valid=at_least(0))
    reference_steps: int = field_doc(5, "Also measure each of the first N steps; their mean is the random-init "
                                        "reference (warmup barely moves the target in N steps).",
                                     valid=at_least(1))
    window: int = field_doc(5, "Compare the mean of the last N measurements with the thresholds (one batch's "
                               "values vary up to 2.6x at random init).",
                            valid=at_least(1))
    min_fraction: float = field_doc(0.5, "Warn when the token effective rank, within-clip variance share or "
                                         "per-dimension std falls below this fraction of its random-init value.",
                                    valid=between(0.0, 1.0, low_open=True, high_open=True))
    max_pooled_cosine: float = field_doc(0.9, "Warn when the mean pairwise cosine of the clips' mean-pooled "
                                              "target features rises above this (global collapse).",
                                         valid=between(-1.0, 1.0, low_open=True))

    def __post_init__(self):
        check_fields(self)


@torch.no_grad()
def collapse_metrics(tokens: Tensor) -> dict[str, float]:
    """tokens [B, N, D] (one feature level) -> the four statistics, keyed by their metrics.csv column.

    Reduced in fp64: the rank's spread floor must sit far above the arithmetic's rounding."""
    if tokens.ndim != 3 or tokens.shape[1] < 1:
        raise ValueError(f"collapse_metrics takes tokens [B, N, D], got shape {tuple(tokens.shape)}")
    x = tokens.detach().double()
    if not torch.isfinite(x).all():  # a diverged target: the loss guard handles it; the monitor must not raise
        return {column: float("nan") for column in COLUMNS}
    clips, per_clip, width = x.shape
    flat = x.reshape(clips * per_clip, width)
    centred = flat - flat.mean(dim=0)
    total = centred.pow(2).sum(dim=1).mean()
    within = (x - x.mean(dim=1, keepdim=True)).pow(2).sum(dim=2).mean()
    # Singular values of the centred tokens from their D x D Gram matrix: D is small next to B*N.
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).clamp_min(0.0)
    singular = eigenvalues.sqrt()
    singular = singular[singular > RELATIVE_SPREAD_FLOOR * flat.norm()]
    if singular.numel():
        share = singular / singular.sum()
        rank = math.exp(float(-(share * share.log()).sum()))
    else:
        rank = 0.0
    pooled = torch.nn.functional.normalize(x.mean(dim=1), dim=1)  # [B, D]
    if clips > 1:
        cosine = pooled @ pooled.T
        pooled_cosine = float((cosine.sum() - cosine.diagonal().sum()) / (clips * (clips - 1)))
    else:
        pooled_cosine = float("nan")  # one clip has no pair
    tiny = torch.finfo(torch.float64).tiny
    return {
        "collapse.rank": rank,
        "collapse.within_share": float(within / total) if total > tiny else 0.0,
        "collapse.pooled_cosine": pooled_cosine,
        "collapse.feature_std": float(flat.std(dim=0, unbiased=False).mean()),
    }


def last_level(targets: Tensor, level_width: int) -> Tensor:
    """The last `level_width` channels of concatenated per-level targets [B, N, L*D] -> [B, N, D]."""
    if targets.shape[-1] % level_width:
        raise ValueError(f"target width {targets.shape[-1]} is not a multiple of the level width {level_width}")
    return targets[..., -level_width:]


class CollapseAlarm:
    """Holds the random-init reference, the recent measurements and the conditions now crossed; `check`
    records a measurement and returns the warnings of conditions crossed by it."""

    def __init__(self, cfg: CollapseConfig):
        self.cfg = cfg
        self.reference_samples: list[dict[str, float]] = []
        self.recent: list[dict[str, float]] = []  # the last `window` measurements
        self.active: set[str] = set()
        self.fired: list[str] = []  # every warning of this run, for the summary

    @property
    def reference(self) -> dict[str, float] | None:
        """Mean of the first `reference_steps` measurements (the random-init target), once all are in."""
        if len(self.reference_samples) < self.cfg.reference_steps:
            return None
        return _mean(self.reference_samples)

    def due(self, step: int) -> bool:
        """Whether 0-based step `step` is measured: each of the first `reference_steps`, then every `every`."""
        return self.cfg.every > 0 and (step < self.cfg.reference_steps or step % self.cfg.every == 0)

    def thresholds(self) -> dict[str, tuple[str, float]]:
        """metrics column -> ("below" | "above", bound); empty before the reference is complete."""
        reference = self.reference
        if reference is None:
            return {}
        bounds = {column: ("below", self.cfg.min_fraction * reference[column]) for column in RELATIVE_COLUMNS}
        bounds["collapse.pooled_cosine"] = ("above", self.cfg.max_pooled_cosine)
        return bounds

    def check(self, step: int, stats: dict[str, float]) -> list[str]:
        """Record one measurement (`step` as metrics.csv numbers it); the warnings of conditions crossed now."""
        if self.reference is None:
            self.reference_samples.append(dict(stats))
        self.recent = (self.recent + [dict(stats)])[-self.cfg.window:]
        smoothed = _mean(self.recent)
        warnings = []
        for column, (side, bound) in self.thresholds().items():
            value = smoothed[column]
            crossed = value < bound if side == "below" else value > bound
            if not crossed:
                self.active.discard(column)
                continue
            if column in self.active:
                continue
            self.active.add(column)
            rule = (f"below {self.cfg.min_fraction:g} x its random-init value {self.reference[column]:.4g} "
                    f"(collapse.min_fraction)" if side == "below" else
                    f"above collapse.max_pooled_cosine={bound:g}")
            warnings.append(f"WARNING: collapse alarm at step {step}: {column} = {value:.4g} (mean of the last "
                            f"{len(self.recent)} measurements) is {rule}")
        self.fired += warnings
        return warnings

    def summary(self) -> str:
        if self.cfg.every == 0:
            return "collapse alarm: off (collapse.every = 0)"
        if not self.fired:
            return "collapse alarm: quiet"
        return f"collapse alarm: {len(self.fired)} warning(s), first: {self.fired[0].removeprefix('WARNING: ')}"

    def state_dict(self) -> dict:
        return {"reference_samples": self.reference_samples, "recent": self.recent, "active": sorted(self.active),
                "fired": list(self.fired)}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a checkpoint's state; None (a checkpoint from before the alarm) starts afresh."""
        if not state:
            return
        self.reference_samples = [dict(s) for s in state["reference_samples"]]
        self.recent = [dict(s) for s in state["recent"]]
        self.active = set(state["active"])
        self.fired = list(state["fired"])


def _mean(samples: list[dict[str, float]]) -> dict[str, float]:
    return {column: sum(s[column] for s in samples) / len(samples) for column in samples[0]}


def plot_collapse(metrics_csv, out_png, thresholds: dict[str, tuple[str, float]] | None = None, window: int = 1):
    """The four statistics against the step, one panel each: every measurement, the mean of the last
    `window` (what the alarm compares) and the alarm's bound where known; None without any measurement."""
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.training.metrics import read_metrics

    rows = read_metrics(metrics_csv)
    if not any(column in row for row in rows for column in COLUMNS):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.6), dpi=110, sharex=True)
    for ax, column in zip(axes.flat, COLUMNS):
        points = [(row["step"], row[column]) for row in rows if column in row and math.isfinite(row[column])]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker=".", linewidth=0.8, alpha=0.5, label="measured")
            smoothed = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                        for i in range(len(values))]
            ax.plot(steps, smoothed, linewidth=1.6, color="tab:blue", label=f"mean of last {window}")
        side_bound = (thresholds or {}).get(column)
        if side_bound is not None:
            ax.axhline(side_bound[1], color="tab:red", linestyle="--", linewidth=0.9,
                       label=f"alarm when {side_bound[0]}")
        ax.legend(fontsize=7)
        ax.set_title(column, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"{Path(metrics_csv).parent.name}: target features of the batch (first points: the "
                 f"random-init reference)", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
