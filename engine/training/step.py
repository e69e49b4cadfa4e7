"""One optimizer step of Video-JEPA pretraining as a function: this rank's micro-batches through forward and
backward, the optimizer step, the EMA update -> this rank's metrics row.

    parts = StepParts(engine, jepa, target, masks, loader.next_batch, recipe, accum, device)
    row = train_step(parts, step)              # step: the 0-based index of the step being taken
    row, nonfinite, stopped_by = agree_over_ranks(row, stop_signal.votes(), world, device)

The loop (engine/train.py) agrees the row over ranks, hands it to the metrics writer and asks the checkpoint
manager whether to save; nothing here touches files, signals or other ranks.

A NaN/Inf loss poisons every gradient instead of being skipped here: DeepSpeed's overflow check then drops the
whole step (no Adam update) on every rank alike, as for an fp16 overflow, and `was_step_applied` says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from engine.models import encoder_flops, predictor_flops
from engine.training import schedules
from engine.training.collapse import CollapseAlarm, collapse_metrics, last_level
from engine.training.metrics import StepTimer, peak_flops

NONFINITE = "nonfinite"  # row key of this rank's non-finite flag; agree_over_ranks consumes it


@dataclass
class StepParts:
    """What every step works with, built once by the trainer (or by a test, on a tiny model)."""

    engine: Any
    """The DeepSpeed engine around `jepa`: engine(...) runs its forward, backward(loss), step() (counts
    accumulation micro-steps, applies the optimizer at the boundary), was_step_applied(), optimizer."""
    jepa: nn.Module
    """The engine.jepa.JEPA inside `engine` (EMA update, kept targets, whether the EMA is off)."""
    target: nn.Module
    """The EMA target encoder, fp32, outside the engine."""
    masks: Callable
    """engine.masking generator: (batch size, grid, torch.Generator, video) -> one MaskSet per mask config."""
    next_batch: Callable[[], dict]
    """The loader's next micro-batch (contracts §2)."""
    recipe: Any
    """The run's engine.recipe.Recipe: schedules, geometry, seed, global batch."""
    accum: int
    """Micro-batches per optimizer step on this rank."""
    device: torch.device
    rank: int = 0
    precision: str = "fp32"
    """'bf16' runs the forward under bf16 autocast."""
    collapse: CollapseAlarm | None = None
    """The collapse alarm; rank 0 measures on the steps it names."""
    timer: StepTimer = field(init=False)
    peak: float | None = field(init=False)
    params: list[nn.Parameter] = field(init=False)

    def __post_init__(self):
        self.timer = StepTimer(self.device)
        self.peak = peak_flops(self.device)
        self.params = [p for p in self.jepa.parameters() if p.requires_grad]


def step_schedules(recipe, step: int) -> dict[str, float]:
    """Learning rate, weight decay and EMA momentum at 0-based `step` of the run."""
    o, total = recipe.optim, recipe.train.steps
    return {"lr": schedules.warmup_cosine(step, start=o.start_lr, peak=o.lr, final=o.final_lr,
                                          warmup_steps=o.warmup_steps, total_steps=total),
            "weight_decay": schedules.cosine(step, start=o.weight_decay, final=o.final_weight_decay, total_steps=total),
            "ema_momentum": schedules.linear(step, start=recipe.ema.momentum, final=recipe.ema.final_momentum,
                                             total_steps=total)}


