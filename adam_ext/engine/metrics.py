"""A run's history: ``metrics.jsonl`` and optionally TensorBoard, written by rank 0 only (both loops)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from .._util import runfolder
from ..checkpoints import atomic_write_text

__all__ = ["MetricsLog"]


class MetricsLog:
    """metrics.jsonl and TensorBoard, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def truncate_after(self, stage: int, step: int) -> None:
        """Keeps what the checkpoint at (stage, ``step`` steps done) had seen: training rows of
        steps before ``step`` (a row's ``step`` is the step's index) and validation / monitor rows
        up to ``step`` (theirs is the number of steps done); a resumed run logs the rest again.
        A torn last line is dropped with a warning (:func:`adam_ext.runfolder.read_jsonl`)."""
        if not self.enabled or not self.path.is_file():
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = runfolder.read_jsonl(self.path)
        for w in caught:
            print(f"adam pretrain: warning: {w.message}", file=sys.stderr, flush=True)

        def seen(r):
            return r["stage"] < stage or (
                r["stage"] == stage and (r["step"] < step if "loss" in r else r["step"] <= step)
            )

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows if seen(r)))

    def log(self, row: dict, scalars: dict | None = None, global_step: int = 0) -> None:
        """Appends ``row`` (one JSON line) and writes ``scalars`` ({tag: value}) to TensorBoard."""
        if not self.enabled:
            return
        runfolder.append_line(self.path, json.dumps(row))
        if self.writer is not None:
            for name, value in (scalars or {}).items():
                if value is not None:
                    self.writer.add_scalar(name, value, global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
