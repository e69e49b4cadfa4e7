"""Per-step metrics: timers, throughput and MFU, CSV + TensorBoard on rank 0, and the loss-curve plot.
Rows also go to wandb / MLflow when the run's recipe enables them (`log:`, engine.training.tracking).

Times are kept apart as vjepa2 does (data wait, compute = forward + backward, optimizer, EMA, wall);
on CUDA the compute timers synchronise so they measure the GPU, not the kernel launches.
"""
from __future__ import annotations

import csv
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# Dense bf16 peak of common accelerators in FLOP/s (vendor datasheets, no sparsity), for MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of this GPU, None on CPU or an unknown GPU (then MFU is not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


class StepTimer:
    """Wall-clock sections of one step; `section(name)` accumulates, `sync` waits for the GPU first."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.times: dict[str, float] = {}

    def reset(self) -> None:
        self.times = {}

    @contextmanager
    def section(self, name: str):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


class MetricsWriter:
    """Rank 0 writes `metrics.csv` and TensorBoard events; other ranks get a writer that does nothing.

    On resume, rows after the resumed step are dropped first, so the file reads like one straight run.
    A column that appears later (e.g. a loss term enabled by a schedule) rewrites the header. `log` writes a
    row when it is due: every `every` steps, at `last_step`, and whenever the row carries a measurement that
    is not taken every step (the collapse alarm's).
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool = True,
                 every: int = 1, last_step: int = 0):
        self.enabled = enabled
        self.every = every
        self.last_step = last_step
        self.path = Path(run_dir) / "metrics.csv"
        self.columns: list[str] = []
        self.rows: list[dict] = []
        self.tb = None
        self.trackers = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or [])
                keep_to = -1 if resume_step is None else resume_step
                self.rows = [r for r in reader if int(r["step"]) <= keep_to]
            self._rewrite()
        from engine.training.tracking import open_trackers, tensorboard_enabled
        self.trackers = open_trackers(Path(run_dir))  # wandb / MLflow when the run's recipe enables them
        if tensorboard and tensorboard_enabled(Path(run_dir)):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=
                                    None if resume_step is None else resume_step + 1)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def log(self, row: dict, measured: bool = False) -> bool:
        """Write `row` (its "step" counts finished steps) if it is due; return whether it was."""
        step = int(row["step"])
        due = step % self.every == 0 or step == self.last_step or measured
        if due:
            self.write(row)
        return due

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}  # repr round-trips exactly
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    self.tb.add_scalar(key.replace(".", "/"), float(value), step)
        if self.trackers is not None:
            self.trackers.log(row)  # the same row: same keys, values and step as metrics.csv

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """metrics.csv as a list of rows of floats (empty cells dropped)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


TERM_STYLES = ("-", "--", "-.", ":")  # terms often lie close together: style as well as colour tells them apart


def plot_losses(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """The total loss against the step in one panel, each `loss.*` term in a panel below (a term equal to
    the total, e.g. loss.pred of a variant with no other term, would otherwise hide under it), log-scaled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    keys = sorted({k for r in rows for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    series = {key: [(r["step"], r[key]) for r in rows if key in r and r[key] > 0] for key in keys}
    terms = [key for key in keys if key != "loss" and series[key]]
    fig, axes = plt.subplots(2 if terms else 1, 1, sharex=True, squeeze=False, dpi=110,
                             figsize=(7, 6.4 if terms else 4.2))
    total_ax = axes[0][0]
    if series.get("loss"):
        total_ax.plot(*zip(*series["loss"]), label="loss (total)", color="black", linewidth=1.6)
    total_ax.set_ylabel("total loss")
    total_ax.set_title(Path(metrics_csv).parent.name)
    panels = [total_ax]
    if terms:
        terms_ax = axes[1][0]
        for i, key in enumerate(terms):
            terms_ax.plot(*zip(*series[key]), label=key, linewidth=1.2, linestyle=TERM_STYLES[i % len(TERM_STYLES)])
        terms_ax.set_ylabel("loss terms")
        panels.append(terms_ax)
    for ax in panels:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    panels[-1].set_xlabel("step")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
