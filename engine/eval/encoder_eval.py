"""Frozen evaluation of one encoder on a list of benchmarks: check splits, extract once, train the probes.

Results go to `<results_dir>/<encoder name>.json` (`<name>.probe_seed<k>.json` for probe seed k > 0), one
entry per benchmark; an entry made with the same encoder weights and the same EvalConfig is reused, so an
interrupted study re-runs only what is missing.
Feature caches live under `<cache_root>/<weights fingerprint>/` and are shared by every probe. The command
line over this module (and over several probe seeds and the references) is engine/eval/evaluate.py.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from engine.fields import field_doc

from .eval_sets import SUITES, Benchmark, CheckedBenchmark, ProbeProtocol, check_benchmark, resolve_benchmarks
from .clips import encoder_forward, eval_batches
from .encoders import EncoderSource
from .errors import EvalInputError
from .features import CachedFeatures, ExtractionSpec, cache_is_complete, extract_to_cache, load_cache
from .knn import KnnConfig, knn_probe
from .probe_train import ProbeTrainConfig, train_probe_sweep

# (folder, split, spec, batch_size) -> (batches, number of batches); the real loader by default.
BatchSource = Callable[[Path, str, ExtractionSpec, int], tuple[Iterator[dict], int]]


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings shared by every encoder of a study (so every row is probed alike)."""

    benchmarks: tuple[str, ...] = field_doc(SUITES["synth"], "Benchmark names (see engine/eval/eval_sets.py).")
    probe_epochs: int | None = field_doc(
        None, "Epochs for every probe; None = each benchmark's paper value (100 / 50).")
    probe_batch_size: int | None = field_doc(
        None, "Probe batch for every benchmark; None = each benchmark's paper value.")
    lr: float = field_doc(1e-3, "Protocol head learning rate (the paper).")
    weight_decay: float = field_doc(0.01, "Protocol head weight decay (the paper).")
    sweep_lrs: tuple[float, ...] = field_doc((), "Extra lrs of the multi-head sweep, e.g. (5e-3, 3e-4, 1e-4).")
    sweep_wds: tuple[float, ...] = field_doc((), "Extra weight decays of the sweep, e.g. (0.1, 0.4).")
    num_clips: int = field_doc(1, "Temporal clips per video (the paper: 1).")
    num_views: int = field_doc(1, "Spatial views per clip (the paper: 1).")
    extract_batch_size: int = field_doc(16, "Clips per encoder forward during extraction.")
    probe_seed: int = field_doc(0, "Seed of the probe heads and batch order.")
    skip_probes: tuple[str, ...] = field_doc(
        (), "'benchmark:probe' pairs not to train, e.g. ('synth-ssv2:attentive',).")
    knn_k: int = field_doc(20, "Neighbours of the kNN probe reported beside the trained probes (engine/eval/knn.py).")
    knn_temperature: float = field_doc(0.07, "τ of the kNN probe's exp(cosine / τ) vote weights (DINO's).")

    def knn(self) -> KnnConfig:
        return KnnConfig(k=self.knn_k, temperature=self.knn_temperature)

    def probe_config(self, benchmark: Benchmark) -> ProbeTrainConfig:
        return ProbeTrainConfig(epochs=self.probe_epochs or benchmark.epochs,
                                batch_size=self.probe_batch_size or benchmark.batch_size,
                                lr=self.lr, weight_decay=self.weight_decay, sweep_lrs=self.sweep_lrs,
                                sweep_wds=self.sweep_wds, seed=self.probe_seed)

    def active_probes(self, benchmark: Benchmark) -> list[ProbeProtocol]:
        return [p for p in benchmark.probes if f"{benchmark.name}:{p.name}" not in self.skip_probes]

    def pooling(self, benchmark: Benchmark) -> str:
        """Cache all tokens only when a probe that will run reads them (real SSv2 tokens take ~400 GB)."""
        return "tokens" if any(p.pooling == "tokens" for p in self.active_probes(benchmark)) else "mean"

    def key(self, benchmark: Benchmark) -> dict:
        """What must match for a stored result of this benchmark to be reused."""
        probes = [asdict(p) for p in self.active_probes(benchmark)]
        key = {"probe": asdict(self.probe_config(benchmark)), "clips": self.num_clips, "views": self.num_views,
               "probes": probes, "folder": benchmark.folder, "splits": [benchmark.train_split, benchmark.test_split],
               "knn": asdict(self.knn())}
        if benchmark.probe_train_per_class is not None:  # absent otherwise: older results stay reusable
            key["probe_train_per_class"] = benchmark.probe_train_per_class
        return json.loads(json.dumps(key))  # as stored: tuples become lists, so stored keys compare equal


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _real_loader(folder: Path, split: str, spec: ExtractionSpec, batch_size: int):
    return eval_batches(folder, split, spec, batch_size=batch_size)


def pool_for_probe(cached: CachedFeatures, pooling: str) -> CachedFeatures:
    """Mean-pooled view of a token cache for probes that read one pooled token."""
    if pooling == "tokens" or cached.features.shape[2] == 1:
        return cached
    pooled = cached.features.float().mean(dim=2, keepdim=True).to(torch.float16)  # [n, V, 1, D]
    return CachedFeatures(features=pooled, labels=cached.labels, keys=cached.keys, meta=cached.meta)


