"""Video-JEPA pretraining under DeepSpeed ZeRO: the one training loop, top to bottom.

    deepspeed engine/train.py --recipe recipes/mixed_fwm.yaml                  # all local GPUs (or 1 CPU rank)
    deepspeed --num_gpus 2 engine/train.py --recipe recipes/demo/mixed_fwm.yaml # 2 ranks (gloo on CPU)
    python -m engine.train --recipe recipes/demo/mixed_fwm.yaml --set train.steps=50
    python -m engine.train --recipe ... --resume auto                          # continue a killed run

What lives where: the encoder, predictor and auxiliary heads form one module (engine.jepa.JEPA) inside
one DeepSpeed engine; the EMA target encoder stays outside it in fp32. Learning rate and weight decay
are written into the optimizer's param groups every step. Checkpoints, metrics, schedules and fault
handling are helpers in engine/training/; the model code knows nothing of ranks or precision.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

# `deepspeed engine/train.py` runs this file as a script: make the repository importable.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.recipe import (ALLOW_OUTSIDE_HELP, Recipe, dump_recipe, load_recipe, recipe_yaml,  # noqa: E402
                           refuse_frozen_changes)
from engine.training.typed_yaml import ConfigError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Video-JEPA pretraining under DeepSpeed ZeRO.")
    parser.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--resume", default="none",
                        help="'auto' (newest complete checkpoint of the run, or start fresh), a checkpoint "
                             "folder, or 'none' (default: start fresh; an existing run folder is an error)")
    parser.add_argument("--allow-base-outside-tree", action="store_true", help=ALLOW_OUTSIDE_HELP)
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # -- recipe: read and validated before anything heavy is imported or built ----------------------
    try:
        recipe = load_recipe(args.recipe, args.overrides, allow_outside_base=args.allow_base_outside_tree)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = recipe.run_dir
    ckpt_root = run_dir / "checkpoints"
    if args.resume == "none" and ckpt_root.is_dir() and any(ckpt_root.iterdir()):
        print(f"error: {run_dir} already holds checkpoints; fix: pass --resume auto to continue it, or pick "
              f"another run.name", file=sys.stderr)
        return 2
    if args.resume != "none":
        # Before anything is written: a resume that changes what the checkpoint's weights are shaped by is
        # refused, and so is a checkpoint whose files need pickle this machine cannot vouch for; the run folder
        # stays as it was.
        from engine.training.checkpoint import CheckpointManager, CheckpointRefused, check_resumable, checkpoint_recipe
        try:
            checkpoint = CheckpointManager(run_dir, recipe.train.keep_last).resolve(args.resume)
            if checkpoint is not None:
                check_resumable(checkpoint)
                refuse_frozen_changes(recipe, checkpoint_recipe(checkpoint), args.resume)
        except (ConfigError, FileNotFoundError, CheckpointRefused) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return Trainer(recipe, args.resume).run()


class Trainer:
    """Builds the run's parts (setup) and runs the loop (run). State lives in attributes so that the
    checkpoint, the signal handler and the final summary see the same objects."""

    def __init__(self, recipe: Recipe, resume: str):
        self.recipe = recipe
        self.resume = resume

    # -- setup ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        from engine.data import VideoLoader
        from engine.jepa import JEPA
        from engine.masking import build_mask_generator
        from engine.models import Predictor, VisionTransformer, make_ema_target
        from engine.objectives.registry import resolve_variant
        from engine.training.checkpoint import CheckpointManager
        from engine.training.collapse import CollapseAlarm
        from engine.training.ds_config import build_ds_config, resolve_precision, skip_shm_comm_op

        r = self.recipe
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skip DeepSpeed's accelerator probing
        for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=str(29500 + os.getpid() % 1000)).items():
            os.environ.setdefault(key, value)  # plain `python -m engine.train`: a world of one
        import deepspeed
        skip_shm_comm_op()  # no JIT build, no /dev/shm buffer left behind (defects of the unused op)
        cuda = torch.cuda.is_available()
        backend = r.parallel.comm_backend if r.parallel.comm_backend != "auto" else ("nccl" if cuda else "gloo")
        deepspeed.init_distributed(dist_backend=backend)
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        threads = r.parallel.cpu_threads or max(1, (os.cpu_count() or 1) // local_world - 1)
        torch.set_num_threads(threads)  # oversubscribed OpenMP threads spin and stall CPU runs badly
        self.precision = resolve_precision(r.parallel.precision, self.device.type)
        self.run_dir = r.run_dir
        if self.rank == 0:
            dump_recipe(r, self.run_dir / "recipe.yaml")

        # The model init is a function of the seed alone (same on every rank, resumed or not).
        torch.manual_seed(r.run.seed)
        variant = resolve_variant(r.objective.spec())
        self.masks = build_mask_generator(r.masking, default=variant.mask_generator)
        self.grid = r.model.grid
        encoder = VisionTransformer(r.model)
        predictor = Predictor(r.predictor, in_dim=encoder.out_dim, grid=self.grid,
                              num_mask_tokens=self.masks.num_mask_configs)
        self.jepa = JEPA(encoder, predictor, variant, r.loss)
        self.target = make_ema_target(encoder).to(self.device)
        encoder.set_grad_checkpointing(r.parallel.activation_checkpointing)

        # AdamW: no weight decay on biases, norms, position and mask tokens (1-D parameters).
        decay, no_decay = [], []
        for name, param in self.jepa.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 or name.endswith("mask_tokens") else decay).append(param)
        groups = [{"params": decay, "weight_decay": r.optim.weight_decay, "apply_wd": True},
                  {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]
        optimizer = torch.optim.AdamW(groups, lr=r.optim.start_lr, betas=r.optim.betas, eps=r.optim.eps,
                                      fused=cuda)
        ds_config = build_ds_config(global_batch=r.train.global_batch, micro_batch=r.train.micro_batch,
                                    world_size=self.world, zero_stage=r.parallel.zero_stage,
                                    precision=self.precision, grad_clip=r.optim.grad_clip)
        self.accum = ds_config["gradient_accumulation_steps"]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.jepa, optimizer=optimizer,
                                                                 config=ds_config)
        self.params = [p for p in self.engine.module.parameters() if p.requires_grad]

        data_cfg = _replace(r.data, batch_size=r.train.micro_batch, rank=self.rank, world_size=self.world,
                            seed=r.run.seed, mode="train", infinite=True,
                            dtype="bfloat16" if self.precision == "bf16" else "float32")
        self.loader = VideoLoader(data_cfg)
        self.ckpt = CheckpointManager(self.run_dir, r.train.keep_last)
        self.collapse = CollapseAlarm(r.collapse)

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        import torch
        import torch.distributed as dist
        from tqdm import tqdm

        from kernels import use_backend
        from engine.models import encoder_flops, predictor_flops
        from engine.training import schedules
        from engine.training.collapse import collapse_metrics, last_level
        from engine.training.faults import NonFiniteGuard, StopSignal
        from engine.training.metrics import MetricsWriter, StepTimer, peak_flops

        self.setup()
        r, rank = self.recipe, self.rank
        guard = NonFiniteGuard(r.train.max_nonfinite_in_row)
        start_step = 0
        resume_from = self.ckpt.resolve(self.resume)
        if resume_from is not None:
            trainer_state, rank_state = self.ckpt.load(resume_from, self.engine)
            start_step = trainer_state["step"]
            self.target.load_state_dict(trainer_state["ema_target"])
            guard.load_state_dict(trainer_state["nonfinite"])
            self.collapse.load_state_dict(trainer_state.get("collapse"))
            self.loader.load_state_dict(rank_state["loader"])
            self.log(f"resumed from {resume_from} at step {start_step}")
        metrics = MetricsWriter(self.run_dir, enabled=rank == 0,
                                resume_step=start_step if resume_from is not None else None)
        timer = StepTimer(self.device)
        peak = peak_flops(self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        enc_cfg = r.model
        total_steps = r.train.steps
        bar = tqdm(total=total_steps, initial=start_step, disable=rank != 0 or not r.train.progress_bar,
                   dynamic_ncols=True, desc=r.run.name)
        exit_code, stop_reason = 0, ""
        step = start_step
        with StopSignal() as stop_signal, use_backend(r.parallel.kernels):
            while step < total_steps:
                step_start = time.perf_counter()
                timer.reset()
                # -- schedules, written into the param groups ------------------------------------
                lr = schedules.warmup_cosine(step, start=r.optim.start_lr, peak=r.optim.lr, final=r.optim.final_lr,
                                             warmup_steps=r.optim.warmup_steps, total_steps=total_steps)
                wd = schedules.cosine(step, start=r.optim.weight_decay, final=r.optim.final_weight_decay,
                                      total_steps=total_steps)
                momentum = schedules.linear(step, start=r.ema.momentum, final=r.ema.final_momentum,
                                            total_steps=total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                    group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0

                # -- forward/backward over the micro-batches of this step -------------------------
                sums: dict[str, float] = {}
                collapse_row: dict[str, float] = {}
                measure_collapse = rank == 0 and self.collapse.due(step)
                nonfinite_local = 0.0
                flops = 0.0
                for micro in range(self.accum):
                    with timer.section("data"):
                        batch = self.loader.next_batch()
                        video = batch["video"].to(self.device, non_blocking=True)  # [B, C, T, H, W]
                    with timer.section("masks"):
                        generator = torch.Generator(device=self.device)
                        generator.manual_seed(_mask_seed(r.run.seed, rank, step, micro))
                        masks = self.masks(video.shape[0], self.grid, generator, video)
                    with timer.section("compute"):
                        with autocast:
                            losses = self.engine(video, masks, step, target_encoder=self.target,
                                                 keep_targets=measure_collapse and micro == 0)
                        total = losses["total"]
                        finite = bool(torch.isfinite(total.detach()).item())
                        if not finite:
                            # Poison every gradient: DeepSpeed's overflow check then drops the whole step
                            # (no Adam update) on every rank, as for an fp16 overflow.
                            nonfinite_local = 1.0
                            total = sum(p.float().sum() for p in self.params) * float("nan")
                        self.engine.backward(total)
                        for key, value in losses.items():
                            sums[key] = sums.get(key, 0.0) + float(value.detach()) / self.accum
                        flops += self._step_flops(masks, video.shape[0], encoder_flops, predictor_flops)
                    if measure_collapse and micro == 0:
                        with timer.section("collapse"):
                            collapse_row = collapse_metrics(last_level(self.jepa.pop_kept_targets(),
                                                                       enc_cfg.embed_dim))
                    if micro < self.accum - 1:
                        with timer.section("optimizer"):
                            self.engine.step()  # accumulation micro-step: DeepSpeed only counts it
                with timer.section("optimizer"):
                    self.engine.step()
                applied = self.engine.was_step_applied()
                with timer.section("ema"):
                    if applied:
                        self.jepa.update_target(self.target, momentum)
                step += 1

                # -- agree over ranks: mean losses, any non-finite, any stop signal ----------------
                keys = sorted(sums)
                packed = torch.tensor([sums[k] for k in keys] + [nonfinite_local] + stop_signal.votes(),
                                      dtype=torch.float64, device=self.device)
                dist.all_reduce(packed)
                values = (packed[:len(keys)] / self.world).tolist()
                any_nonfinite = packed[len(keys)].item() > 0
                stopped_by = StopSignal.agreed(packed[len(keys) + 1:].tolist())
                if any_nonfinite and applied:
                    raise RuntimeError(f"step {step}: a loss was not finite but DeepSpeed applied the step; "
                                       f"the NaN guard relies on ZeRO's overflow check (zero_stage 1 or 2)")
                must_stop = guard.record(applied)

                # -- metrics ---------------------------------------------------------------------
                wall = time.perf_counter() - step_start
                clips_per_s = r.train.global_batch / wall
                row = {"step": step, "lr": lr, "weight_decay": wd, "ema_momentum": momentum}
                for key, value in zip(keys, values):
                    row["loss" if key == "total" else ("lambda_ctx" if key == "lambda_ctx" else f"loss.{key}")] = value
                row.update({f"time.{k}": v for k, v in timer.times.items()})
                row.update({"time.wall": wall, "clips_per_s": clips_per_s,
                            "tokens_per_s": clips_per_s * enc_cfg.num_tokens,
                            "data_stall": timer.times.get("data", 0.0) / wall,
                            "skipped_steps": guard.skipped_total, "step_applied": int(applied)})
                row["tflops_per_s"] = flops / wall / 1e12  # model FLOPs actually achieved by this rank
                if peak is not None:
                    row["mfu"] = flops / (wall * peak)
                row.update(collapse_row)
                if step % r.train.log_every == 0 or step == total_steps or collapse_row:
                    metrics.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                                clips_s=f"{clips_per_s:.1f}", stall=f"{row['data_stall']:.0%}", refresh=False)
                for warning in self.collapse.check(step, collapse_row) if collapse_row else ():
                    self.log(warning)
                if not applied:
                    self.log(f"step {step}: non-finite loss, step skipped ({guard.skipped_total} skipped so far, "
                             f"{guard.in_row} in a row)")

                # -- checkpoints and stops -------------------------------------------------------
                if must_stop:
                    stop_reason = (f"stopped: {guard.in_row} non-finite losses in a row at step {step} "
                                   f"(train.max_nonfinite_in_row={r.train.max_nonfinite_in_row}); the checkpoint "
                                   f"holds the last good weights; lower optim.lr or check the data, then "
                                   f"--resume auto")
                    exit_code = 3
                elif stopped_by is not None:
                    stop_reason = f"stopped by {stopped_by.name} at step {step}; continue with --resume auto"
                    exit_code = 128 + stopped_by  # the shell's status for it: 130 (Ctrl-C), 143 (SIGTERM)
                if stop_reason or step % r.train.checkpoint_every == 0 or step == total_steps:
                    self.save(step, guard)
                if stop_reason:
                    break
        bar.close()
        metrics.close()
        if stop_reason:
            self.log(stop_reason)
            self.shutdown()
            return exit_code
        self.finish(step)
        return 0

    # -- helpers of the loop -----------------------------------------------------------------------

    def _step_flops(self, masks, batch_size: int, encoder_flops, predictor_flops) -> float:
        """Training FLOPs of one micro-batch: target forward (x1, x3 when it is the online encoder),
        context encoder and predictor forward + backward (x3) for every mask config."""
        r = self.recipe
        target_mult = 3 if self.jepa.disable_ema else 1
        flops = target_mult * encoder_flops(r.model, batch_size=batch_size)
        for mask in masks:
            kc, kt = mask.context_idx.shape[1], mask.target_idx.shape[1]
            flops += 3 * encoder_flops(r.model, num_tokens=kc, batch_size=batch_size)
            flops += 3 * predictor_flops(r.predictor, self.jepa.encoder.out_dim, kc, kt, batch_size=batch_size)
        return float(flops)

    def save(self, step: int, guard) -> None:
        trainer_state = {"step": step, "ema_target": self.target.state_dict(), "nonfinite": guard.state_dict(),
                         "collapse": self.collapse.state_dict(),
                         "trained_encoder": self.jepa.trained_encoder, "run": self.recipe.run.name}
        folder = self.ckpt.save(step, self.engine, trainer_state, {"loader": self.loader.state_dict(), "step": step},
                                files={"recipe.yaml": recipe_yaml(self.recipe)})  # export reads this copy
        self.log(f"checkpoint {folder}")

    def finish(self, step: int) -> None:
        from engine.export import export_encoder
        from engine.training.collapse import plot_collapse
        from engine.training.metrics import plot_losses, read_metrics

        r = self.recipe
        if self.rank == 0:
            summary = [f"run {r.run.name}: {step} steps, variant {self.jepa.variant.name}, "
                       f"{self.world} rank(s), {self.precision}, ZeRO-{r.parallel.zero_stage}"]
            metrics_csv = self.run_dir / "metrics.csv"
            if metrics_csv.exists():
                rows = read_metrics(metrics_csv)
                plot = plot_losses(metrics_csv, self.run_dir / "loss_curve.png")
                losses = [row["loss"] for row in rows if "loss" in row and math.isfinite(row["loss"])]
                if losses:
                    k = max(1, min(5, len(losses) // 2))
                    head, tail = sum(losses[:k]) / k, sum(losses[-k:]) / k
                    summary.append(f"loss {head:.4f} (first {k} steps) -> {tail:.4f} (last {k})")
                walls = [row["time.wall"] for row in rows[len(rows) // 5:] if "time.wall" in row]
                stalls = [row["data_stall"] for row in rows[len(rows) // 5:] if "data_stall" in row]
                if walls:
                    mean_wall = sum(walls) / len(walls)
                    summary.append(f"{r.train.global_batch / mean_wall:.1f} clips/s, "
                                   f"{r.train.global_batch * r.model.num_tokens / mean_wall:.0f} tokens/s, "
                                   f"data stall {100 * sum(stalls) / len(stalls):.1f}%")
                collapse_plot = plot_collapse(metrics_csv, self.run_dir / "collapse.png", self.collapse.thresholds(),
                                              r.collapse.window)
                summary.append(f"metrics {metrics_csv}, plot {plot}" + (f", {collapse_plot}" if collapse_plot else ""))
                summary.append(self.collapse.summary())
            if r.train.export_at_end:
                path = export_encoder(self.jepa.encoder_for_eval(self.target), r.model,
                                      self.run_dir / "encoder.safetensors",
                                      trained_encoder=self.jepa.trained_encoder, step=step,
                                      variant=self.jepa.variant.name, run=r.run.name)
                summary.append(f"encoder ({self.jepa.trained_encoder}) exported to {path}")
                from engine.training.tracking import publish_export  # + to wandb / MLflow if enabled
                folder = publish_export(self.jepa.encoder_for_eval(self.target), r, self.run_dir, path,
                                        trained_encoder=self.jepa.trained_encoder, step=step,
                                        variant=self.jepa.variant.name, run=r.run.name)
                summary.append(f"export folder with model card: {folder}")
            print("\n".join(summary), flush=True)
            (self.run_dir / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
        self.shutdown()

    def shutdown(self) -> None:
        import torch.distributed as dist
        self.loader.close()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def log(self, message: str) -> None:
        if self.rank == 0:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stderr)


def _mask_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """Masks are a pure function of (seed, rank, step, micro-batch): identical after a resume."""
    import numpy as np
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def _replace(cfg, **changes):
    import dataclasses
    return dataclasses.replace(cfg, **changes)


if __name__ == "__main__":
    raise SystemExit(main())
