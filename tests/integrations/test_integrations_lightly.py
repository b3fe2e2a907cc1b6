"""adam_ext.integrations.lightly: PrunedNTXentLoss against lightly's own NTXentLoss (float64: loss,
gradients of both inputs, the memory bank after steps that wrap around it, on one process and on two
gloo ranks), the pruner against a dense reference written here, lightly's state dict, bad
arguments, the error when lightly is absent, and python/examples/lightly_moco.py end to end.

Everything but the missing-lightly test needs lightly (the ``lightly`` extra; requirements.txt pins
it) and is skipped without it."""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _programs import load
from _ranks import launch_two_ranks
from conftest import make_inputs
from torch import nn

REPO = Path(__file__).resolve().parents[2]
T = 0.2


@pytest.fixture(scope="module")
def lightly():
    """``(NTXentLoss, PrunedNTXentLoss)``; skips the test when lightly is not installed."""
    pytest.importorskip("lightly", reason="lightly is not installed (pip install adam_ext[lightly])")
    from lightly.loss import NTXentLoss

    from adam_ext.integrations.lightly import PrunedNTXentLoss

    return NTXentLoss, PrunedNTXentLoss


def pair(lightly, K, D, seed, gamma=None, device="cpu", dtype=torch.float64):
    """lightly's loss and ours, built from the same seed (so with the same initial bank)."""
    NTXentLoss, PrunedNTXentLoss = lightly
    torch.manual_seed(seed)
    theirs = NTXentLoss(temperature=T, memory_bank_size=(K, D))
    torch.manual_seed(seed)
    ours = PrunedNTXentLoss(temperature=T, memory_bank_size=(K, D), gamma=gamma)
    return theirs.to(device, dtype), ours.to(device, dtype)


def step(criterion, out0, out1):
    """One call: ``(loss, grad of out0, grad of out1 or None)`` on fresh leaves."""
    x0 = out0.detach().clone().requires_grad_(out0.requires_grad)
    x1 = out1.detach().clone().requires_grad_(out1.requires_grad)
    loss = criterion(x0, x1)
    wrt = [x for x in (x0, x1) if x.requires_grad]
    grads = list(torch.autograd.grad(loss, wrt)) if wrt else []
    return (
        loss.detach(),
        (grads.pop(0) if x0.requires_grad else None),
        (grads.pop(0) if x1.requires_grad else None),
    )


def dense_reference(out0, out1, bank, gamma):
    """The pruned InfoNCE of DESIGN.md, every logit materialised: ``(loss, pruned per query)``."""
    q, k = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    sim = q @ bank.T
    drop = torch.zeros_like(sim, dtype=torch.bool) if gamma is None else sim >= gamma
    logits = torch.cat([(q * k).sum(1, keepdim=True), sim.masked_fill(drop, -math.inf)], dim=1) / T
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean(), drop.sum(1)


# ---- lightly absent ---------------------------------------------------------------------------------


def test_import_without_lightly_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "lightly" or m.startswith("lightly.")] + ["lightly"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "not installed"
    monkeypatch.delitem(sys.modules, "adam_ext.integrations.lightly", raising=False)
    with pytest.raises(ImportError, match=re.escape("pip install adam_ext[lightly]")):
        importlib.import_module("adam_ext.integrations.lightly")


def test_bench_says_when_lightly_is_absent(monkeypatch, tmp_path):
    bench = load("benchmarks/bench_loss.py")
    for name in [m for m in sys.modules if m == "lightly" or m.startswith("lightly.")] + ["lightly"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "adam_ext.integrations.lightly", raising=False)
    out = tmp_path / "bench.md"
    assert bench.main(["--lightly-only", "--lightly-size", "4,100", "--out", str(out)]) == 0
    assert "lightly rows skipped: lightly is not installed (pip install adam_ext[lightly])" in out.read_text()


# ---- parity with lightly's NTXentLoss ---------------------------------------------------------------


@pytest.mark.parametrize("key_grad", [False, True], ids=["moco-detached-keys", "keys-with-grad"])
def test_equals_lightly_over_steps_that_wrap_the_bank(lightly, device, seed, key_grad):
    K, D, B = 50, 16, 8  # 8 steps of 8 keys: lightly's bank wraps at step 7 (drops 6 keys there)
    theirs, ours = pair(lightly, K, D, seed, device=device)
    assert torch.equal(theirs.memory_bank.bank, ours.memory_bank.bank)
    g = torch.Generator().manual_seed(seed)
    for i in range(8):
        out0 = torch.randn(B, D, generator=g, dtype=torch.float64).to(device).requires_grad_()
        out1 = out0.detach() + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64).to(device)
        out1 = out1.requires_grad_(key_grad)
        expected, got = step(theirs, out0, out1), step(ours, out0, out1)
        for e, o, what in zip(expected, got, ("loss", "grad out0", "grad out1")):
            if e is None:
                assert o is None, what
            else:
                torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12, msg=f"step {i}: {what}")
        assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank), f"step {i}"
        assert torch.equal(ours.memory_bank.bank_ptr, theirs.memory_bank.bank_ptr), f"step {i}"
    assert int(ours.memory_bank.bank_ptr) == 8  # wrapped: step 7 wrote 2 rows and restarted at 0
    torch.testing.assert_close(
        ours.memory_bank.bank.norm(dim=1), torch.ones(K, dtype=torch.float64, device=device)
    )