def probe_train_subset(cached: CachedFeatures, per_class: int | None) -> CachedFeatures:
    """The first `per_class` samples of each class in the order of sha256(key) (all when None), kept in cache
    order: a class-balanced subset that depends on the keys alone, so every encoder and probe seed gets it."""
    if per_class is None:
        return cached
    index = torch.tensor(balanced_subset(cached.keys, cached.labels.tolist(), per_class), dtype=torch.long)
    return CachedFeatures(features=cached.features[index], labels=cached.labels[index],
                          keys=[cached.keys[i] for i in index.tolist()], meta=cached.meta)


def balanced_subset(keys: list[str], labels: list[int], per_class: int) -> list[int]:
    """Indices (ascending) of the first `per_class` samples of each class in the order of sha256(key): the
    subset rule of probe_train_subset and of low-label fine-tuning (engine/eval/finetune.py)."""
    taken: Counter = Counter()
    chosen = []
    for i in sorted(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest()):
        label = int(labels[i])
        if taken[label] < per_class:
            taken[label] += 1
            chosen.append(i)
    return sorted(chosen)


def evaluate_encoder(
    source: EncoderSource,
    config: EvalConfig,
    shards_root: str | Path,
    cache_root: str | Path,
    results_dir: str | Path,
    batch_source: BatchSource = _real_loader,
    device: torch.device | None = None,
) -> dict:
    """Evaluate `source` on every benchmark of `config`; returns (and stores) {benchmark: entry}."""
    device = device or default_device()
    results_path = Path(results_dir) / results_file_name(source.name, config.probe_seed)
    source.check()
    fingerprint = source.fingerprint()
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}
    if stored.get("fingerprint") != fingerprint:
        stored = {"fingerprint": fingerprint, "encoder": source.describe(), "benchmarks": {}}
    todo = []
    for benchmark in resolve_benchmarks(list(config.benchmarks)):
        key = config.key(benchmark)
        previous = stored["benchmarks"].get(benchmark.name)
        if previous is None or previous.get("key") != key:
            todo.append((benchmark, key))
    # Every benchmark's inputs are checked before the first extraction: a folder missing for the last
    # benchmark must stop the evaluation now, not after the features of the first.
    if todo:  # an fsspec URL root: local copies of the benchmark folders (engine/eval/remote.py)
        from .remote import local_shards_root
        shards_root = local_shards_root(shards_root, [benchmark.folder for benchmark, _ in todo])
    checked = [(check_benchmark(shards_root, benchmark), key) for benchmark, key in todo]
    encoder = source.load(device) if checked else None
    for inputs, key in checked:
        stored["benchmarks"][inputs.benchmark.name] = _evaluate_benchmark(
            encoder, fingerprint, inputs, config, key, Path(cache_root), batch_source, device, source.name)
        _write_json(results_path, stored)  # after every benchmark, so an interruption loses at most one
    _write_json(results_path, stored)
    return json.loads(results_path.read_text())  # the same form whether computed now or reused


def results_file_name(encoder_name: str, probe_seed: int) -> str:
    """Probe seed 0 keeps the study's `<name>.json`; every other seed has a file of its own, so the result
    of each seed is stored and reused rather than overwriting the others."""
    return f"{encoder_name}.json" if probe_seed == 0 else f"{encoder_name}.probe_seed{probe_seed}.json"


def _evaluate_benchmark(encoder, fingerprint: str, inputs: CheckedBenchmark, config: EvalConfig, key: dict,
                        cache_root: Path, batch_source: BatchSource, device, encoder_name: str) -> dict:
    benchmark, folder = inputs.benchmark, inputs.folder
    split_check, classes = inputs.split_check, inputs.num_classes
    spec = ExtractionSpec(num_frames=encoder.cfg.num_frames, crop_size=encoder.cfg.img_size,
                          num_clips=config.num_clips, num_views=config.num_views, pooling=config.pooling(benchmark))
    caches = {}
    for split in (benchmark.train_split, benchmark.test_split):
        cache_dir = cache_root / fingerprint / benchmark.folder / f"{split}-{spec.pooling}-{spec.num_clips}x{spec.num_views}"
        request = {"encoder": fingerprint, "folder": str(folder.resolve()), "split": split, "spec": asdict(spec)}
        if not cache_is_complete(cache_dir, request):  # building a loader costs seconds: only when needed
            batches, total = batch_source(folder, split, spec, config.extract_batch_size)
            extract_to_cache(encoder_forward(encoder, device), batches, cache_dir, spec, request, total,
                             description=f"{encoder_name} {benchmark.name} {split}")
        caches[split] = load_cache(cache_dir)
    train, test = caches[benchmark.train_split], caches[benchmark.test_split]
    shared = set(train.keys) & set(test.keys)
    if shared:
        raise ValueError(f"{folder}: extracted train and test features share key {sorted(shared)[0]!r}; rebuild the shards")
    train = probe_train_subset(train, benchmark.probe_train_per_class)  # the cache stays whole
    probes = {}
    for protocol in config.active_probes(benchmark):
        result = train_probe_sweep(pool_for_probe(train, protocol.pooling), pool_for_probe(test, protocol.pooling),
                                   protocol.arch, config.probe_config(benchmark), classes,
                                   description=f"{encoder_name} {benchmark.name} {protocol.name}")
        probes[protocol.name] = result.as_dict()
    knn = knn_probe(train, test, classes, config.knn())  # the same features, no training: no seed
    return {"key": key, "split_check": split_check, "num_classes": classes, "probes": probes, "knn": knn,
            "extraction": asdict(spec)}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def limit_cpu_threads() -> None:
    """On a CPU-only machine leave one core to DALI's decode threads, as engine/train.py does: an OpenMP
    team competing with them for 2 busy cores made a probe epoch ~25x slower (issue 7 measurements)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
