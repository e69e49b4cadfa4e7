"""Fault handling of the loop: stop signals and non-finite losses.

SIGTERM/SIGINT only set a flag; the loop checks it once per step (agreed over all ranks), writes a
checkpoint and exits with the shell's status for that signal (130 for SIGINT, 143 for SIGTERM, as
`shards.build` does), so `train && evaluate` does not go on to evaluate an interrupted run. A second
SIGINT while stopping is left to the default handler, so an impatient Ctrl-C twice still kills the run; a
repeated SIGTERM (launchers and schedulers may forward the same stop more than once) is ignored, and the
scheduler's later SIGKILL remains the hard stop.

A NaN/Inf loss skips the optimizer step (the loop poisons the gradients, so DeepSpeed's overflow check
drops the step and its Adam update) and is counted; `max_in_row` of them in a row stop the run.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass


class StopSignal:
    """Remembers that SIGTERM or SIGINT arrived; installs itself on enter, restores on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: behave as if we had never installed a handler
                signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
                signal.raise_signal(signum)
            return
        self.received = signum

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def votes(self) -> list[float]:
        """One flag per signal of SIGNALS, to be summed over ranks (all_reduce) and read by `agreed`."""
        return [float(self.received == sig) for sig in self.SIGNALS]

    @classmethod
    def agreed(cls, summed_votes: list[float]) -> signal.Signals | None:
        """The signal every rank stops for (SIGTERM before SIGINT if both arrived), or None: ranks that
        got no signal themselves exit with the same status as those that did."""
        return next((signal.Signals(sig) for sig, n in zip(cls.SIGNALS, summed_votes) if n > 0), None)


@dataclass
class NonFiniteGuard:
    """Counts skipped steps; `record` says whether the run must stop."""

    max_in_row: int
    skipped_total: int = 0
    in_row: int = 0

    def record(self, finite: bool) -> bool:
        if finite:
            self.in_row = 0
            return False
        self.skipped_total += 1
        self.in_row += 1
        return self.in_row >= self.max_in_row

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state["skipped_total"])
        self.in_row = int(state["in_row"])
