"""Low-label fine-tuning: the whole encoder plus a linear head trained on a few labelled clips per class.

Reported beside the attentive probe (which stays the headline), with the kNN probe (engine/eval/knn.py),
because the field accepts "fine-tuned on 10 labels per class" as a reading of "pretraining helps" at small
scale (issue 23): an encoder that learned something useful starts fine-tuning from a better place.

Protocol (`LowLabelConfig`, the same for every encoder of a run):
- labelled clips: `per_class` clips of each class of the probe-training split, chosen by sha256 of the key
  (engine.eval.encoder_eval.balanced_subset, the rule of `probe_train_per_class`), so every encoder and
  seed fine-tunes on the same clips; scored on the whole test split, one centre clip per video;
- model: a copy of the evaluated encoder (the encoder object passed in is never changed), its evaluation
  tokens (`forward_eval`) mean-pooled, then BatchNorm without affine (MAE's linear-probe head: it only
  rescales the pooled channels, so an encoder whose tokens share a large common component is not judged
  by how slowly the head finds the small differences) and a Linear layer;
- AdamW, constant lr: 1e-4 on the encoder, 1e-3 on the head, weight decay 0.05, batch 16, cross-entropy,
  `epochs` passes; top-1 / top-5 after the last epoch;
- seeds: seed s initialises the head and orders the batches; the CLI runs the probe seeds 0..n-1 and
  reports the mean and 95% t-interval, as for the attentive probe;
- the pixel baseline has no blocks: its patch embedding (with the modality vector) and its LayerNorm are
  fine-tuned with the head, the unused blocks get no gradient (`trained_parameters` in the result counts
  what was trained).
Decoded clips (the labelled subset and the test split) are cached once per benchmark and clip size under
`<cache_root>/clips/`, shared by every encoder and seed; results go to `<results_dir>/<encoder>.low_label.json`
and a result with the same weights, benchmark and config is reused.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.fields import above, at_least, check_fields, field_doc

from .encoder_eval import balanced_subset, default_device
from .encoders import EncoderSource
from .eval_sets import Benchmark, benchmark_folder, num_classes, resolve_benchmarks
from .features import ExtractionSpec
from .probes import topk_correct
from .stats import MeanInterval, mean_interval

CLIP_CACHE_FORMAT = 1


@dataclass(frozen=True)
class LowLabelConfig:
    """Low-label fine-tuning settings; all of them are part of a stored result's key."""

    per_class: int = field_doc(10, "Labelled clips of each class (chosen by key hash).", valid=at_least(1))
    epochs: int = field_doc(5, "Passes over the labelled clips (CPU cost: README, evaluation).", valid=at_least(1))
    batch_size: int = field_doc(16, "Clips per step.", valid=at_least(2))
    encoder_lr: float = field_doc(1e-4, "AdamW lr of the encoder's parameters.", valid=above(0))
    head_lr: float = field_doc(1e-3, "AdamW lr of the linear head.", valid=above(0))
    weight_decay: float = field_doc(0.05, "AdamW weight decay of both.", valid=at_least(0))
    eval_batch_size: int = field_doc(64, "Test clips per forward when scoring.", valid=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self, "low_label.")

    @property
    def probe_name(self) -> str:
        """The row's name in the printed table: finetune_10_per_class."""
        return f"finetune_{self.per_class}_per_class"


@dataclass
class Clips:
    """Decoded evaluation clips of one split (or its labelled subset), in the loader's order."""

    video: torch.Tensor  # fp16 [n, C, T, H, W], normalised as the loader gives them
    labels: torch.Tensor  # int64 [n]
    keys: list[str]


# (folder, split, spec, batch_size) -> (batches of {video, label, key}, number of batches): engine.eval.clips
BatchSource = Callable[[Path, str, ExtractionSpec, int], tuple]


def _real_loader(folder: Path, split: str, spec: ExtractionSpec, batch_size: int):
    from .clips import eval_batches

    return eval_batches(folder, split, spec, batch_size=batch_size)


def labelled_keys(folder: Path, split: str, per_class: int) -> set[str]:
    """Keys of the class-balanced subset of `split`, from index.parquet (no decoding)."""
    table = pq.read_table(folder / "index.parquet", columns=["key", "split", "label"]).to_pylist()
    rows = [r for r in table if r["split"] == split]
    keys, labels = [r["key"] for r in rows], [int(r["label"]) for r in rows]
    return {keys[i] for i in balanced_subset(keys, labels, per_class)}


