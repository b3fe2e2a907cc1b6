"""The pieces of a training step both loops use: precision, schedule, reductions, the finite-loss stop."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

__all__ = [
    "NonFiniteLossError",
    "all_sum",
    "amp_dtype",
    "autocast",
    "check_finite",
    "cosine_schedule",
    "lr_factor",
]

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before saving the bad weights."""


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``auto``, ``none``, ``bf16``, ``fp16``) on ``device``: None off
    the GPU (mixed precision applies on CUDA only) or for ``none``; ``auto`` is bf16 on a GPU that
    supports it (Ampere and later), else off."""
    if device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    return _AMP.get(amp)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def lr_factor(total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1):
    """The learning-rate factor of step ``s``: linear warm-up over ``warmup_steps``, then a cosine
    from 1 to 0 at ``total_steps`` (held at 0 after it). ``steps_per_epoch`` > 1 holds the factor
    for an epoch at its first step's value (the official Adam code sets the rate once an epoch:
    ½(1 + cos(π e / E)) at epoch e of E, never 0)."""

    def factor(step: int) -> float:
        step -= step % steps_per_epoch
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def cosine_schedule(
    optimizer, total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule of :func:`lr_factor` (call ``step()`` after every optimiser step); the factor
    changes every step, or once an epoch of ``steps_per_epoch`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total_steps, warmup_steps, steps_per_epoch))


def all_sum(ctx, *values: torch.Tensor) -> list[float]:
    """The sums over all ranks of scalar tensors (float64), in one collective; plain values alone."""
    packed = torch.stack([v.double() for v in values])
    if ctx.distributed:
        dist.all_reduce(packed)
    return packed.tolist()


def check_finite(value: float, where: str, advice: str) -> None:
    """Raises :class:`NonFiniteLossError` ``loss is VALUE at WHERE; ADVICE`` when ``value`` is NaN or inf."""
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss is {value} at {where}; {advice}")
