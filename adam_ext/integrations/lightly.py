"""lightly's MoCo loss with the purposive pruner: a drop-in for ``lightly.loss.NTXentLoss``.

lightly (https://github.com/lightly-ai/lightly) trains MoCo with
``NTXentLoss(temperature=..., memory_bank_size=(K, D))``: InfoNCE of ``out0`` (queries) against
``out1`` (positive keys) and a memory bank of earlier keys. :class:`PrunedNTXentLoss` takes the same
arguments plus ``gamma`` and computes the loss with the fused :func:`adam_ext.pruned_info_nce`
(the B×K logit matrix is never materialised), over lightly's own ``MemoryBankModule``, so that
everything lightly does with the bank still holds: the same buffers under the same names
(``memory_bank.bank``, ``memory_bank.bank_ptr``), its initialisation, its update rule and its
gathering of keys across processes (``gather_distributed=True``).

What lightly 1.6's ``NTXentLoss`` does with a memory bank, and this class does the same:

- ``out0`` is the query and ``out1`` the positive key; both are L2-normalised and both receive
  gradients (in MoCo ``out1`` comes from the momentum encoder and has none to receive).
- The bank holds the normalised keys as a (K, D) buffer (rows are keys; lightly hands its loss the
  transposed (D, K) view, this class reads the (K, D) rows directly) and starts as normalised
  Gaussian noise. A class holding a bank is its own ``memory_bank`` attribute, not a subclass of
  ``MemoryBankModule``.
- The loss uses the bank as it was before the call; then, only if ``out0`` requires a gradient
  (training, not evaluation), the normalised, detached ``out1`` is enqueued at ``bank_ptr``. When
  the batch does not fit before the end of the bank, lightly writes the part that fits and restarts
  at row 0, dropping the rest of that batch: kept as is, so that both losses fill the bank alike.
- The bank's buffers are not persistent (lightly registers them with ``persistent=False``): the
  state dict of either loss is empty, so checkpoints load strictly into one another, and the bank
  restarts from noise when a run resumes, as it does with lightly.

What differs: ``gamma`` (the purposive pruner: negatives at least ``gamma`` similar to the query
are removed; ``None``, the default, gives lightly's loss), ``temperature`` must be at least 1e-4
(lightly also accepts negative values), keys that are not finite are refused (ValueError) instead
of being written into the bank, where they would turn every later loss into NaN for K / B steps,
and the memory bank is required: without one lightly's loss uses the other samples of the batch as
negatives (SimCLR), which this class refuses with a ValueError rather than silently computing
something else; use ``lightly.loss.NTXentLoss`` there.

Example:
    >>> from adam_ext.integrations.lightly import PrunedNTXentLoss
    >>> criterion = PrunedNTXentLoss(temperature=0.2, memory_bank_size=(4096, 128), gamma=0.8)
    >>> loss = criterion(query, key)   # query = model(x0), key = model.forward_momentum(x1)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

try:
    from lightly.models.modules.memory_bank import MemoryBankModule
except ImportError as exc:  # lightly is an optional dependency (the `lightly` extra)
    raise ImportError(
        "adam_ext.integrations.lightly needs the lightly package: pip install adam_ext[lightly] "
        f"(lightly 1.6); importing it failed with: {exc}"
    ) from exc

__all__ = ["PrunedNTXentLoss"]


def _check_memory_bank_size(memory_bank_size) -> tuple[int, int]:
    """Returns ``(K, D)``; raises unless it is a pair of positive integers."""
    if isinstance(memory_bank_size, numbers.Integral) and not isinstance(memory_bank_size, bool):
        # A bare number is lightly's own spelling (0: no bank; older versions: K): a wrong value, not type.
        raise ValueError(
            "memory_bank_size must be (K, D) with K > 0 keys of dimension D > 0: PrunedNTXentLoss computes "
            "MoCo's loss over lightly's memory bank; without one (SimCLR's in-batch negatives) use "
            f"lightly.loss.NTXentLoss. Got {memory_bank_size!r}"
        )
    if (
        isinstance(memory_bank_size, (str, bytes))
        or not isinstance(memory_bank_size, Sequence)
        or len(memory_bank_size) != 2
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in memory_bank_size)
    ):
        raise TypeError(f"memory_bank_size must be a (K, D) pair of integers, got {memory_bank_size!r}")
    K, D = (int(n) for n in memory_bank_size)
    if K < 1 or D < 1:
        raise ValueError(
            f"memory_bank_size must be (K, D) with K > 0 keys of dimension D > 0, got ({K}, {D})"
        )
    return K, D


def _check_temperature(temperature) -> float:
    """Returns the temperature as a float; raises unless it is a finite number >= the operator's minimum."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a number >= {ops.MIN_TEMPERATURE}, got {type(temperature).__name__}"
        )
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= ops.MIN_TEMPERATURE):
        raise ValueError(
            f"temperature must be a finite number >= {ops.MIN_TEMPERATURE} (every logit is at most "
            f"1/temperature), got {temperature}"
        )
    return temperature