def test_evaluation_leaves_the_bank_alone_as_lightly_does(lightly, seed):
    theirs, ours = pair(lightly, 40, 8, seed)
    before = ours.memory_bank.bank.clone()
    out0, out1 = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        expected, got = theirs(out0, out1), ours(out0, out1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours.memory_bank.bank, before) and torch.equal(theirs.memory_bank.bank, before)
    assert int(ours.memory_bank.bank_ptr) == int(theirs.memory_bank.bank_ptr) == 0


def test_float32_training_dtype_matches_lightly(lightly, seed):
    """lightly's default dtype (its bank is float32): equal to float32 rounding."""
    theirs, ours = pair(lightly, 300, 32, seed, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        out0 = torch.randn(16, 32, generator=g).requires_grad_()
        out1 = out0.detach() + torch.randn(16, 32, generator=g)
        for e, o in zip(step(theirs, out0, out1)[:2], step(ours, out0, out1)[:2]):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.memory_bank.bank, theirs.memory_bank.bank, rtol=0, atol=0)


def test_reference_fallback_leaves_the_gradients_right(lightly, seed, monkeypatch):
    """Without the compiled extension the reference runs, and its backward reads the bank: the
    in-place enqueue must not reach it."""
    from adam_ext import ops

    monkeypatch.setattr(ops, "EXTENSION_LOADED", False)
    theirs, ours = pair(lightly, 30, 8, seed, dtype=torch.float32)
    out0 = torch.randn(5, 8).requires_grad_()
    out1 = torch.randn(5, 8).requires_grad_()
    expected = step(theirs, out0, out1)
    with pytest.warns(RuntimeWarning, match="running the reference"):
        got = step(ours, out0, out1)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)


# ---- the pruner --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.8, 0.5, 0.0, -1.0])
def test_pruning_equals_a_dense_reference(lightly, device, seed, gamma):
    B, K, D = 6, 64, 16
    theirs, ours = pair(lightly, K, D, seed, gamma=gamma, device=device)
    (q, k, planted), _ = make_inputs(B, K, D, seed=seed)  # bank rows planted at known similarities to q
    for bank in (theirs.memory_bank.bank, ours.memory_bank.bank):
        bank.copy_(planted)
    bank = planted.clone()
    out0, out1 = q.requires_grad_(), k.requires_grad_()
    expected_loss, expected_pruned = dense_reference(out0, out1, bank, gamma)
    expected = (expected_loss, *torch.autograd.grad(expected_loss, (out0, out1)))
    got = step(ours, out0.to(device), out1.to(device))
    for e, o, what in zip(expected, got, ("loss", "grad out0", "grad out1")):
        torch.testing.assert_close(o.cpu(), e, rtol=1e-12, atol=1e-12, msg=what)
    assert torch.equal(ours.last_pruned.cpu(), expected_pruned)
    assert expected_pruned.sum() > 0  # the planted duplicates really were pruned
    if gamma == -1.0:  # every negative dropped: only the positive is left, the loss is 0
        assert abs(got[0].item()) < 1e-12 and ours.last_pruned.tolist() == [K] * B
    step(theirs, out0.to(device), out1.to(device))  # the pruner changes the loss, never what is enqueued
    assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)


# ---- checkpoints -------------------------------------------------------------------------------------


class Wrapper(nn.Module):
    """A model holding its criterion, as a LightningModule of lightly's examples does."""

    def __init__(self, criterion):
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.criterion = criterion


