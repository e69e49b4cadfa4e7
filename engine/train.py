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
    from engine.training.launcher import stop_with_launcher
    # First of all: a `kill` of the deepspeed runner while this rank starts up must stop it too.
    with stop_with_launcher(announce=os.environ.get("RANK", "0") == "0"):
        return _checked_run(args)


def _checked_run(args: argparse.Namespace) -> int:
    """Every check of the user's input, then the run with its folder locked; a refusal is one line, exit 2,
    and leaves the run folder as it was (a fresh run's folder is not created)."""
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
    try:
        indexes = load_data_indexes(recipe)
    except (ValueError, OSError) as err:  # the loader's one-line input errors (remote reads included)
        print(f"error: {err}", file=sys.stderr)
        return 2
    from engine.training.run_lock import RunInUse, RunLock
    lock = RunLock(run_dir)
    if os.environ.get("RANK", "0") == "0":  # the other ranks are ended by the launcher when rank 0 refuses
        try:
            lock.acquire()
        except RunInUse as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    trainer = Trainer(recipe, args.resume)
    trainer.indexes = indexes  # checked above: the loader takes them as they are
    with lock:
        return trainer.run()


def load_data_indexes(recipe: Recipe) -> list:
    """Each dataset's split, loaded and checked as the loader would (engine.data.index.load_indexes), before
    anything is written: a split with no rows, a missing or truncated tar, an unsafe name or an undecodable
    codec is one line, not a traceback after DeepSpeed started and recipe.yaml was written."""
    from engine.data.index import load_indexes
    from engine.data.loader import resolve_decode_device
    return load_indexes(recipe.data.datasets, resolve_decode_device(recipe.data.decode_device))


