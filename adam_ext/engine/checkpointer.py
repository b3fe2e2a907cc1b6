"""The checkpoint policy both loops share: where a run's weights go, when, and which are the best.

A :class:`Checkpointer` writes atomically on the main rank and then waits for the other ranks, so no
rank reads a checkpoint that is not whole; it keeps the best value of a metric (lower or higher is
better) and tells whether a new value beats it. Pretraining keeps ``last.pt`` (the resume point) and
each stage's ``best.pt`` with it; fine-tuning keeps each run's ``best.pt``.

Example:
    >>> ckpt = Checkpointer(main=True, mode="min")
    >>> ckpt.improves(0.9), ckpt.improves(1.2), ckpt.best
    (True, False, 0.9)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .._util.atomic import atomic_save

__all__ = ["Checkpointer"]


class Checkpointer:
    """Atomic checkpoints on the main rank, and the best value so far.

    Args:
        main: whether this process writes (rank 0).
        barrier: called after every write so that all ranks move on together (a no-op alone).
        mode: ``min`` (a loss: lower is better) or ``max`` (a score).
        wrap: turns a state into what the file holds (e.g. adds the run's configuration and versions).
        best: the best value so far (a resumed run's), or None.
    """

    def __init__(
        self,
        *,
        main: bool = True,
        barrier: Callable[[], None] = lambda: None,
        mode: str = "min",
        wrap: Callable[[dict], dict] = lambda state: state,
        best: float | None = None,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.main, self.barrier, self.mode, self.wrap, self.best = main, barrier, mode, wrap, best

    def save(self, path: Path, state: dict) -> None:
        """Writes ``wrap(state)`` to ``path`` atomically on the main rank; every rank waits for it."""
        if self.main:
            atomic_save(self.wrap(state), Path(path))
        self.barrier()

    def improves(self, value: float) -> bool:
        """True, and ``value`` becomes the best, when it is finite and better than the best so far.

        A NaN or infinite value never becomes the best (a diverged epoch is never kept)."""
        if not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best = value
        return better