def _check_finite_keys(keys: torch.Tensor) -> None:
    """Raises ValueError naming the rows of ``keys`` (the normalised ``out1``) that are not finite.

    One host synchronisation (a bool) per training step: the price of refusing a key before it is
    written into the bank, where it would make every query's loss NaN until it is overwritten.
    """
    bad = ~torch.isfinite(keys).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"out1 (the keys to enqueue) has {len(rows)} row(s) that are not finite after normalisation "
            f"(rows {shown}): refusing to write them into the memory bank, where they would make every "
            "later loss NaN; the loss of this step is NaN too. Look for a NaN or inf upstream "
            "(the momentum encoder, AMP overflow)."
        )


def _check_gamma(gamma) -> float | None:
    """Returns the threshold as a float (or None); raises unless None or a number in [-1, 1]."""
    if gamma is None:
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(
            f"gamma must be None or a number in [-1, 1] (a cosine similarity), got {type(gamma).__name__}"
        )
    gamma = float(gamma)
    if not (math.isfinite(gamma) and -1.0 <= gamma <= 1.0):
        raise ValueError(
            f"gamma must be in [-1, 1] (a cosine similarity), or None to disable pruning, got {gamma}"
        )
    return gamma


class PrunedNTXentLoss(nn.Module):
    """lightly's ``NTXentLoss`` with a memory bank (MoCo), fused, with Adam's purposive pruner.

    For query ``b`` (row of ``out0``) with ``s⁺ = ô0_b·ô1_b`` and ``s_i = ô0_b·bank_i``:
    ``L_b = −s⁺/τ + log(exp(s⁺/τ) + Σ_{i: s_i < γ} exp(s_i/τ))``, averaged over the batch.
    With ``gamma=None`` this is the loss of ``NTXentLoss(temperature, memory_bank_size)``.

    Args:
        temperature (float): softmax temperature τ > 0 (lightly's default 0.5; MoCo v2 uses 0.2).
        memory_bank_size (tuple[int, int]): ``(K, D)``: K keys of dimension D (the projection's
            output size) in lightly's ``MemoryBankModule``. Required (lightly's default 0, no bank,
            raises ValueError).
        gather_distributed (bool): if True the keys of every process are gathered before they
            are enqueued (lightly's option, done by its memory bank).
        gamma (float | None): pruning threshold in [-1, 1] on the cosine similarity between a
            query and a bank key (the Adam paper: 0.8); ``None`` disables pruning.

    Attributes:
        memory_bank (MemoryBankModule): lightly's bank; ``memory_bank.bank`` is (K, D) float32.
        last_pruned (Tensor[B] | None): int64, the number of bank keys the pruner removed for each
            query of the last call (on the inputs' device, never synchronised; for logging).

    Raises:
        TypeError, ValueError: naming the argument, for a bad temperature (below 1e-4),
            memory_bank_size, gather_distributed or gamma; ValueError from :meth:`forward` when
            keys to enqueue are not finite.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: Sequence[int] | int = 0,
        gather_distributed: bool = False,
        gamma: float | None = None,
    ):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        bank_size = _check_memory_bank_size(memory_bank_size)
        if not isinstance(gather_distributed, bool):
            raise TypeError(f"gather_distributed must be a bool, got {type(gather_distributed).__name__}")
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available in this torch build"
            )
        self.gamma = _check_gamma(gamma)
        self.gather_distributed = gather_distributed
        self.memory_bank = MemoryBankModule(size=bank_size, gather_distributed=gather_distributed)
        self.last_pruned: torch.Tensor | None = None

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The loss of queries ``out0`` against keys ``out1`` and the bank; then enqueues ``out1``.

        Args:
            out0 (Tensor[B, D]): queries (projections of the first views), any scale.
            out1 (Tensor[B, D]): positive keys (projections of the second views; in MoCo the
                momentum encoder's), any scale. float32, float64, bfloat16 or float16 for both.

        Returns:
            Tensor[]: the mean loss, in the inputs' dtype (accumulated in float32, float64 for
            float64 inputs).

        Raises:
            ValueError: when ``out0`` requires a gradient (a training step, which enqueues) and a
                row of ``out1`` is not finite: nothing is written into the bank.
        """
        if out0.dim() != 2 or out1.shape != out0.shape:
            raise ValueError(
                f"out0 and out1 must both be (B, D), got {tuple(out0.shape)} and {tuple(out1.shape)}"
            )
        bank = self.memory_bank.bank
        if out0.shape[1] != bank.shape[1]:
            raise ValueError(
                f"out0 must be (B, D) with D = {bank.shape[1]} like memory_bank_size, got {tuple(out0.shape)}"
            )
        # lightly moves the bank to the queries' device when the loss module was left elsewhere.
        bank = bank.to(out0.device)
        if not ops.EXTENSION_LOADED:  # the reference's backward reads the bank: keep it from the enqueue
            bank = bank.clone()
        loss, pruned = ops.pruned_info_nce(
            out0, out1, bank, temperature=self.temperature, gamma=self.gamma, return_pruned=True
        )
        self.last_pruned = pruned
        if out0.requires_grad:  # lightly's rule: only a step that will be backpropagated fills the bank
            # In place, before backward: the fused operator's backward never reads the bank, so it
            # needs neither lightly's copy of the bank (K x D per step) nor its forward; the
            # enqueue (and the gathering across processes) is lightly's own.
            keys = F.normalize(out1.detach(), dim=1)
            _check_finite_keys(keys)
            self.memory_bank._dequeue_and_enqueue(keys)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, memory_bank_size={tuple(self.memory_bank.size)}, "
            f"gather_distributed={self.gather_distributed}, gamma={self.gamma}"
        )
