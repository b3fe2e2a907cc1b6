"""The training steps' log: windows of steps reduced across ranks, checked, written, and the pruner's warning.

Losses and pruned fractions stay on the device while a window fills (no host synchronisation per
step); :class:`StepLog` brings a window to the host in one transfer, stops the run on a non-finite loss
(the last good checkpoint named), writes one metrics row per step and warns once a stage when the
pruner removes (nearly) the whole queue.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..engine import check_finite

__all__ = ["COLLAPSE_PRUNED", "StepLog", "Window", "duration", "epoch_bar"]

#: Mean fraction of the queue pruned over a logging window above which the run warns of a collapse.
COLLAPSE_PRUNED = 0.95


@dataclass
class Window:
    """The steps since the last log row: their losses and pruned fractions (on the device), their
    (step, lr), and when the window began."""

    losses: list = field(default_factory=list)
    pruned: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss, pruned, step: int, lr: float) -> None:
        self.losses.append(loss)
        self.pruned.append(pruned)
        self.steps.append((step, lr))


def duration(seconds: float) -> str:
    """``3725`` -> ``"1 h 2 min"``; under a minute in seconds, under a day in hours and minutes."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours / 24:.1f} days"


def epoch_bar(total: int, initial: int, desc: str):
    """An epoch's tqdm bar on stderr (it disappears when the epoch ends; the log lines stay)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class StepLog:
    """Writes the training rows of a run.

    Args:
        ctx: this process's rank and world; ``metrics``: the run's MetricsLog; ``out``: the run folder
            (its ``last.pt`` is named when a loss is not finite); ``global_batch``: images a step;
            ``global_step``: (stage, step) -> step over the whole run; ``headline``: the latest
            monitor as text for the progress bar (or None).

        total_steps: the run's steps in all (for the time estimate; 0: no estimate).

    Attributes:
        collapsed: stages whose pruner removed (nearly) the whole queue (saved in checkpoints).
        estimate: None until the run's time is estimated, then ``{"seconds_per_step", "total_steps",
            "total_seconds", "at_step"}``: the second logging window of this process's steps (the
            first holds start-up costs) times the run's steps; validation and checkpoints not counted.
    """

    def __init__(
        self,
        ctx,
        metrics,
        out: Path,
        global_batch: int,
        global_step: Callable[[int, int], int],
        headline: Callable[[], str | None] = lambda: None,
        total_steps: int = 0,
    ):
        self.ctx, self.metrics, self.out, self.global_batch = ctx, metrics, Path(out), global_batch
        self.global_step, self.headline, self.total_steps = global_step, headline, total_steps
        self.collapsed: set[int] = set()
        self.estimate: dict | None = None
        self._windows = 0

    def flush(self, stage: int, n: int, epoch: int, window: Window, bar, stopper) -> bool:
        """Reduces ``window`` across ranks, checks and logs its steps. ``stopper``: this rank's
        :class:`~adam_ext.pretrain.parts.Stopper`. Returns True when any rank was signalled (the run
        stops after this step everywhere; ``stopper.signal`` then says so on every rank)."""
        losses, pruned, steps = window.losses, window.pruned, window.steps
        flag = torch.tensor([1.0 if stopper.signal is not None else 0.0], device=losses[0].device)
        packed = torch.cat([torch.stack(losses), torch.stack(pruned), flag])
        if self.ctx.distributed:
            dist.all_reduce(packed)
            packed[:-1] /= self.ctx.world
        packed = packed.cpu().tolist()
        k = len(losses)
        seconds = time.perf_counter() - window.t0
        rate = k * self.global_batch / seconds if seconds > 0 else float("nan")
        for (step, lr), loss, frac in zip(steps, packed[:k], packed[k : 2 * k]):
            if not math.isfinite(loss):
                last = self.out / "last.pt"
                kept = (
                    f"the last good checkpoint is {last}"
                    if last.is_file()
                    else "no checkpoint was written yet"
                )
                check_finite(
                    loss, f"stage {stage} (n={n}) epoch {epoch + 1} step {step}", f"training stopped; {kept}"
                )
            row = {
                "stage": stage,
                "n": n,
                "epoch": epoch + 1,
                "step": step,
                "loss": loss,
                "lr": lr,
                "pruned_fraction": frac,
                "images_per_s": rate,
            }
            self.metrics.log(
                row,
                {
                    "train/loss": loss,
                    "train/lr": lr,
                    "train/pruned_fraction": frac,
                    "train/images_per_s": rate,
                },
                self.global_step(stage, step),
            )
        self._warn_pruner(stage, n, steps[-1][0], sum(packed[k : 2 * k]) / k)
        self._estimate(seconds / k, self.global_step(stage, steps[-1][0]) + 1)
        if bar is not None:
            headline = self.headline()
            bar.set_postfix(
                loss=f"{packed[k - 1]:.4f}",
                lr=f"{steps[-1][1]:.3g}",
                pruned=f"{packed[2 * k - 1]:.3f}",
                img_s=f"{rate:.1f}",
                **({"monitor": headline} if headline else {}),
            )
        if packed[-1] > 0 and stopper.signal is None:
            stopper.signal = "a signal on another rank"
        return packed[-1] > 0

    def _estimate(self, seconds_per_step: float, at_step: int) -> None:
        """Estimates the run's time once, from this process's second logging window (printed on rank 0)."""
        self._windows += 1
        if self.estimate is not None or not self.total_steps or self._windows < 2:
            return
        total = seconds_per_step * self.total_steps
        self.estimate = {
            "seconds_per_step": round(seconds_per_step, 4),
            "total_steps": self.total_steps,
            "total_seconds": round(total, 1),
            "at_step": at_step,
        }
        if self.ctx.main:
            left = seconds_per_step * max(0, self.total_steps - at_step)
            print(
                f"adam pretrain: estimate: {self.total_steps} steps at {seconds_per_step:.3g} s a step = "
                f"{duration(total)} for the whole run, {duration(left)} from here (training steps only: "
                f"validation, monitors and checkpoints come on top)",
                flush=True,
            )

    def _warn_pruner(self, stage: int, n: int, step: int, mean_pruned: float) -> None:
        if mean_pruned > COLLAPSE_PRUNED and stage not in self.collapsed:
            self.collapsed.add(stage)
            if self.ctx.main:
                print(
                    f"adam pretrain: warning: at stage {stage} (n={n}) step {step} the pruner removed "
                    f"{100 * mean_pruned:.1f}% of the queue: (nearly) every key is at least gamma similar to every "
                    f"query, the loss tends to 0 and its gradient vanishes (representation collapse). Lower gamma, "
                    f"or train the previous stage longer; the best checkpoint is chosen by the unpruned validation "
                    f"loss unless val_pruning is set.",
                    file=sys.stderr,
                    flush=True,
                )
