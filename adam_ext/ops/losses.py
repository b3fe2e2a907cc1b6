"""Loss modules built on the fused operator."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from . import _validate, pruned_info_nce


class PurposivePrunerLoss(nn.Module):
    """MoCo InfoNCE as an ``nn.Module``, with Adam's purposive pruner when ``gamma`` is given.

    Args:
        temperature (float): softmax temperature τ ≥ 1e-4 (default 0.2, MoCo v2).
        gamma (float | None): ``None`` (the default) disables pruning: MoCo's InfoNCE, the
            loss of ``CrossEntropyLoss`` over the (B, 1 + K) logits. A number in [-1, 1] is the
            pruning threshold on cosine similarity (the paper: 0.8 at stages n > 0). One
            threshold per query (a Tensor[B]) is for :func:`adam_ext.pruned_info_nce` called
            directly: a module's threshold is fixed when it is built, B is not.
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        TypeError, ValueError: naming the argument, for a temperature below 1e-4, a gamma that is
            not None or a number in [-1, 1], an unknown reduction.

    Example:
        >>> criterion = PurposivePrunerLoss(temperature=0.2, gamma=0.8)
        >>> loss = criterion(q, k, queue)  # q, k: (B, D); queue: (K, D), or MoCo's (D, K) buffer .t()
    """

    def __init__(self, temperature: float = 0.2, gamma: float | None = None, reduction: str = "mean"):
        super().__init__()
        self.temperature = _validate.check_temperature(temperature)
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, numbers.Real)):
            raise TypeError(
                "gamma of PurposivePrunerLoss must be None or a number in [-1, 1]; for one threshold per "
                f"query pass gamma=Tensor[B] to adam_ext.pruned_info_nce. Got {type(gamma).__name__}"
            )
        self.gamma = None if gamma is None else _validate.check_gamma_number(gamma)
        self.reduction = _validate.check_reduction(reduction)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, return_pruned: bool = False):
        """See :func:`adam_ext.pruned_info_nce`; returns the loss, or ``(loss, pruned)``."""
        return pruned_info_nce(
            q,
            k,
            queue,
            temperature=self.temperature,
            gamma=self.gamma,
            reduction=self.reduction,
            return_pruned=return_pruned,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gamma={self.gamma}, reduction={self.reduction!r}"
