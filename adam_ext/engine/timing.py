"""Where a training loop's time goes: :class:`PhaseTimer`, wall-clock seconds per phase of each step.

A loop that holds a timer calls :meth:`PhaseTimer.mark` at the end of every phase of a step and
:meth:`PhaseTimer.end_step` at the end of the step; time between steps that belongs to none (an
epoch's validation and checkpoints) goes to :meth:`PhaseTimer.mark_between`. The marks are
contiguous, so a step's phases add up to its wall-clock time. A loop without a timer (``None``,
the default everywhere) runs exactly as before.

On a GPU the host runs ahead of the kernels it launches: a phase is timed as its kernels' time only
when the device is synchronised at every mark (``split``), which also removes the overlap of one
step's kernels with the next step's host work. Benchmarks therefore time some steps unsplit (the
loop as it runs; only the total of several steps is right) and others split (where the time goes).
"""

from __future__ import annotations

import time
from collections.abc import Collection

import torch

__all__ = ["STEP_PHASES", "PhaseTimer"]

#: The phases of a pretraining step, in the order they run (``forward`` and ``momentum+queue`` twice:
#: query encoder, momentum update, key encoder, loss, enqueue).
STEP_PHASES = (
    "data wait",
    "H2D copy",
    "forward",
    "momentum+queue",
    "loss",
    "backward",
    "optimiser",
    "logging/other",
)


class PhaseTimer:
    """Wall-clock seconds per phase of every step of a training loop.

    Args:
        device (torch.device | str): the training device; a CUDA device is synchronised at the
            marks below, other devices never need it.
        split_from (int | None): index of the first step whose phases are split, i.e. the device is
            synchronised at every mark from this step on (0: every step; None: none). Before it a mark
            only reads the clock, so the loop runs as it would without the timer.
        sync_at (Collection[int]): indices of steps at whose end the device is synchronised once, to
            delimit a range of unsplit steps whose total time is measured (e.g. the last warm-up step
            and the last measured step).

    Attributes:
        steps (list[dict[str, float]]): per finished step, seconds per phase (a phase marked twice
            in a step is summed).
        between (dict[str, float]): seconds outside steps, per name given to :meth:`mark_between`.

    Example:
        >>> timer = PhaseTimer("cpu")
        >>> timer.start(); timer.mark("forward"); timer.end_step("other")
        >>> sorted(timer.steps[0])
        ['forward', 'other']
    """

    def __init__(self, device, split_from: int | None = 0, sync_at: Collection[int] = ()):
        self.device = torch.device(device)
        if split_from is not None and (
            isinstance(split_from, bool) or not isinstance(split_from, int) or split_from < 0
        ):
            raise ValueError(f"split_from must be None or an int >= 0, got {split_from!r}")
        self.split_from, self.sync_at = split_from, frozenset(sync_at)
        self.steps: list[dict[str, float]] = []
        self.between: dict[str, float] = {}
        self._current: dict[str, float] = {}
        self._last: float | None = None

    @property
    def split(self) -> bool:
        """Whether the step in progress synchronises the device at every mark."""
        return self.split_from is not None and len(self.steps) >= self.split_from

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _lap(self, sync: bool) -> float:
        """Seconds since the previous mark (0 for the first: it starts the clock)."""
        if sync:
            self._sync()
        now = time.perf_counter()
        seconds = 0.0 if self._last is None else now - self._last
        self._last = now
        return seconds

    def start(self) -> None:
        """Starts (or restarts) the clock: the next mark times from here."""
        self._lap(self.split)

    def mark(self, phase: str) -> None:
        """Ends ``phase`` of the step in progress: adds the seconds since the previous mark to it."""
        seconds = self._lap(self.split)
        self._current[phase] = self._current.get(phase, 0.0) + seconds

    def end_step(self, phase: str) -> None:
        """Ends ``phase``, the step's last, and the step (see ``sync_at``)."""
        seconds = self._lap(self.split or len(self.steps) in self.sync_at)
        self._current[phase] = self._current.get(phase, 0.0) + seconds
        self.steps.append(self._current)
        self._current = {}

    def mark_between(self, name: str) -> None:
        """Adds the seconds since the previous mark to ``between[name]``: time that is no step's. The
        device is synchronised first (outside the steps it costs them nothing), so that the next
        step's time holds none of the work before it."""
        seconds = self._lap(True)
        self.between[name] = self.between.get(name, 0.0) + seconds
