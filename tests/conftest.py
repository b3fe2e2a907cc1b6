"""Shared fixtures: devices, seeds, inputs with planted near-duplicate keys, one-thread modules and
the small synthetic data set of the Eve tests."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")),
]
# Planted similarities stay at least 0.02 away from every threshold the tests use.
PLANTED_SIMILARITIES = (0.3, 0.55, 0.7, 0.9, 0.97, 0.99)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    CI machine's 2 cores are shared, and 2 contended threads run convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def eve_data(tmp_path_factory):
    """8 synthetic 64-px films with landmarks and boxes, and a torchvision resnet18 state dict
    (seeded random weights): ``(data root, weights path)``."""
    import torchvision

    from adam_ext.data.synthetic import generate

    root = tmp_path_factory.mktemp("eve_data")
    generate(root / "data", 8, size=64, workers=1, progress=False)
    weights = root / "tv_resnet18.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    return root / "data", weights


@pytest.fixture(scope="session")
def driver_data(tmp_path_factory):
    """24 synthetic 64-px radiographs for the drivers in python/ (gamma ablation, learning curve):
    ChestX-ray14 layout for pretraining, SCR layout under scr/ for few-shot segmentation."""
    from adam_ext.data.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("driver_data"), 24, size=64, seed=0, workers=1, progress=False
    )  # 17 train: 4 steps of 4


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
    q = torch.randn(B, D, generator=g, dtype=torch.float64) * (
        0.5 + 3 * torch.rand(B, 1, generator=g, dtype=torch.float64)
    )
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


@pytest.fixture(scope="session")
def run_data(tmp_path_factory):
    """The 32 synthetic films of the tiny pretraining runs (tests/_runs.py)."""
    from _runs import make_data

    return make_data(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="session")
def reference_run(run_data, tmp_path_factory):
    """One uninterrupted tiny two-stage run, the yardstick of the resume tests: ``(out, summary,
    entry)``, ``entry`` the model's state as each stage began. It runs on one thread, like every
    test that compares weights with it bit for bit (``one_thread``; OMP_NUM_THREADS=1 in
    subprocesses): sums split over two threads round differently."""
    from _runs import tiny

    from adam_ext.pretrain import loop, pretrain

    out = tmp_path_factory.mktemp("ref") / "run"
    entry = {}
    original = loop.Trainer.run_stage

    def run_stage(self, stage, resume):
        entry[stage] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original(self, stage, resume)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons need the thread count of the compared runs: one
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop.Trainer, "run_stage", run_stage)
            summary = pretrain(tiny(run_data, out), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, summary, entry
