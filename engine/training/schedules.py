"""Step-indexed schedules for learning rate, weight decay and EMA momentum (the context-loss λ schedule
belongs to the loss: engine.objectives.jepa_loss.ContextLossConfig).

Pure functions of the step, so a resumed run recomputes exactly the values of a straight run. The loop
writes them into the optimizer's param groups before each step (no DeepSpeed scheduler is used).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, start: float, peak: float, final: float, warmup_steps: int,
                  total_steps: int) -> float:
    """Linear warmup from `start` to `peak` over `warmup_steps`, then cosine from `peak` to `final`.

    With peak == final (the paper's recipe) the value is constant after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def cosine(step: int, *, start: float, final: float, total_steps: int) -> float:
    """Cosine from `start` at step 0 to `final` at `total_steps` (constant when start == final)."""
    progress = min(1.0, step / max(1, total_steps))
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * progress))


def linear(step: int, *, start: float, final: float, total_steps: int) -> float:
    """Linear from `start` at step 0 to `final` at `total_steps` (the EMA momentum ramp of V-JEPA)."""
    progress = min(1.0, step / max(1, total_steps))
    return start + (final - start) * progress

