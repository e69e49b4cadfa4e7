"""The benchmark protocol table: which shard folder and splits, which probes, how long to train them.

Defaults follow the studied paper (paper-spec §5): UCF-101 split 1 and Diving-48 with its "attentive
probe" on all tokens; SSv2 twice, as the paper did it (that probe on one mean-pooled token, effectively a
non-linear probe on average-pooled features) and with a real V-JEPA attentive pooler on all tokens;
ImageNet-100 with a linear probe on mean-pooled tokens. Epochs are the same for every encoder; the
paper's 100/50 apply at paper scale, the study's scale may override them for every run alike.
Each synth part stands in for the real benchmark it mirrors, with the same splits and probes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq

from .features import POOLINGS
from .probes import ProbeArch


@dataclass(frozen=True)
class ProbeProtocol:
    """One probe of a benchmark: its architecture and what it reads from the cached tokens."""

    name: str  # column suffix in results, e.g. "paper_attentive" or "attentive_tokens"
    arch: ProbeArch  # probe architecture
    pooling: str  # "tokens": all tokens; "mean": the mean-pooled token only
    note: str = ""  # one line for the report

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"probe {self.name}: pooling {self.pooling!r} is unknown; use one of {POOLINGS}")


@dataclass(frozen=True)
class Benchmark:
    """One frozen-evaluation benchmark."""

    name: str  # short name used in results.csv and the report
    folder: str  # shard folder name under the shards root (written by `python -m shards.build`)
    train_split: str  # split the probe trains on
    test_split: str  # official split the probe is scored on
    probes: tuple[ProbeProtocol, ...]  # the first is the benchmark's headline probe
    epochs: int  # probe epochs at paper scale (the paper: 100, ImageNet-100 50)
    batch_size: int  # probe batch (the paper: 16 for the attentive probes, 256 for the linear one)
    axis: str  # "question" (UCF-101), "motion" or "appearance": where it sits in the trade-off plot
    mirrors: str = ""  # for a synth part: the real benchmark it stands in for

    @property
    def headline(self) -> ProbeProtocol:
        return self.probes[0]


PAPER_ATTENTIVE_TOKENS = ProbeProtocol(
    "paper_attentive", ProbeArch(kind="paper_attentive", num_heads=8), "tokens",
    "the paper's probe (learned CLS + one MHA layer, residual, LayerNorm, Linear) on all tokens")
PAPER_ATTENTIVE_MEAN = ProbeProtocol(
    "paper_attentive_mean", ProbeArch(kind="paper_attentive", num_heads=8), "mean",
    "the paper's SSv2 protocol: its probe on one mean-pooled token (a non-linear probe on pooled features)")
VJEPA_ATTENTIVE = ProbeProtocol(
    "attentive", ProbeArch(kind="attentive", num_heads=8, num_queries=1), "tokens",
    "V-JEPA attentive pooler: a learned query cross-attends to all tokens, MLP, Linear")
LINEAR_MEAN = ProbeProtocol(
    "linear", ProbeArch(kind="linear"), "mean", "Linear on mean-pooled tokens (the paper's ImageNet-100 protocol)")

_REAL = (
    Benchmark("ucf101", "ucf101", "train", "test", (PAPER_ATTENTIVE_TOKENS,), 100, 16, "question"),
    Benchmark("diving48", "diving48", "train", "test", (PAPER_ATTENTIVE_TOKENS,), 100, 16, "motion"),
    Benchmark("ssv2", "ssv2", "train", "val", (PAPER_ATTENTIVE_MEAN, VJEPA_ATTENTIVE), 100, 16, "motion"),
    Benchmark("imagenet100", "imagenet100", "train", "val", (LINEAR_MEAN,), 50, 256, "appearance"),
)
_SYNTH_NAMES = {"ucf101": "synth-ucf", "diving48": "synth-diving", "ssv2": "synth-ssv2", "imagenet100": "synth-in"}

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _REAL}
BENCHMARKS.update({
    _SYNTH_NAMES[b.name]: replace(b, name=_SYNTH_NAMES[b.name], folder=_SYNTH_NAMES[b.name], mirrors=b.name)
    for b in _REAL
})
SUITES: dict[str, tuple[str, ...]] = {
    "real": ("ucf101", "diving48", "ssv2", "imagenet100"),
    "synth": ("synth-ucf", "synth-diving", "synth-ssv2", "synth-in"),
}


def resolve_benchmarks(names: str | list[str]) -> list[Benchmark]:
    """'synth', 'real' or a comma-separated list of benchmark names -> Benchmark objects."""
    if isinstance(names, str):
        names = list(SUITES[names]) if names in SUITES else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)} or a suite {sorted(SUITES)}")
    return [BENCHMARKS[n] for n in names]


def benchmark_folder(shards_root: str | Path, benchmark: Benchmark) -> Path:
    folder = Path(shards_root) / benchmark.folder
    if not (folder / "index.parquet").exists():
        raise FileNotFoundError(f"{folder}/index.parquet: missing; build it with `python -m shards.build` "
                                f"(synth: `python -m shards.build synth --root data/raw --out {shards_root} --scale demo`)")
    return folder


def num_classes(folder: Path) -> int:
    """Class count from the shard folder's manifest.json."""
    return len(json.loads((folder / "manifest.json").read_text())["classes"])


def _sources(folder: Path, rows: list[dict]) -> set[str]:
    """The `source` of each sample, read from its json member at the offsets the index records."""
    sources: set[str] = set()
    handles: dict[str, object] = {}
    try:
        for row in rows:
            handle = handles.get(row["shard"])
            if handle is None:
                handle = handles[row["shard"]] = open(folder / row["shard"], "rb")
            handle.seek(row["json_offset"])
            sources.add(json.loads(handle.read(row["json_size"]))["source"])
    finally:
        for handle in handles.values():
            handle.close()
    return sources


def check_splits_disjoint(folder: Path, benchmark: Benchmark) -> dict:
    """Refuse a benchmark whose probe-training split shares a key or a source file with its test split."""
    table = pq.read_table(folder / "index.parquet", columns=["key", "split", "shard", "json_offset", "json_size"])
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == benchmark.train_split]
    test = [r for r in rows if r["split"] == benchmark.test_split]
    for split, chosen in ((benchmark.train_split, train), (benchmark.test_split, test)):
        if not chosen:
            raise ValueError(f"{folder}/index.parquet has no rows of split {split!r}; build that split into the folder")
    shared_keys = {r["key"] for r in train} & {r["key"] for r in test}
    shared_sources = _sources(folder, train) & _sources(folder, test)
    if shared_keys or shared_sources:
        example = sorted(shared_keys or shared_sources)[0]
        raise ValueError(f"{folder}: {benchmark.train_split} and {benchmark.test_split} overlap "
                         f"({len(shared_keys)} keys, {len(shared_sources)} sources, e.g. {example!r}); "
                         f"rebuild the shards from the official split lists")
    return {"train": len(train), "test": len(test), "shared_keys": 0, "shared_sources": 0}