def test_state_dict_and_buffers_are_lightlys(lightly, seed):
    theirs, ours = pair(lightly, 20, 4, seed, dtype=torch.float32)
    assert list(ours.state_dict()) == list(
        theirs.state_dict()
    )  # [] in lightly 1.6: the bank is not persistent
    assert [(n, b.shape, b.dtype) for n, b in ours.named_buffers()] == [
        (n, b.shape, b.dtype) for n, b in theirs.named_buffers()
    ]
    assert [n for n, _ in ours.named_buffers()] == ["memory_bank.bank", "memory_bank.bank_ptr"]
    torch.manual_seed(seed)
    a = Wrapper(theirs)
    b = Wrapper(ours)
    b.load_state_dict(a.state_dict(), strict=True)  # a lightly checkpoint loads into ours ...
    a.load_state_dict(b.state_dict(), strict=True)  # ... and back
    assert torch.equal(a.head.weight, b.head.weight)


# ---- two processes ---------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import datetime, os, torch, torch.distributed as dist
    from lightly.loss import NTXentLoss
    from adam_ext.integrations.lightly import PrunedNTXentLoss
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    theirs = NTXentLoss(temperature=0.2, memory_bank_size=(10, 4), gather_distributed=True).double()
    torch.manual_seed(0)
    ours = PrunedNTXentLoss(temperature=0.2, memory_bank_size=(10, 4), gather_distributed=True, gamma=0.5).double()
    initial, keys = ours.memory_bank.bank.clone(), []
    g = torch.Generator().manual_seed(rank)
    for step in range(2):                      # 2 steps x 2 ranks x 3 keys
        out0 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        out1 = torch.randn(3, 4, generator=g, dtype=torch.float64)
        theirs(out0, out1).backward()
        ours(out0, out1)
        keys.append(torch.nn.functional.normalize(out1, dim=1))
    torch.save(dict(initial=initial, keys=keys, ours=ours.memory_bank.bank, theirs=theirs.memory_bank.bank,
                    ptr=ours.memory_bank.bank_ptr), os.path.join({out!r}, f"rank{{rank}}.pt"))
    dist.destroy_process_group()
    """
)


def test_gather_distributed_two_gloo_ranks(lightly, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(out=str(tmp_path)))
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    codes, outputs, _ = launch_two_ranks(
        [sys.executable, script], timeout=120, env={"PYTHONPATH": pythonpath}
    )
    assert codes == [0, 0], outputs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["ours"], r0["theirs"]) and torch.equal(r1["ours"], r1["theirs"])
    assert torch.equal(r0["ours"], r1["ours"])
    # Both ranks' keys, in rank order, step by step (6 + 6 > 10: the second step writes 4 and wraps).
    expected = r0["initial"].clone()
    expected[:6] = torch.cat([r0["keys"][0], r1["keys"][0]])
    expected[6:] = torch.cat([r0["keys"][1], r1["keys"][1]])[:4]
    torch.testing.assert_close(r0["ours"], expected, rtol=0, atol=1e-15)
    assert r0["ptr"].tolist() == [0]


# ---- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, r"temperature must be a finite number >= 0\.0001 .*got 0\.0"),
        ({"temperature": -0.2}, ValueError, r"temperature must be a finite number >= 0\.0001"),
        ({"temperature": float("nan")}, ValueError, r"temperature must be a finite number >= 0\.0001"),
        ({"temperature": 5e-324}, ValueError, r"temperature must be a finite number >= 0\.0001 .*got 5e-324"),
        ({"temperature": "0.2"}, TypeError, r"temperature must be a number >= 0\.0001, got str"),
        (
            {"memory_bank_size": 0},
            ValueError,
            r"memory_bank_size must be \(K, D\) .* use lightly.loss.NTXentLoss",
        ),
        ({"memory_bank_size": 4096}, ValueError, r"memory_bank_size must be \(K, D\) .*Got 4096"),
        (
            {"memory_bank_size": (0, 128)},
            ValueError,
            r"memory_bank_size must be \(K, D\) with K > 0 .*got \(0, 128\)",
        ),
        ({"memory_bank_size": (16, -1)}, ValueError, r"memory_bank_size .*got \(16, -1\)"),
        (
            {"memory_bank_size": (16,)},
            TypeError,
            r"memory_bank_size must be a \(K, D\) pair of integers, got \(16,\)",
        ),
        ({"memory_bank_size": (16, 8, 2)}, TypeError, r"memory_bank_size must be a \(K, D\) pair"),
        ({"memory_bank_size": (16.0, 8)}, TypeError, r"memory_bank_size must be a \(K, D\) pair"),
        ({"memory_bank_size": "ab"}, TypeError, r"memory_bank_size must be a \(K, D\) pair"),
        ({"memory_bank_size": None}, TypeError, r"memory_bank_size must be a \(K, D\) pair"),
        ({"memory_bank_size": True}, TypeError, r"memory_bank_size must be a \(K, D\) pair"),
        ({"gamma": 1.5}, ValueError, r"gamma must be in \[-1, 1\] .*got 1.5"),
        ({"gamma": -1.01}, ValueError, r"gamma must be in \[-1, 1\]"),
        ({"gamma": float("nan")}, ValueError, r"gamma must be in \[-1, 1\]"),
        ({"gamma": float("inf")}, ValueError, r"gamma must be in \[-1, 1\]"),
        ({"gamma": "0.8"}, TypeError, r"gamma must be None or a number in \[-1, 1\] .*got str"),
        ({"gamma": True}, TypeError, "gamma must be None or a number .*got bool"),
        ({"gather_distributed": "yes"}, TypeError, "gather_distributed must be a bool, got str"),
    ],
)
def test_bad_arguments_name_themselves(lightly, kwargs, error, match):
    _, PrunedNTXentLoss = lightly
    with pytest.raises(error, match=match):
        PrunedNTXentLoss(**{"temperature": 0.2, "memory_bank_size": (16, 8), **kwargs})


def test_bad_inputs_name_themselves(lightly):
    _, PrunedNTXentLoss = lightly
    criterion = PrunedNTXentLoss(0.2, (16, 8), gamma=0.8)
    with pytest.raises(ValueError, match=r"out0 and out1 must both be \(B, D\), got \(4, 8\) and \(4, 7\)"):
        criterion(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"out0 and out1 must both be \(B, D\), got \(8,\)"):
        criterion(torch.randn(8), torch.randn(8))
    with pytest.raises(
        ValueError, match=r"out0 must be \(B, D\) with D = 8 like memory_bank_size, got \(4, 6\)"
    ):
        criterion(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(TypeError, match="q must be a float32, float64, bfloat16 or float16 tensor"):
        criterion(torch.ones(4, 8, dtype=torch.int64), torch.ones(4, 8, dtype=torch.int64))
    assert "gamma=0.8" in repr(criterion) and "memory_bank_size=(16, 8)" in repr(criterion)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_keys_are_refused_not_enqueued(lightly, bad, seed):
    """Issue 24 (8): a NaN key enqueued by the adapter made every later loss NaN for K / B steps (with γ set:
    finite losses and NaN gradients). A training step with a key that is not finite is refused, naming the
    rows, and the bank and its pointer are left as they were; the next good step goes on."""
    _, ours = pair(lightly, 40, 8, seed, gamma=0.8, dtype=torch.float32)
    bank, ptr = ours.memory_bank.bank.clone(), ours.memory_bank.bank_ptr.clone()
    out0 = torch.randn(6, 8).requires_grad_()
    out1 = torch.randn(6, 8)
    out1[[2, 4], 3] = bad
    with pytest.raises(
        ValueError,
        match=r"out1 \(the keys to enqueue\) has 2 row\(s\) that are not finite .*"
        r"\(rows 2, 4\): refusing to write them into the memory bank",
    ):
        ours(out0, out1)
    assert torch.equal(ours.memory_bank.bank, bank) and torch.equal(ours.memory_bank.bank_ptr, ptr)
    loss = ours(out0, out1.nan_to_num(0.0, posinf=0.0))
    assert loss.isfinite() and int(ours.memory_bank.bank_ptr) == 6


def test_bench_rows_side_by_side(lightly, tmp_path):
    bench = load("benchmarks/bench_loss.py")
    out = tmp_path / "bench.md"
    assert (
        bench.main(["--lightly-only", "--lightly-size", "8,300", "--min-run-time", "0.01", "--out", str(out)])
        == 0
    )
    text = out.read_text()
    rows = re.findall(
        r"^\| (lightly NTXentLoss|PrunedNTXentLoss, γ=None|PrunedNTXentLoss, γ=0.8) \| ([\d.]+) \| ([\d.]+) \|",
        text,
        flags=re.MULTILINE,
    )
    assert [r[0] for r in rows] == [
        "lightly NTXentLoss",
        "PrunedNTXentLoss, γ=None",
        "PrunedNTXentLoss, γ=0.8",
    ]
    assert rows[0][2] == "1.00" and all(float(ms) > 0 for _, ms, _ in rows)
    assert "B=8, K=300, D=128" in text and "| fused |" not in text  # --lightly-only: no operator rows


# ---- lightly's MoCo example with the one changed line ------------------------------------------------


def test_lightly_moco_example_runs_on_fake_data(lightly, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "python" / "examples" / "lightly_moco.py"),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--fake-images",
        "32",
        "--memory-bank-size",
        "64",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step \d, loss: (\S+),", proc.stdout)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), proc.stdout
    assert re.search(r"epoch: 00, loss: \d+\.\d+", proc.stdout), proc.stdout
    assert "gamma=0.8" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing downloaded or written
