"""Loss modules built on the fused operator."""

from __future__ import annotations

import torch
from torch import nn

from . import _validate
from . import pruned_info_nce


class PurposivePrunerLoss(nn.Module):
    """MoCo InfoNCE with Adam's purposive pruner, as an ``nn.Module``.

    Args:
        temperature (float): softmax temperature τ > 0 (default 0.2, MoCo v2).
        gamma (float | None): pruning threshold on cosine similarity (default 0.8, the
            paper); ``None`` disables pruning (the paper's stage n = 0).
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> criterion = PurposivePrunerLoss(temperature=0.2, gamma=0.8)
        >>> loss = criterion(q, k, queue)  # q, k: (B, D); queue: (K, D)
    """

    def __init__(self, temperature: float = 0.2, gamma: float | None = 0.8, reduction: str = "mean"):
        super().__init__()
        self.temperature = _validate.check_temperature(temperature)
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
