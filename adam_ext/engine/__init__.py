"""Training infrastructure shared by the two loops (pretraining and fine-tuning).

* :mod:`.training` — mixed precision (:func:`amp_dtype`, :func:`autocast`), the warm-up + cosine
  learning-rate schedule (:func:`cosine_schedule`), sums over ranks (:func:`all_sum`) and the
  finite-loss stop (:func:`check_finite`, :class:`NonFiniteLossError`).
* :mod:`.timing` — :class:`PhaseTimer`: wall-clock seconds per phase of each step, for benchmarks
  (a loop without one runs as before).
* where a measurement was made (:func:`machine`, :func:`cpu_model`, :func:`git_commit`: the
  provenance benchmarks and checkpoints record).
* :mod:`.metrics` — :class:`MetricsLog`: ``metrics.jsonl`` (one JSON row per line, appended in one
  write, never through a link) and optionally TensorBoard, written by rank 0.
"""

from .._util.provenance import cpu_model, git_commit, machine
from .metrics import MetricsLog
from .timing import STEP_PHASES, PhaseTimer
from .training import (
    NonFiniteLossError,
    all_sum,
    amp_dtype,
    autocast,
    check_finite,
    cosine_schedule,
    lr_factor,
)

__all__ = [
    "STEP_PHASES",
    "MetricsLog",
    "NonFiniteLossError",
    "PhaseTimer",
    "all_sum",
    "amp_dtype",
    "autocast",
    "check_finite",
    "cosine_schedule",
    "cpu_model",
    "git_commit",
    "lr_factor",
    "machine",
]
