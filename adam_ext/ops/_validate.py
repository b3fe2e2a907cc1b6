"""Argument validation shared by the fused operator's wrapper and the reference.

Shape and device checks of the fused operator are done once, in C++
(``csrc/checks.h``), so that ``torch.ops.adam_ext.*`` callers get them too;
this module checks what must be settled before dispatch: Python types, the
dtype, the temperature, the threshold and the reduction.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

REDUCTIONS = ("mean", "sum", "none")
#: The smallest temperature accepted: every logit is at most 1/τ, and float32 similarities carry an
#: absolute rounding error of about 6e-8, i.e. ~6e-4 per logit at τ = 1e-4; below it the loss is rounding
#: noise (and 1/τ overflows float32 below ~3e-39). MoCo uses 0.07–0.2, CLIP clamps its learned τ at 0.01.
#: The C++ checks use the same bound (``kMinTemperature`` in csrc/pruned_info_nce.h).
MIN_TEMPERATURE = 1e-4
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_tensor(name: str, x) -> None:
    """Raises TypeError unless ``x`` is a floating-point tensor of a supported dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32, float64, bfloat16 or float16 tensor, got {x.dtype}")


def check_devices(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> None:
    """Raises ValueError unless k and queue are on q's device."""
    for name, x in (("k", k), ("queue", queue)):
        if x.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {x.device}")


def check_temperature(temperature) -> float:
    """Returns the temperature as a float; raises ValueError unless finite and >= :data:`MIN_TEMPERATURE`."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise ValueError(
            f"temperature must be a finite number >= {MIN_TEMPERATURE} (every logit is at most 1/temperature), "
            f"got {temperature}"
        )
    return temperature


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def split_gamma(gamma, q: torch.Tensor):
    """Splits ``gamma`` into (scalar or None, (B,) tensor or None).

    A number must be in [-1, 1]; a 0-d tensor is broadcast to every query; a (B,)
    tensor gives one threshold per query (+inf keeps every key of that query,
    -inf prunes every key, NaN makes that query's loss NaN). Tensors are read on
    the device, never synchronised to the host.
    """
    if gamma is None:
        return None, None
    if isinstance(gamma, torch.Tensor):
        if not gamma.is_floating_point():
            raise TypeError(f"gamma given as a tensor must be floating point, got {gamma.dtype}")
        if gamma.dim() == 0:
            gamma = gamma.expand(q.shape[0])
        elif gamma.dim() != 1 or gamma.shape[0] != q.shape[0]:
            raise ValueError(
                f"gamma given as a tensor must be (B,) = ({q.shape[0]},), got {tuple(gamma.shape)}"
            )
        return None, gamma.detach()
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(
            f"gamma must be None, a number in [-1, 1] or a (B,) tensor, got {type(gamma).__name__}"
        )
    return check_gamma_number(gamma), None


def check_gamma_number(gamma) -> float:
    """Returns a scalar threshold as a float; raises unless it is a number in [-1, 1] (a cosine similarity).

    The caller has checked that ``gamma`` is a real number (the message of a wrong type depends on
    what the caller accepts: the functional also takes tensors, the module does not).
    """
    gamma = float(gamma)
    if not -1.0 <= gamma <= 1.0:  # NaN fails too
        raise ValueError(
            f"gamma must be in [-1, 1] (a cosine similarity), or None to disable pruning, got {gamma}"
        )
    return gamma


def common_dtype(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.dtype:
    """The dtype all three inputs are computed in: the promotion of theirs.

    A bf16 query and key (autocast) against the usual float32 queue buffer are
    computed in float32.
    """
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), queue.dtype)


def reduce(loss_rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss_rows.mean()
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows


def nan_where_gamma_is_nan(loss_rows: torch.Tensor, gamma_rows) -> torch.Tensor:
    """A NaN threshold makes that query's loss NaN rather than silently pruning everything.

    Used by the reference; the fused operator applies the same rule in C++ (csrc/pruned_info_nce.h).
    """
    if gamma_rows is None:
        return loss_rows
    return torch.where(torch.isnan(gamma_rows), torch.full_like(loss_rows, float("nan")), loss_rows)


class Prepared(NamedTuple):
    """Validated arguments, with q, k and queue cast to their common dtype."""

    q: torch.Tensor
    k: torch.Tensor
    queue: torch.Tensor
    temperature: float
    gamma: float | None
    gamma_rows: torch.Tensor | None
    reduction: str


def prepare(q, k, queue, temperature, gamma, reduction) -> Prepared:
    """Validates the arguments of the pruned InfoNCE loss (fused or reference).

    Raises TypeError or ValueError naming the argument. The queue is detached:
    the loss treats the memory bank as a constant.
    """
    for name, x in (("q", q), ("k", k), ("queue", queue)):
        check_tensor(name, x)
    check_devices(q, k, queue)
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    gamma_scalar, gamma_rows = split_gamma(gamma, q)
    dtype = common_dtype(q, k, queue)
    return Prepared(
        q.to(dtype), k.to(dtype), queue.detach().to(dtype), temperature, gamma_scalar, gamma_rows, reduction
    )
