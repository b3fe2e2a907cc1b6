"""Shared fixtures: devices, seeds and inputs with planted near-duplicate keys."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here"))]
# Planted similarities stay at least 0.02 away from every threshold the tests use.
PLANTED_SIMILARITIES = (0.3, 0.55, 0.7, 0.9, 0.97, 0.99)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def seed(request):
    """A fresh seed per test, derived from its name so failures reproduce."""
    return zlib.crc32(request.node.nodeid.encode())


def make_inputs(B, K, D, *, seed, dtype=torch.float32, device="cpu", planted=None):
    """Random q, k (any scale) and a unit-norm queue with planted near-duplicates.

    ``planted`` queue rows (default min(K, max(2B, 12))) are built to have an exact
    cosine similarity, cycling through PLANTED_SIMILARITIES, with a random query, so
    that pruning at γ in {0.5, 0.8} really removes keys. Returns float64 masters
    (q, k, queue) and their casts to ``dtype`` on ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, generator=g, dtype=torch.float64) * (0.5 + 3 * torch.rand(B, 1, generator=g, dtype=torch.float64))
    k = q + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    n_plant = min(K, max(2 * B, 12)) if planted is None else planted
    if n_plant and D > 1:
        rows = torch.randperm(K, generator=g)[:n_plant]
        owners = torch.randint(0, B, (n_plant,), generator=g)
        sims = torch.tensor(PLANTED_SIMILARITIES, dtype=torch.float64).repeat(n_plant)[:n_plant]
        u = F.normalize(q[owners], dim=1)
        v = torch.randn(n_plant, D, generator=g, dtype=torch.float64)
        v = F.normalize(v - (v * u).sum(1, keepdim=True) * u, dim=1)
        queue[rows] = sims[:, None] * u + (1 - sims[:, None] ** 2).sqrt() * v
    cast = dict(dtype=dtype, device=device)
    # The masters are the cast values seen in float64, so oracle and subject see the same numbers.
    q_c, k_c, queue_c = q.to(**cast), k.to(**cast), queue.to(**cast)
    return (q_c.double().cpu(), k_c.double().cpu(), queue_c.double().cpu()), (q_c, k_c, queue_c)


def similarities(q64, queue64):
    """(B, K) float64 cosine similarities of the queries with the queue rows."""
    return F.normalize(q64, dim=1) @ queue64.T


def ambiguous_counts(q64, queue64, gamma, band):
    """Per query, how many keys lie within ``band`` of γ (where rounding may flip the mask)."""
    if gamma is None:
        return torch.zeros(q64.shape[0], dtype=torch.int64)
    return ((similarities(q64, queue64) - gamma).abs() < band).sum(1)