def load_clips(folder: Path, split: str, spec: ExtractionSpec, cache_dir: Path, keep: set[str] | None,
               batch_source: BatchSource) -> Clips:
    """The split's clips whose key is in `keep` (all when None), decoded once into `cache_dir` (fp16
    safetensors + index.json written last, so an interrupted decode is redone)."""
    request = {"format": CLIP_CACHE_FORMAT, "folder": str(folder.resolve()), "split": split, "spec": asdict(spec),
               "keys": None if keep is None else sorted(keep)}
    index_path = cache_dir / "index.json"
    if index_path.is_file() and json.loads(index_path.read_text()).get("request") == request:
        index = json.loads(index_path.read_text())
        tensors = load_file(str(cache_dir / "clips.safetensors"))
        return Clips(tensors["video"], tensors["labels"], index["keys"])
    videos, labels, keys, seen = [], [], [], set()
    batches, _ = batch_source(folder, split, spec, 16)
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            if (keep is None or key in keep) and key not in seen:  # a padded last batch repeats keys
                videos.append(batch["video"][i].to(torch.float16).cpu())
                labels.append(int(batch["label"][i]))
                keys.append(key)
                seen.add(key)
    if not keys:
        raise ValueError(f"{folder}: no clip of split {split!r} was decoded; check the shard folder")
    clips = Clips(torch.stack(videos), torch.tensor(labels, dtype=torch.long), keys)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    save_file({"video": clips.video.contiguous(), "labels": clips.labels}, str(cache_dir / "clips.safetensors"))
    temporary = cache_dir / "index.json.tmp"
    temporary.write_text(json.dumps({"request": request, "keys": keys}))
    os.replace(temporary, index_path)
    return clips


class PooledClassifier(nn.Module):
    """encoder.forward_eval tokens -> mean over tokens -> BatchNorm (no affine) -> Linear."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_eval(video)  # [B, N, D]
        return self.head(self.norm(tokens.mean(dim=1)))  # [B, C]


def finetune(encoder: nn.Module, train: Clips, classes: int, config: LowLabelConfig, seed: int,
             device: torch.device | None = None) -> tuple[PooledClassifier, float]:
    """(a copy of `encoder` with a new head, fine-tuned on `train`; its mean loss over the last epoch).
    `encoder` itself is left as it is: its copy is the one set trainable."""
    device = device or default_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            width = encoder.forward_eval(train.video[:1].float().to(device)).shape[-1]
        model = PooledClassifier(copy.deepcopy(encoder), width, classes).to(device)
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW([
        {"params": model.encoder.parameters(), "lr": config.encoder_lr},
        {"params": [*model.norm.parameters(), *model.head.parameters()], "lr": config.head_lr},
    ], weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train.keys) / config.batch_size)
    model.train()
    last_loss = float("nan")
    for _ in range(config.epochs):
        order = torch.randperm(len(train.keys), generator=generator)
        total, seen = 0.0, 0
        for step in range(steps):
            index = order[step * config.batch_size: (step + 1) * config.batch_size]
            if index.numel() < 2:  # BatchNorm needs two clips; only a last batch of one is dropped
                continue
            loss = F.cross_entropy(model(train.video[index].float().to(device)), train.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * index.numel(), seen + index.numel()
        last_loss = total / max(seen, 1)
    return model.eval(), last_loss


@torch.no_grad()
def score(model: PooledClassifier, test: Clips, batch_size: int, device: torch.device | None = None) -> dict[int, int]:
    """{1: top-1 hits, 5: top-5 hits} of the model on the test clips."""
    device = device or default_device()
    model.eval()
    hits = {1: 0, 5: 0}
    for start in range(0, len(test.keys), batch_size):
        logits = model(test.video[start: start + batch_size].float().to(device))  # [b, C]
        for k, count in topk_correct(logits.cpu(), test.labels[start: start + batch_size]).items():
            hits[k] += count
    return hits


def finetune_and_score(encoder: nn.Module, train: Clips, test: Clips, classes: int, config: LowLabelConfig,
                       seed: int, device: torch.device | None = None) -> dict:
    """One seed's stored result: fine-tune a copy of `encoder` on `train`, top-1 / top-5 (%) on `test`."""
    started = time.perf_counter()
    model, last_loss = finetune(encoder, train, classes, config, seed, device)
    trained = sum(p.numel() for p in model.encoder.parameters() if p.grad is not None)  # the pixel baseline: no blocks
    hits = score(model, test, config.eval_batch_size, device)
    total = max(len(test.keys), 1)
    return {"seed": seed, "top1": 100.0 * hits[1] / total, "top5": 100.0 * hits[5] / total,
            "final_train_loss": last_loss, "num_train": len(train.keys), "num_test": len(test.keys),
            "num_classes": classes, "trained_parameters": trained, "seconds": time.perf_counter() - started}


