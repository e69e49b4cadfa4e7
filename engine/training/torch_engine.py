"""The part of DeepSpeed's engine interface that `train_step` uses, over a plain torch optimizer.

For one process where DeepSpeed is not wanted or not installed: the in-process step benchmark
(benchmarks/gpu/step.py) and the tests that call `train_step` on a tiny model. It keeps DeepSpeed's
semantics where the step depends on them:
  - backward(loss) scales the loss by 1/accum (gradient accumulation over `accum` micro-batches);
  - step() is called once per micro-batch and applies the optimizer only on every `accum`-th call;
  - a step whose gradients are not all finite makes no update (ZeRO's overflow check), and
    was_step_applied() says whether the last boundary step was applied.
Weights stay fp32 (torch autocast may still run the forward in bf16); there is no ZeRO sharding.
"""
from __future__ import annotations

import torch
from torch import nn


class TorchEngine:
    """`engine(...)`, `backward`, `step`, `was_step_applied`, `optimizer` and `module`, as DeepSpeed's."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, accum: int = 1, grad_clip: float = 0.0):
        self.module = module
        self.optimizer = optimizer
        self.accum = accum
        self.grad_clip = grad_clip
        self.micro_steps = 0
        self.applied = False

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.accum:
            return
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.applied = bool(torch.stack([g.isfinite().all() for g in grads]).all().item()) if grads else True
        if self.applied:
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               self.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:
        return self.applied
