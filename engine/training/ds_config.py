"""The DeepSpeed config of a run, built from the recipe's `train:`, `optim:` and `parallel:` sections.

The optimizer is a client torch AdamW (param groups with and without weight decay, fused on CUDA), so no
DeepSpeed optimizer op is JIT-compiled, and `skip_shm_comm_op` keeps DeepSpeed from building its CPU
all-reduce op (see there): a training run compiles nothing. Learning rate and weight decay are written into
the optimizer's param groups by the loop each step, so no DeepSpeed scheduler is configured.
"""
from __future__ import annotations

import torch


def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow and not what is being tested)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("parallel.precision=bf16 but this GPU has no bf16 support; fix: use fp32")
    return precision


def gradient_accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"train.global_batch={global_batch} is not a multiple of micro_batch x world = "
                         f"{micro_batch} x {world_size}")
    return global_batch // per_step


def build_ds_config(*, global_batch: int, micro_batch: int, world_size: int, zero_stage: int,
                    precision: str, grad_clip: float) -> dict:
    """A complete DeepSpeed config dict (precision already resolved to bf16 or fp32)."""
    config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": gradient_accumulation(global_batch, micro_batch, world_size),
        "gradient_clipping": float(grad_clip),
        "zero_optimization": {
            "stage": zero_stage,
            "contiguous_gradients": True,
            "overlap_comm": zero_stage >= 2 and torch.cuda.is_available(),
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8,
        },
        # Client optimizer is torch AdamW, which DeepSpeed's ZeRO supports.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the loop does its own logging
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        # Check gradients for NaN/Inf so a poisoned (skipped) step is dropped under bf16 as under fp32.
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return config


def skip_shm_comm_op() -> None:
    """Keep `deepspeed.init_distributed` from building and starting DeepSpeed's shared-memory all-reduce.

    With the CPU accelerator, DeepSpeed's torch comm backend JIT-compiles the `deepspeed_shm_comm` C++ op on
    first use (about 2.5 minutes of g++ on 2 cores, once per TORCH_EXTENSIONS_DIR) and, under the deepspeed
    launcher (LOCAL_SIZE == world size), each rank then creates a 66 MB /dev/shm/deepspeed_allreduce_buffer_*
    file that nothing ever unlinks, not even a clean exit. The op serves only `inference_all_reduce`
    (DeepSpeed's tensor-parallel inference); ZeRO training reduces through torch.distributed (gloo on CPU,
    nccl on CUDA), so the trainer never calls it. Reporting it unavailable is the fallback DeepSpeed itself
    takes where the op cannot be built (`build_shm_op` returns None: no build, no buffer, same training).
    """
    import importlib

    # Not `import deepspeed.comm.torch as m`: that binds deepspeed.comm's attribute `torch`, which is torch.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = lambda: None