def results_path(results_dir: str | Path, encoder_name: str) -> Path:
    return Path(results_dir) / f"{encoder_name}.low_label.json"


def evaluate_low_label(source: EncoderSource, benchmarks: tuple[str, ...], config: LowLabelConfig, seeds: int,
                       shards_root: str | Path, cache_root: str | Path, results_dir: str | Path,
                       batch_source: BatchSource | None = None,
                       device: torch.device | None = None) -> dict[tuple[str, str], MeanInterval]:
    """{(benchmark, "finetune_10_per_class"): top-1 over seeds 0..seeds-1}; stored and reused per seed."""
    device = device or default_device()
    batch_source = batch_source or _real_loader
    path = results_path(results_dir, source.name)
    source.check()
    fingerprint = source.fingerprint()
    stored = json.loads(path.read_text()) if path.exists() else {}
    if stored.get("fingerprint") != fingerprint:
        stored = {"fingerprint": fingerprint, "encoder": source.describe(), "benchmarks": {}}
    chosen = resolve_benchmarks(list(benchmarks))
    missing = [b for b in chosen if not _complete(stored, b, config, seeds)]
    if missing:
        from .remote import local_shards_root
        shards_root = local_shards_root(shards_root, [b.folder for b in missing])
    encoder = source.load(device) if missing else None
    for benchmark in missing:
        _run_benchmark(stored, encoder, benchmark, config, seeds, Path(shards_root), Path(cache_root), batch_source,
                       device, path)
    summaries = {}
    for benchmark in chosen:
        runs = stored["benchmarks"][benchmark.name]["seeds"]
        summaries[(benchmark.name, config.probe_name)] = mean_interval([runs[str(s)]["top1"] for s in range(seeds)])
    return summaries


def _key(benchmark: Benchmark, config: LowLabelConfig) -> dict:
    return {**asdict(config), "folder": benchmark.folder, "splits": [benchmark.train_split, benchmark.test_split]}


def _complete(stored: dict, benchmark: Benchmark, config: LowLabelConfig, seeds: int) -> bool:
    entry = stored["benchmarks"].get(benchmark.name)
    return (entry is not None and entry.get("key") == _key(benchmark, config)
            and all(str(s) in entry["seeds"] for s in range(seeds)))


def _run_benchmark(stored: dict, encoder: nn.Module, benchmark: Benchmark, config: LowLabelConfig, seeds: int,
                   shards_root: Path, cache_root: Path, batch_source: BatchSource, device, path: Path) -> None:
    folder = benchmark_folder(shards_root, benchmark)
    classes = num_classes(folder)
    spec = ExtractionSpec(num_frames=encoder.cfg.num_frames, crop_size=encoder.cfg.img_size, pooling="mean")
    clip_root = cache_root / "clips" / benchmark.folder
    size = f"{spec.num_frames}x{spec.crop_size}"
    keep = labelled_keys(folder, benchmark.train_split, config.per_class)
    train = load_clips(folder, benchmark.train_split, spec, clip_root / f"{benchmark.train_split}-{size}-"
                       f"{config.per_class}_per_class", keep, batch_source)
    test = load_clips(folder, benchmark.test_split, spec, clip_root / f"{benchmark.test_split}-{size}-all", None,
                      batch_source)
    key = _key(benchmark, config)
    entry = stored["benchmarks"].get(benchmark.name)
    if entry is None or entry.get("key") != key:
        entry = stored["benchmarks"][benchmark.name] = {"key": key, "seeds": {}}
    for seed in range(seeds):
        if str(seed) not in entry["seeds"]:
            entry["seeds"][str(seed)] = finetune_and_score(encoder, train, test, classes, config, seed, device)
            _write_json(path, stored)  # after every seed, so an interruption loses at most one


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)
