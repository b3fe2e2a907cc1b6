"""Pure-PyTorch reference of the purposively pruned InfoNCE loss.

Vectorised and written the way a user would write it without adam_ext:
normalise, one matrix product for all negative similarities, ``masked_fill``
for the pruner, ``cross_entropy`` with the positive at index 0. It materialises
the (B, 1 + K) logit matrix. It is the oracle of the tests and the baseline of
the benchmarks; :func:`adam_ext.pruned_info_nce` must agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate


def pruned_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    *,
    temperature: float = 0.2,
    gamma=None,
    reduction: str = "mean",
    return_pruned: bool = False,
):
    """Reference InfoNCE with purposive pruning; same signature as :func:`adam_ext.pruned_info_nce`.

    Args:
        q (Tensor[B, D]): queries (any scale; normalised here).
        k (Tensor[B, D]): positive keys.
        queue (Tensor[K, D]): memory bank of (normalised) negative keys, any strides (MoCo's (D, K)
            buffer as ``queue.t()``); no gradient flows to it.
        temperature (float): softmax temperature τ ≥ 1e-4.
        gamma (float | Tensor[B] | None): keys with similarity ≥ γ to the query are removed;
            ``None`` (the default) removes none: MoCo's InfoNCE.
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"`` (per-query losses, Tensor[B]).
        return_pruned (bool): also return the per-query count of removed keys (Tensor[B], int64).

    Returns:
        The loss in the common dtype of the inputs, or ``(loss, pruned)``. A query with a similarity
        that is not finite has a NaN loss (never pruned), as in the fused operator.
    """
    q, k, queue, temperature, gamma_scalar, gamma_rows, reduction = _validate.prepare(
        q, k, queue, temperature, gamma, reduction
    )
    qn = F.normalize(q, dim=1)
    kn = F.normalize(k, dim=1)
    pos = (qn * kn).sum(dim=1, keepdim=True)
    neg = qn @ queue.T
    # Non-finite never hides (csrc/pruned_info_nce.h): a similarity that is not finite is NaN and is
    # never pruned, so it makes the query's loss NaN (a pruned NaN key once gave a finite loss and NaN
    # gradients). A NaN threshold still removes every finite key.
    neg = neg.masked_fill(~neg.isfinite(), float("nan"))
    if gamma_scalar is None and gamma_rows is None:
        pruned = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    else:
        threshold = gamma_scalar if gamma_rows is None else gamma_rows.to(neg.dtype)[:, None]
        removed = ~(neg < threshold) & ~neg.isnan()
        neg = neg.masked_fill(removed, float("-inf"))
        pruned = removed.sum(dim=1)
    logits = torch.cat([pos, neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss_rows = F.cross_entropy(logits, labels, reduction="none")
    loss_rows = _validate.nan_where_gamma_is_nan(loss_rows, gamma_rows)
    loss = _validate.reduce(loss_rows, reduction)
    return (loss, pruned) if return_pruned else loss


def official_loop_pruned_info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, temperature: float = 0.2, gamma=None
) -> torch.Tensor:
    """The official Adam implementation's loss, transcribed literally (mean reduction).

    One Python iteration per query: the row of negative similarities is
    compacted with ``mask = c < gamma`` (the positive always kept) and a
    cross-entropy is taken over ``[positive, kept negatives]``. Slow by design:
    it is the baseline the fused operator replaces, and a second, independent
    oracle for the tests. ``gamma`` is a number or None (the default: MoCo's InfoNCE). Unlike the
    fused operator it prunes a NaN similarity (``NaN < γ`` is false), as the official code does.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach().T)
    losses = []
    for i in range(q.shape[0]):
        c = l_neg[i]
        negatives = c if gamma is None else c[c < gamma]
        logits = torch.cat([l_pos[i], negatives]).unsqueeze(0) / temperature
        target = torch.zeros(1, dtype=torch.long, device=q.device)
        losses.append(F.cross_entropy(logits, target))
    return torch.stack(losses).mean()