def mask_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """Masks are a pure function of (seed, rank, step, micro-batch): identical after a resume."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def step_flops(recipe, jepa: nn.Module, masks, batch_size: int) -> float:
    """Training FLOPs of one micro-batch: target forward (x1, x3 when it is the online encoder), context
    encoder and predictor forward + backward (x3) for every mask config."""
    target_mult = 3 if jepa.disable_ema else 1
    flops = target_mult * encoder_flops(recipe.model, batch_size=batch_size)
    for mask in masks:
        kc, kt = mask.context_idx.shape[1], mask.target_idx.shape[1]
        flops += 3 * encoder_flops(recipe.model, num_tokens=kc, batch_size=batch_size)
        flops += 3 * predictor_flops(recipe.predictor, jepa.encoder.out_dim, kc, kt, batch_size=batch_size)
    return float(flops)


def loss_column(key: str) -> str:
    """metrics.csv column of a JEPA loss-dict key: "total" -> loss, "lambda_ctx" as is, others loss.<key>."""
    return "loss" if key == "total" else ("lambda_ctx" if key == "lambda_ctx" else f"loss.{key}")


def train_step(parts: StepParts, step: int) -> dict[str, float]:
    """Take optimizer step `step` (0-based): schedules into the param groups, every micro-batch forward and
    backward, the optimizer step, the EMA update. Returns this rank's row: "step" (= step + 1, finished
    steps), the schedules, the losses (mean over micro-batches), timings, throughput, "step_applied",
    the collapse statistics when measured, and NONFINITE (1.0 if any loss of this rank was NaN/Inf)."""
    r, timer = parts.recipe, parts.timer
    start = time.perf_counter()
    timer.reset()
    row: dict[str, float] = {"step": step + 1, **step_schedules(r, step)}
    for group in parts.engine.optimizer.param_groups:
        group["lr"] = row["lr"]
        group["weight_decay"] = row["weight_decay"] if group.get("apply_wd", True) else 0.0
    measure = parts.collapse is not None and parts.rank == 0 and parts.collapse.due(step)
    sums, collapse_row, nonfinite, flops = {}, {}, 0.0, 0.0
    for micro in range(parts.accum):
        losses, masks, video = _forward(parts, step, micro, keep_targets=measure and micro == 0)
        with timer.section("compute"):
            total = losses["total"]
            if not bool(torch.isfinite(total.detach()).item()):
                nonfinite = 1.0
                total = sum(p.float().sum() for p in parts.params) * float("nan")  # poison every gradient
            parts.engine.backward(total)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / parts.accum
            flops += step_flops(r, parts.jepa, masks, video.shape[0])
        if measure and micro == 0:
            with timer.section("collapse"):
                collapse_row = collapse_metrics(last_level(parts.jepa.pop_kept_targets(), r.model.embed_dim))
        if micro < parts.accum - 1:
            with timer.section("optimizer"):
                parts.engine.step()  # accumulation micro-step: DeepSpeed only counts it
    with timer.section("optimizer"):
        parts.engine.step()
    applied = parts.engine.was_step_applied()
    with timer.section("ema"):
        if applied:
            parts.jepa.update_target(parts.target, row["ema_momentum"])
    wall = time.perf_counter() - start
    row.update({loss_column(key): value for key, value in sums.items()})
    row.update({f"time.{k}": v for k, v in timer.times.items()})
    clips_per_s = r.train.global_batch / wall
    row.update({"time.wall": wall, "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * r.model.num_tokens,
                "data_stall": timer.times.get("data", 0.0) / wall, "step_applied": int(applied),
                "tflops_per_s": flops / wall / 1e12})  # model FLOPs actually achieved by this rank
    if parts.peak is not None:
        row["mfu"] = flops / (wall * parts.peak)
    return {**row, **collapse_row, NONFINITE: nonfinite}


def _forward(parts: StepParts, step: int, micro: int, keep_targets: bool) -> tuple[dict[str, Tensor], list, Tensor]:
    """One micro-batch: its clips, its masks (seeded by step and micro-batch), the JEPA losses."""
    with parts.timer.section("data"):
        video = parts.next_batch()["video"].to(parts.device, non_blocking=True)  # [B, C, T, H, W]
    with parts.timer.section("masks"):
        generator = torch.Generator(device=parts.device)
        generator.manual_seed(mask_seed(parts.recipe.run.seed, parts.rank, step, micro))
        masks = parts.masks(video.shape[0], parts.recipe.model.grid, generator, video)
    with parts.timer.section("compute"):
        with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=parts.precision == "bf16"):
            losses = parts.engine(video, masks, step, target_encoder=parts.target, keep_targets=keep_targets)
    return losses, masks, video


def agree_over_ranks(row: dict[str, float], stop_votes: list[float], world: int,
                     device: torch.device) -> tuple[dict[str, float], bool, list[float]]:
    """One all-reduce: the losses become their mean over ranks, and every rank learns whether any rank saw a
    non-finite loss and which stop signals arrived anywhere. Returns (row, any non-finite, summed votes)."""
    import torch.distributed as dist

    row = dict(row)
    nonfinite = row.pop(NONFINITE)
    keys = sorted(k for k in row if k == "loss" or k == "lambda_ctx" or k.startswith("loss."))
    packed = torch.tensor([row[k] for k in keys] + [nonfinite] + list(stop_votes), dtype=torch.float64,
                          device=device)
    if world > 1 or dist.is_initialized():
        dist.all_reduce(packed)
    row.update(zip(keys, (packed[:len(keys)] / world).tolist()))
    return row, packed[len(keys)].item() > 0, packed[len(keys) + 1:].tolist()
