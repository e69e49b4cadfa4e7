"""The benchmark protocol table: which shard folder and splits, which probes, how long to train them.

Defaults follow the studied paper (docs/paper.md §5): UCF-101 split 1 and Diving-48 with its "attentive
probe" on all tokens; SSv2 twice, as the paper did it (that probe on one mean-pooled token, effectively a
non-linear probe on average-pooled features) and with a real V-JEPA attentive pooler on all tokens;
ImageNet-100 with a linear probe on mean-pooled tokens. Epochs are the same for every encoder; the
paper's 100/50 apply at paper scale, the study's scale may override them for every run alike.
Each synth part stands in for the real benchmark it mirrors, with the same splits and probes; synth-ucf
also trains its probe on a class-balanced subset of its training split (`probe_train_per_class`), so that
pretraining (the whole split) sees far more clips than the probe learns from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq

from .errors import EvalInputError
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
    # Probe training reads only this many samples of each class of `train_split` (None: all of them), the
    # same subset for every encoder and probe seed; pretraining still uses the whole split.
    probe_train_per_class: int | None = None

    def __post_init__(self) -> None:
        if self.probe_train_per_class is not None and self.probe_train_per_class < 1:
            raise ValueError(f"benchmark {self.name}: probe_train_per_class must be >= 1 or None, "
                             f"got {self.probe_train_per_class}")

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
# synth-ucf's 2,520 training clips pretrain; its probe learns from 50 per class (1,000 clips).
_SYNTH_PROBE_TRAIN_PER_CLASS = {"synth-ucf": 50}

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _REAL}
BENCHMARKS.update({
    _SYNTH_NAMES[b.name]: replace(b, name=_SYNTH_NAMES[b.name], folder=_SYNTH_NAMES[b.name], mirrors=b.name,
                                  probe_train_per_class=_SYNTH_PROBE_TRAIN_PER_CLASS.get(_SYNTH_NAMES[b.name]))
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
    if unknown or not names:
        raise EvalInputError(f"--benchmarks: unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)} or a "
                             f"suite {sorted(SUITES)}")
    return [BENCHMARKS[n] for n in names]


def build_hint(shards_root: str | Path, benchmark: Benchmark) -> str:
    """The command that writes the benchmark's shard folder: the synth suite's, or the real dataset's own."""
    if benchmark.mirrors:
        return (f"`python -m shards.build synth --root data/raw --out {shards_root} --scale demo` "
                f"(writes all four synth parts)")
    # A real benchmark's name is the shards.build source that reads its published layout.
    extra = " --ucf-split 1" if benchmark.name == "ucf101" else ""
    return (f"`python -m shards.build {benchmark.name} --root RAW --out {Path(shards_root) / benchmark.folder}{extra}` "
            f"with RAW the dataset in its published layout (`python -m shards.build --help` lists it)")


def benchmark_folder(shards_root: str | Path, benchmark: Benchmark) -> Path:
    folder = Path(shards_root) / benchmark.folder
    for name in ("index.parquet", "manifest.json"):
        if not (folder / name).is_file():
            raise EvalInputError(f"{folder / name}: missing (benchmark {benchmark.name}, --shards {shards_root}); "
                                 f"build it with {build_hint(shards_root, benchmark)}")
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


def _split_rows(folder: Path, benchmark: Benchmark) -> tuple[list[dict], list[dict]]:
    """The index rows of the train and the test split; a split without rows is an EvalInputError."""
    table = pq.read_table(folder / "index.parquet", columns=["key", "split", "shard", "media_ext", "media_offset",
                                                             "media_size", "json_offset", "json_size"])
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == benchmark.train_split]
    test = [r for r in rows if r["split"] == benchmark.test_split]
    for split, chosen in ((benchmark.train_split, train), (benchmark.test_split, test)):
        if not chosen:
            raise EvalInputError(f"{folder}/index.parquet has no rows of split {split!r}; build that split into the "
                                 f"folder with {build_hint(folder.parent, benchmark)}")
    return train, test


def check_splits_disjoint(folder: Path, benchmark: Benchmark) -> dict:
    """Refuse a benchmark whose probe-training split shares a key or a source file with its test split."""
    train, test = _split_rows(folder, benchmark)
    shared_keys = {r["key"] for r in train} & {r["key"] for r in test}
    shared_sources = _sources(folder, train) & _sources(folder, test)
    if shared_keys or shared_sources:
        example = sorted(shared_keys or shared_sources)[0]
        raise EvalInputError(f"{folder}: {benchmark.train_split} and {benchmark.test_split} overlap "
                             f"({len(shared_keys)} keys, {len(shared_sources)} sources, e.g. {example!r}); "
                             f"rebuild the shards from the official split lists")
    return {"train": len(train), "test": len(test), "shared_keys": 0, "shared_sources": 0}


@dataclass(frozen=True)
class CheckedBenchmark:
    """A benchmark whose shard folder passed every check that can run before the encoder is loaded."""

    benchmark: Benchmark
    folder: Path
    split_check: dict
    num_classes: int


def check_benchmark(shards_root: str | Path, benchmark: Benchmark, decode_device: str = "auto") -> CheckedBenchmark:
    """Folder, index, manifest, disjoint splits, and what the loader checks before it decodes (every shard
    present and whole, codecs this machine decodes), and every tar member of both splits (a safe name, the
    member the index row names at its offset): all before any work, as one-line EvalInputErrors."""
    from engine.data import DatasetSpec
    from engine.data.index import check_decodable, load_dataset_index
    from engine.data.loader import resolve_decode_device
    from shards.names import verify_members

    folder = benchmark_folder(shards_root, benchmark)
    train, test = _split_rows(folder, benchmark)  # a missing split first: its error carries the build command
    try:
        device = resolve_decode_device(decode_device)
        for split in (benchmark.train_split, benchmark.test_split):
            check_decodable(load_dataset_index(DatasetSpec(root=str(folder), split=split)), device)
        verify_members(folder, train + test)
    except (FileNotFoundError, ValueError) as error:  # the loader's own one-line input errors
        raise EvalInputError(f"benchmark {benchmark.name}: {error}") from None
    split_check = check_splits_disjoint(folder, benchmark)  # reads every sample's json: shards must be whole
    return CheckedBenchmark(benchmark, folder, split_check, num_classes(folder))
