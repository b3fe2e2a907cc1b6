"""The end of a pretraining run: its summary, and after the last stage ``best.pt``, summary.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._util.atomic import atomic_write_text
from .._util.seeds import SPLIT_VERSION
from .config import PretrainConfig


def finish_run(
    cfg: PretrainConfig, ctx, checkpoints, stages: list, estimate, interrupted: bool, stopped_by: str | None
) -> dict:
    """The run's summary (what :meth:`~adam_ext.pretrain.loop.Trainer.run` returns).

    Args:
        cfg: the run's configuration; ``ctx``: this process's rank, world and device.
        checkpoints: the run's :class:`~adam_ext.engine.checkpointer.Checkpointer` (saves on rank 0).
        stages: each finished stage's summary line; ``estimate``: the run-time estimate of the step log.
        interrupted: a signal or ``max_steps`` stopped the run (then nothing is written);
            ``stopped_by``: what stopped it.
    """
    out, main = Path(cfg.out), ctx.main
    summary = {
        "interrupted": interrupted,
        "stopped_by": stopped_by if interrupted else None,
        "split_version": SPLIT_VERSION,
        "stages": stages,
        "estimate": estimate,
        "out": str(out),
        "config": str(out / "config.yaml"),
    }
    if not interrupted:
        last = out / f"stage{len(cfg.stages) - 1}_n{cfg.stages[-1]}" / "best.pt"
        checkpoints.save(
            out / "best.pt", torch.load(last, map_location="cpu", weights_only=True) if main else None
        )
        summary["best"] = str(out / "best.pt")
        if main:
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
            from .report import write_report

            summary["report"] = str(write_report(out))
    ctx.barrier()
    return summary
