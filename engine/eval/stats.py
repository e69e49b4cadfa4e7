"""Paired differences over pretraining seeds and their Student-t confidence interval.

The study compares two conditions that share a seed (mixed vs single regime of one variant; a variant vs
the baseline of the same regime and seed). Pairing by seed removes the seed's shared part (the same
initial weights and data order start both runs), so the interval is the t-interval of the per-seed
differences d_s = b_s - a_s: mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n), with sd the n-1 sample
standard deviation. With one seed there is no interval (reported as NaN).

Repeated measurements of one encoder (probe seeds) are not paired with anything: `mean_interval` gives
the t-interval of their mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

INTERVAL_METHOD = "95% t-interval of paired same-seed differences (n-1 dof)"


@dataclass(frozen=True)
class PairedDelta:
    """Mean of b - a over the seeds both conditions have, with its t-interval."""

    mean: float
    low: float  # NaN when fewer than two seeds are paired
    high: float
    num_pairs: int
    std: float  # sample standard deviation of the differences (NaN below two pairs)
    seeds: tuple[int, ...]
    differences: tuple[float, ...]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def excludes_zero(self) -> bool:
        return self.num_pairs >= 2 and (self.low > 0.0 or self.high < 0.0)


def t_quantile(probability: float, dof: int) -> float:
    """Quantile of Student's t distribution (scipy, which scikit-learn already brings in)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_delta(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> PairedDelta:
    """Δ = b - a paired by seed; seeds present in only one condition are ignored."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        nan = float("nan")
        return PairedDelta(nan, nan, nan, 0, nan, (), ())
    differences = tuple(float(b[s]) - float(a[s]) for s in seeds)
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        nan = float("nan")
        return PairedDelta(mean, nan, nan, n, nan, seeds, differences)
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return PairedDelta(mean, mean - half, mean + half, n, std, seeds, differences)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and n-1 sample standard deviation (NaN std below two values)."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class MeanInterval:
    """Mean of repeated measurements (e.g. one encoder probed with several probe seeds) and its t-interval."""

    mean: float
    low: float  # NaN below two values
    high: float
    values: tuple[float, ...]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def mean_interval(values: list[float], confidence: float = 0.95) -> MeanInterval:
    """Student-t interval of the mean: mean +- t_{(1+c)/2, n-1} * sd / sqrt(n), sd with n-1 dof."""
    mean, std = mean_and_std(list(values))
    if len(values) < 2:
        return MeanInterval(mean, float("nan"), float("nan"), tuple(values))
    half = t_quantile(0.5 + confidence / 2.0, len(values) - 1) * std / math.sqrt(len(values))
    return MeanInterval(mean, mean - half, mean + half, tuple(float(v) for v in values))
