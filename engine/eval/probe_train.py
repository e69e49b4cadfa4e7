"""Training a sweep of probe heads on cached features in one loop, and scoring them on the test split.

All heads (one per lr x wd pair) see the same batches in the same order; their parameters are disjoint,
so the summed loss gives each head exactly the gradient it would get alone, and one AdamW with one
parameter group per head applies each head's own lr and weight decay. The protocol head (lr 1e-3, wd
0.01 by default) is always part of the sweep and is the number the study reports; the best head is
selected on the test split as V-JEPA does, which is optimistic, and is reported beside it as such.

The paper's protocol: AdamW, constant lr, no augmentation, cross-entropy, top-1 after the last epoch.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engine.fields import field_doc

from .features import CachedFeatures
from .probes import ProbeArch, average_view_probabilities, build_probe, topk_correct


@dataclass(frozen=True)
class ProbeTrainConfig:
    """Optimisation of the probe heads; every run of a study uses the same config."""

    epochs: int = field_doc(20, "Passes over the training features, the same for every encoder.")
    batch_size: int = field_doc(16, "Samples per step (the paper: 16 for the attentive probes).")
    lr: float = field_doc(1e-3, "Learning rate of the protocol head (the paper: 1e-3).")
    weight_decay: float = field_doc(0.01, "AdamW weight decay of the protocol head (the paper: 0.01).")
    sweep_lrs: tuple[float, ...] = field_doc(
        (), "Extra learning rates of the multi-head sweep (empty: protocol head only).")
    sweep_wds: tuple[float, ...] = field_doc((), "Extra weight decays of the sweep, crossed with the learning rates.")
    seed: int = field_doc(0, "Seeds head initialisation and batch order.")
    eval_batch_size: int = field_doc(256, "Samples per forward when scoring.")
    standardize: bool = field_doc(True, "Scale features per channel by the training split's mean/std (see below).")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"ProbeTrainConfig: epochs and batch sizes must be >= 1, got {self}")
        if self.lr <= 0 or self.weight_decay < 0 or any(v <= 0 for v in self.sweep_lrs) or any(v < 0 for v in self.sweep_wds):
            raise ValueError(f"ProbeTrainConfig: learning rates must be > 0 and weight decays >= 0, got {self}")

    def grid(self) -> list[tuple[float, float]]:
        """(lr, wd) of every head; the protocol head first."""
        lrs = sorted({self.lr, *self.sweep_lrs}, reverse=True)
        wds = sorted({self.weight_decay, *self.sweep_wds})
        pairs = [(self.lr, self.weight_decay)]
        pairs += [p for p in itertools.product(lrs, wds) if p != pairs[0]]
        return pairs


@dataclass
class HeadResult:
    """Scores of one head on the test split."""

    lr: float
    weight_decay: float
    top1: float  # percent
    top5: float  # percent
    final_train_loss: float  # mean cross-entropy over the last epoch


@dataclass
class SweepResult:
    """All heads of one probe on one benchmark; heads[0] is the protocol head."""

    arch: dict
    train: dict
    heads: list[HeadResult]
    num_train: int
    num_test: int
    num_classes: int
    seconds: float = 0.0
    best_index: int = field(init=False)

    def __post_init__(self) -> None:
        self.best_index = max(range(len(self.heads)), key=lambda i: (self.heads[i].top1, -i))

    @property
    def protocol(self) -> HeadResult:
        return self.heads[0]

    @property
    def best(self) -> HeadResult:
        return self.heads[self.best_index]

    def as_dict(self) -> dict:
        return {"arch": self.arch, "train": self.train, "heads": [asdict(h) for h in self.heads],
                "best_index": self.best_index, "num_train": self.num_train, "num_test": self.num_test,
                "num_classes": self.num_classes, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        return cls(arch=data["arch"], train=data["train"], heads=[HeadResult(**h) for h in data["heads"]],
                   num_train=data["num_train"], num_test=data["num_test"], num_classes=data["num_classes"],
                   seconds=data.get("seconds", 0.0))


def channel_statistics(train: CachedFeatures, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [D] over every token of every training sample (fp64 accumulation).

    Probes see (x - mean) / std, MAE's BatchNorm-without-affine before its linear probe: an affine map the
    head could learn itself, applied so that encoders whose tokens share a large common component (a
    random or barely trained ViT's are nearly identical) are not judged by how slowly AdamW at lr 1e-3
    finds the small differences. Computed on the training split only; the test split reuses it."""
    total = torch.zeros(train.width, dtype=torch.float64, device=train.features.device)
    squares = torch.zeros(train.width, dtype=torch.float64, device=train.features.device)
    count = 0
    flat = train.features.reshape(-1, train.width)                        # [n*V*L, D]
    for start in range(0, flat.shape[0], chunk * 64):
        block = flat[start: start + chunk * 64].double()
        total += block.sum(0)
        squares += (block * block).sum(0)
        count += block.shape[0]
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def _flatten_views(cached: CachedFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """Training treats every view of a sample as its own example: [n*V, L, D] and labels [n*V]."""
    views = cached.num_views
    features = cached.features.reshape(-1, *cached.features.shape[2:])
    return features, cached.labels.repeat_interleave(views)


def train_probe_sweep(
    train: CachedFeatures,
    test: CachedFeatures,
    arch: ProbeArch,
    config: ProbeTrainConfig,
    num_classes: int,
    description: str = "probe",
) -> SweepResult:
    """Train every head of the sweep on `train`, score on `test` after the last epoch, on the device the
    features are on (the heads are drawn on the CPU either way, so a seed gives the same start everywhere)."""
    started = time.perf_counter()
    if train.width != test.width:
        raise ValueError(f"train features have width {train.width}, test features {test.width}; extract both with one encoder")
    for name, labels in (("train", train.labels), ("test", test.labels)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} labels outside [0, {num_classes}); the benchmark's class count is wrong")
    grid = config.grid()
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads = nn.ModuleList(build_probe(arch, train.width, num_classes) for _ in grid)
    device = train.features.device
    heads.to(device)
    optimizer = torch.optim.AdamW(
        [{"params": head.parameters(), "lr": lr, "weight_decay": wd} for head, (lr, wd) in zip(heads, grid)]
    )
    features, labels = _flatten_views(train)
    labels = labels.to(device)
    if config.standardize:
        mean, std = channel_statistics(train)
    else:
        mean, std = torch.zeros(train.width, device=device), torch.ones(train.width, device=device)
    steps_per_epoch = math.ceil(labels.shape[0] / config.batch_size)
    last_epoch_loss = torch.zeros(len(grid))
    heads.train()
    progress = tqdm(range(config.epochs), desc=description, leave=False)
    for _ in progress:
        order = torch.randperm(labels.shape[0], generator=generator)
        epoch_loss = torch.zeros(len(grid), device=device)  # on the device: no host sync per step
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size: (step + 1) * config.batch_size].to(device)
            batch = (features[idx].float() - mean) / std  # [b, L, D]
            target = labels[idx]
            losses = torch.stack([F.cross_entropy(head(batch), target) for head in heads])  # [H]
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            epoch_loss += losses.detach() * idx.numel()
        last_epoch_loss = (epoch_loss / labels.shape[0]).cpu()
        progress.set_postfix(loss=f"{float(last_epoch_loss[0]):.3f}")
    results = _score(heads, test, config.eval_batch_size, grid, last_epoch_loss, mean, std)
    return SweepResult(arch=asdict(arch), train=asdict(config), heads=results, num_train=train.labels.shape[0],
                       num_test=test.labels.shape[0], num_classes=num_classes, seconds=time.perf_counter() - started)


@torch.no_grad()
def _score(heads: nn.ModuleList, test: CachedFeatures, batch_size: int, grid, train_loss: torch.Tensor,
           mean: torch.Tensor, std: torch.Tensor) -> list[HeadResult]:
    heads.eval()
    views = test.num_views
    correct = [{1: 0, 5: 0} for _ in heads]
    for start in range(0, test.labels.shape[0], batch_size):
        batch = test.features[start: start + batch_size]  # [b, V, L, D]
        target = test.labels[start: start + batch_size].to(batch.device)
        flat = (batch.reshape(-1, *batch.shape[2:]).float() - mean) / std  # [b*V, L, D]
        for h, head in enumerate(heads):
            probs = average_view_probabilities(head(flat), views)  # [b, C]
            for k, hits in topk_correct(probs, target).items():
                correct[h][k] += hits
    total = max(int(test.labels.shape[0]), 1)
    return [HeadResult(lr=lr, weight_decay=wd, top1=100.0 * c[1] / total, top5=100.0 * c[5] / total,
                       final_train_loss=float(loss))
            for (lr, wd), c, loss in zip(grid, correct, train_loss)]