class Trainer:
    """Builds the run's parts (setup) and runs the loop (run). State lives in attributes so that the
    checkpoint, the signal handler and the final summary see the same objects."""

    def __init__(self, recipe: Recipe, resume: str):
        self.recipe = recipe
        self.resume = resume
        self.indexes = None  # the datasets main() checked (load_data_indexes); None: the loader loads them

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
        from engine.training.step import StepParts

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
        encoder = VisionTransformer(r.model)
        predictor = Predictor(r.predictor, in_dim=encoder.out_dim, grid=r.model.grid,
                              num_mask_tokens=self.masks.num_mask_configs)
        self.jepa = JEPA(encoder, predictor, variant, r.loss)
        self.target = make_ema_target(encoder).to(self.device)
        self.ckpt = CheckpointManager(self.run_dir, r.train.keep_last, every=r.train.checkpoint_every,
                                      last_step=r.train.steps)
        # A resume overwrites every warm-started weight, so its source need not be read (or still exist) then.
        if r.model.init_from and self.ckpt.resolve(self.resume) is None:
            # released or exported weights into encoder, target and predictor (engine/interop)
            from engine.interop.warm_start import MappingError, warm_start
            try:
                self.log("; ".join(warm_start(r.model.init_from, encoder, predictor, self.target)))
            except MappingError as err:
                raise SystemExit(f"error: {err}") from None
        encoder.set_grad_checkpointing(r.parallel.activation_checkpointing)

        # AdamW over the model's own two groups: its no_weight_decay() parameters are never decayed.
        groups = self.jepa.param_groups(r.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=r.optim.start_lr, betas=r.optim.betas, eps=r.optim.eps,
                                      fused=cuda)
        ds_config = build_ds_config(global_batch=r.train.global_batch, micro_batch=r.train.micro_batch,
                                    world_size=self.world, zero_stage=r.parallel.zero_stage,
                                    precision=self.precision, grad_clip=r.optim.grad_clip)
        self.accum = ds_config["gradient_accumulation_steps"]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.jepa, optimizer=optimizer,
                                                                 config=ds_config)

        data_cfg = _replace(r.data, batch_size=r.train.micro_batch, rank=self.rank, world_size=self.world,
                            seed=r.run.seed, mode="train", infinite=True,
                            dtype="bfloat16" if self.precision == "bf16" else "float32")
        self.loader = VideoLoader(data_cfg, self.indexes)
        self.collapse = CollapseAlarm(r.collapse)
        self.parts = StepParts(self.engine, self.jepa, self.target, self.masks, self.loader.next_batch, r, self.accum,
                               self.device, self.rank, self.precision, self.collapse)

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        from kernels import use_backend
        from engine.training.faults import StopSignal
        from engine.training.metrics import MetricsWriter
        from engine.training.step import agree_over_ranks, train_step

        self.setup()
        r = self.recipe
        start_step, resumed = self.restore()
        metrics = MetricsWriter(self.run_dir, enabled=self.rank == 0, resume_step=start_step if resumed else None,
                                every=r.train.log_every, last_step=r.train.steps)
        self.open_progress(start_step)
        stop = None
        with StopSignal() as stop_signal, use_backend(r.parallel.kernels):
            for step in range(start_step, r.train.steps):
                row = train_step(self.parts, step)
                row, nonfinite, votes = agree_over_ranks(row, stop_signal.votes(), self.world, self.device)
                row["skipped_steps"] = self.skipped(row, nonfinite)
                collapse_row = {k: v for k, v in row.items() if k.startswith("collapse.")}
                metrics.log(row, measured=bool(collapse_row))
                self.report(row, collapse_row)
                stop = self.stop_reason(row["step"], StopSignal.agreed(votes))
                if self.ckpt.due(row["step"], stopping=stop is not None):
                    self.save(row["step"])
                if stop is not None:
                    break
        self.bar.close()
        metrics.close()
        if stop is not None:
            reason, exit_code = stop
            self.log(reason)
            self.shutdown()
            return exit_code
        self.finish(r.train.steps)
        return 0

    # -- helpers of the loop -----------------------------------------------------------------------

    def restore(self) -> tuple[int, bool]:
        """(first step to take, whether a checkpoint was loaded); the NaN guard starts here either way."""
        from engine.training.faults import NonFiniteGuard

        self.guard = NonFiniteGuard(self.recipe.train.max_nonfinite_in_row)
        self.must_stop = False
        resume_from = self.ckpt.resolve(self.resume)
        if resume_from is None:
            return 0, False
        trainer_state, rank_state = self.ckpt.load(resume_from, self.engine)
        self.target.load_state_dict(trainer_state["ema_target"])
        self.guard.load_state_dict(trainer_state["nonfinite"])
        self.collapse.load_state_dict(trainer_state.get("collapse"))
        self.loader.load_state_dict(rank_state["loader"])
        self.log(f"resumed from {resume_from} at step {trainer_state['step']}")
        return trainer_state["step"], True

    def skipped(self, row: dict, any_nonfinite: bool) -> int:
        """Count the step with the NaN guard; the total of skipped steps so far."""
        applied = bool(row["step_applied"])
        if any_nonfinite and applied:
            raise RuntimeError(f"step {row['step']}: a loss was not finite but DeepSpeed applied the step; "
                               f"the NaN guard relies on ZeRO's overflow check (zero_stage 1 or 2)")
        self.must_stop = self.guard.record(applied)
        return self.guard.skipped_total

    def stop_reason(self, step: int, stopped_by) -> tuple[str, int] | None:
        """(message, exit status) when the run must stop after `step`: NaN losses in a row, or a signal."""
        if self.must_stop:
            return (f"stopped: {self.guard.in_row} non-finite losses in a row at step {step} "
                    f"(train.max_nonfinite_in_row={self.recipe.train.max_nonfinite_in_row}); the checkpoint holds "
                    f"the last good weights; lower optim.lr or check the data, then --resume auto"), 3
        if stopped_by is not None:  # the shell's status for it: 130 (Ctrl-C), 143 (SIGTERM)
            return f"stopped by {stopped_by.name} at step {step}; continue with --resume auto", 128 + stopped_by
        return None

    def open_progress(self, start_step: int) -> None:
        from tqdm import tqdm

        r = self.recipe
        self.bar = tqdm(total=r.train.steps, initial=start_step, disable=self.rank != 0 or not r.train.progress_bar,
                        dynamic_ncols=True, desc=r.run.name)

    def report(self, row: dict, collapse_row: dict) -> None:
        """The progress bar, the collapse alarm's warnings and the skipped-step line of one step."""
        self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", lr=f"{row['lr']:.2e}",
                             clips_s=f"{row['clips_per_s']:.1f}", stall=f"{row['data_stall']:.0%}", refresh=False)
        self.bar.update(1)  # after the postfix: the bar draws this step's values with its count
        for warning in self.collapse.check(row["step"], collapse_row) if collapse_row else ():
            self.log(warning)
        if not row["step_applied"]:
            self.log(f"step {row['step']}: non-finite loss, step skipped ({self.guard.skipped_total} skipped so far, "
                     f"{self.guard.in_row} in a row)")

    def save(self, step: int) -> None:
        trainer_state = {"step": step, "ema_target": self.target.state_dict(), "nonfinite": self.guard.state_dict(),
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
                from engine.export_card import write_export_folder
                from engine.training.tracking import publish_artifact
                folder = write_export_folder(self.jepa.encoder_for_eval(self.target), r.model, self.run_dir / "export",
                                             recipe=r, weights=path, trained_encoder=self.jepa.trained_encoder,
                                             step=step, variant=self.jepa.variant.name, run=r.run.name)
                publish_artifact(self.run_dir, folder, f"{r.run.name}-encoder")  # to wandb / MLflow if enabled
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


def _replace(cfg, **changes):
    import dataclasses
    return dataclasses.replace(cfg, **changes)


if __name__ == "__main__":
    raise SystemExit(main())
