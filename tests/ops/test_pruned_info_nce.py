"""Parity of the fused operator with the reference and the official per-row loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ambiguous_counts, make_inputs
from torch import nn
from torch.profiler import ProfilerActivity, profile

import adam_ext
from adam_ext import reference

GAMMAS = [None, 0.0, 0.5, 0.8, 1.0]
# Rounding of float32 similarities (~1e-6) can flip the mask of a key this close to γ.
BAND = 1e-5


def fused_and_grads(q, k, queue, **kw):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    loss, pruned = adam_ext.pruned_info_nce(q, k, queue, reduction="none", return_pruned=True, **kw)
    loss.sum().backward()
    return loss.detach(), pruned, q.grad, k.grad


def reference_and_grads(q, k, queue, **kw):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    loss, pruned = reference.pruned_info_nce(q, k, queue, reduction="none", return_pruned=True, **kw)
    loss.sum().backward()
    return loss.detach(), pruned, q.grad, k.grad


def assert_close_scaled(actual, expected, rtol, name, rows=None):
    """allclose with rtol and an atol of rtol times the largest magnitude expected (optionally on some rows)."""
    atol = rtol * max(expected.abs().max().item(), 1e-30)
    actual, expected = actual.double().cpu(), expected.double().cpu()
    if rows is not None:
        actual, expected = actual[rows], expected[rows]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_parity(got, want, rtol, slack):
    """Loss, gradients and counts agree; rows with keys within BAND of γ get 10x rtol (a mask flip there is legitimate)."""
    (loss, pruned, gq, gk), (r_loss, r_pruned, r_gq, r_gk) = got, want
    clear = slack == 0
    for a, b, name in ((loss, r_loss, "loss"), (gq, r_gq, "grad q"), (gk, r_gk, "grad k")):
        assert_close_scaled(a, b, rtol, name, rows=clear)
        assert_close_scaled(a, b, 10 * rtol, name, rows=~clear)
    assert ((pruned.cpu() - r_pruned).abs() <= slack).all(), (pruned, r_pruned, slack)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("D", [16, 128])
@pytest.mark.parametrize("K", [0, 1, 17, 4096, 65536])
@pytest.mark.parametrize("B", [1, 3, 64, 256])
def test_parity_float32_with_float64_reference(B, K, D, gamma, device, seed):
    masters, (q, k, queue) = make_inputs(B, K, D, seed=seed, device=device)
    loss, pruned, gq, gk = fused_and_grads(q, k, queue, gamma=gamma)
    r_loss, r_pruned, r_gq, r_gk = reference_and_grads(*masters, gamma=gamma)
    assert loss.dtype == torch.float32 and pruned.dtype == torch.int64
    slack = ambiguous_counts(masters[0], masters[2], gamma, BAND)
    assert_parity((loss, pruned, gq, gk), (r_loss, r_pruned, r_gq, r_gk), 1e-5, slack)
    if gamma in (0.5, 0.8) and K >= 17:
        assert r_pruned.sum() > 0, "the planted near-duplicates must make the pruner act"


@pytest.mark.parametrize("gamma", [None, 0.5, 0.8])
@pytest.mark.parametrize("B,K,D", [(1, 17, 16), (3, 300, 128), (64, 4096, 16), (256, 4096, 128)])
def test_parity_with_official_per_row_loop(B, K, D, gamma, seed):
    masters, (q, k, queue) = make_inputs(B, K, D, seed=seed, dtype=torch.float64)
    loss, _, gq, gk = fused_and_grads(q, k, queue, gamma=gamma)
    q_o, k_o = masters[0].clone().requires_grad_(), masters[1].clone().requires_grad_()
    official = reference.official_loop_pruned_info_nce(q_o, k_o, masters[2], temperature=0.2, gamma=gamma)
    official.backward()
    assert_close_scaled(loss.mean(), official.detach(), 1e-10, "loss")
    assert_close_scaled(gq / B, q_o.grad, 1e-10, "grad q")
    assert_close_scaled(gk / B, k_o.grad, 1e-10, "grad k")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [None, 0.8])
def test_reductions(reduction, gamma, device, seed):
    masters, (q, k, queue) = make_inputs(64, 4096, 128, seed=seed, device=device)
    q.requires_grad_()
    loss = adam_ext.pruned_info_nce(q, k, queue, gamma=gamma, reduction=reduction)
    q64 = masters[0].clone().requires_grad_()
    expected = reference.pruned_info_nce(q64, masters[1], masters[2], gamma=gamma, reduction=reduction)
    assert loss.shape == expected.shape == ((64,) if reduction == "none" else ())
    assert_close_scaled(loss.detach(), expected.detach(), 1e-5, "loss")
    weights = torch.rand(loss.shape, dtype=torch.float64)
    (loss * weights.to(loss)).sum().backward()
    (expected * weights).sum().backward()
    assert_close_scaled(q.grad, q64.grad, 1e-5, "grad q")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [None, 0.8])
@pytest.mark.parametrize("B,K,D", [(3, 17, 16), (64, 4096, 128), (256, 65536, 128)])
def test_low_precision(B, K, D, gamma, dtype, device, seed):
    masters, (q, k, queue) = make_inputs(B, K, D, seed=seed, dtype=dtype, device=device)
    loss, pruned, gq, gk = fused_and_grads(q, k, queue, gamma=gamma)
    r_loss, r_pruned, r_gq, r_gk = reference_and_grads(*masters, gamma=gamma)
    assert loss.dtype == gq.dtype == gk.dtype == dtype
    assert_close_scaled(loss, r_loss, 1e-2, "loss")
    assert_close_scaled(gq, r_gq, 1e-2, "grad q")
    assert_close_scaled(gk, r_gk, 1e-2, "grad k")
    # Judged against a same-dtype PyTorch run too: at most 2x its error (plus rounding of the output).
    same_dtype = reference.pruned_info_nce(q, k, queue, gamma=gamma, reduction="none").double().cpu()
    ours = (loss.double().cpu() - r_loss).abs().max()
    theirs = (same_dtype - r_loss).abs().max()
    assert ours <= 2 * theirs + r_loss.abs().max() * torch.finfo(dtype).eps
    slack = ambiguous_counts(masters[0], masters[2], gamma, BAND)
    assert ((pruned.cpu() - r_pruned).abs() <= slack).all()


def test_mixed_dtypes_promote(seed):
    """bf16 queries and keys (autocast) against a float32 queue are computed in float32."""
    masters, (q, k, queue) = make_inputs(8, 300, 32, seed=seed)
    loss = adam_ext.pruned_info_nce(q.bfloat16(), k.bfloat16(), queue)
    expected = reference.pruned_info_nce(q.bfloat16().double(), k.bfloat16().double(), masters[2])
    assert loss.dtype == torch.float32
    assert_close_scaled(loss, expected, 1e-5, "loss")


def test_everything_pruned_leaves_only_the_positive(device, seed):
    _, (q, k, queue) = make_inputs(5, 300, 16, seed=seed, device=device)
    loss, pruned, gq, gk = fused_and_grads(q, k, queue, gamma=-1.0)  # s < -1 holds for no key
    assert (pruned == 300).all()
    assert torch.equal(loss, torch.zeros_like(loss))  # -s+/τ + log(exp(s+/τ)) = 0
    assert gq.abs().max() < 1e-6 and gk.abs().max() < 1e-6


def test_nothing_pruned_equals_moco_infonce(device, seed):
    _, (q, k, queue) = make_inputs(16, 1000, 32, seed=seed, device=device)
    loss_none, pruned = adam_ext.pruned_info_nce(q, k, queue, gamma=None, return_pruned=True)
    keep_all = torch.full((16,), float("inf"), device=device)  # per query: s < +inf keeps every key
    loss_high, pruned_high = adam_ext.pruned_info_nce(q, k, queue, gamma=keep_all, return_pruned=True)
    assert (pruned == 0).all() and (pruned_high == 0).all()
    torch.testing.assert_close(loss_none, loss_high, rtol=0, atol=0)


def test_identical_keys_closed_form(device):
    """Every similarity equal to the positive's: the loss is log(K + 1)."""
    q = torch.randn(4, 64, device=device)
    K = 1000
    queue = torch.nn.functional.normalize(q[:1], dim=1).repeat(K, 1)
    loss = adam_ext.pruned_info_nce(
        q[:1].repeat(4, 1), q[:1].repeat(4, 1), queue, gamma=None, reduction="none"
    )
    torch.testing.assert_close(
        loss, torch.full_like(loss, torch.log(torch.tensor(K + 1.0)).item()), rtol=1e-5, atol=1e-5
    )


def test_zero_keys_in_queue(device, seed):
    _, (q, k, queue) = make_inputs(3, 0, 16, seed=seed, device=device)
    loss, pruned, gq, _gk = fused_and_grads(q, k, queue, gamma=0.8)
    assert torch.equal(loss, torch.zeros_like(loss)) and (pruned == 0).all()
    assert torch.equal(gq, torch.zeros_like(gq))


def test_per_query_gamma(device, seed):
    masters, (q, k, queue) = make_inputs(6, 4096, 128, seed=seed, device=device)
    gammas = torch.tensor([0.5, 0.8, 1.0, float("inf"), float("-inf"), 0.6], device=device)
    loss, pruned, gq, _ = fused_and_grads(q, k, queue, gamma=gammas)
    r_loss, r_pruned, r_gq, _ = reference_and_grads(*masters, gamma=gammas.cpu())
    assert_close_scaled(loss, r_loss, 1e-5, "loss")
    assert_close_scaled(gq, r_gq, 1e-5, "grad q")
    assert pruned[3] == 0 and pruned[4] == 4096 and loss[4] == 0
    for i in range(len(gammas)):
        single = adam_ext.pruned_info_nce(
            q[i : i + 1], k[i : i + 1], queue, gamma=gammas[i : i + 1], reduction="none"
        )
        torch.testing.assert_close(single[0], loss[i])
    torch.testing.assert_close(pruned.cpu(), r_pruned)


def test_nan_gamma_row_gives_nan_loss(device, seed):
    _, (q, k, queue) = make_inputs(3, 100, 16, seed=seed, device=device)
    gammas = torch.tensor([0.8, float("nan"), 0.8], device=device)
    loss = adam_ext.pruned_info_nce(q, k, queue, gamma=gammas, reduction="none")
    r = reference.pruned_info_nce(q, k, queue, gamma=gammas, reduction="none")
    assert loss[1].isnan() and r[1].isnan() and loss[0].isfinite() and loss[2].isfinite()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["q", "k", "queue"])
@pytest.mark.parametrize("gamma", [None, 0.8])
def test_non_finite_inputs_give_nan_like_the_reference(where, bad, gamma, device, seed):
    """Issue 24 (8): non-finite never hides. A non-finite similarity is NaN and never pruned: the rows
    it touches have a NaN loss *and* NaN gradients (one bad queue row touches every query), the other
    rows are untouched. Before, a NaN queue row with γ set was pruned: a finite loss, all-NaN gradients."""
    _, (q, k, queue) = make_inputs(4, 700, 16, seed=seed, device=device)
    {"q": q, "k": k, "queue": queue}[where][1, 3] = bad
    loss, _, gq, gk = fused_and_grads(q, k, queue, gamma=gamma)
    expected, _, r_gq, r_gk = reference_and_grads(q, k, queue, gamma=gamma)
    assert torch.equal(loss.isnan(), expected.isnan()), (loss, expected)
    nan_rows = (
        torch.arange(4, device=loss.device) == 1
        if where in ("q", "k")
        else torch.ones(4, dtype=torch.bool, device=loss.device)
    )
    assert torch.equal(loss.isnan(), nan_rows), loss
    for g, r_g in ((gq, r_gq), (gk, r_gk)):
        assert torch.equal(g.isnan().all(dim=1), nan_rows) and not g[~nan_rows].isnan().any()
        torch.testing.assert_close(g[~nan_rows], r_g[~nan_rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss[~nan_rows], expected[~nan_rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.8, -1.0, "rows"])
def test_a_nan_key_is_never_pruned_not_even_when_everything_else_is(gamma, device, seed):
    """The pruner does not remove a NaN similarity (NaN < γ is false, so it once counted as pruned):
    it stays and makes the loss NaN, whatever γ; the count of pruned keys leaves it out."""
    _, (q, k, queue) = make_inputs(3, 100, 16, seed=seed, device=device)
    queue[17] = float("nan")
    gamma = torch.full((3,), float("-inf"), device=device) if gamma == "rows" else gamma
    loss, pruned = adam_ext.pruned_info_nce(q, k, queue, gamma=gamma, reduction="none", return_pruned=True)
    r_loss, r_pruned = reference.pruned_info_nce(
        q, k, queue, gamma=gamma, reduction="none", return_pruned=True
    )
    assert loss.isnan().all() and r_loss.isnan().all()
    assert torch.equal(pruned.cpu(), r_pruned.cpu())
    if not isinstance(gamma, float) or gamma == -1.0:
        assert (pruned == 99).all()  # every finite key pruned, the NaN one kept


def test_non_contiguous_inputs(device, seed):
    masters, (q, k, queue) = make_inputs(32, 600, 64, seed=seed, device=device)
    q_nc = torch.stack([q, torch.zeros_like(q)], dim=2)[..., 0]
    k_nc = k.T.contiguous().T
    queue_nc = queue.T.contiguous().T
    assert not (q_nc.is_contiguous() or k_nc.is_contiguous() or queue_nc.is_contiguous())
    loss, _pruned, gq, gk = fused_and_grads(q_nc, k_nc, queue_nc, gamma=0.8)
    r_loss, _r_pruned, r_gq, r_gk = reference_and_grads(*masters, gamma=0.8)
    assert_close_scaled(loss, r_loss, 1e-5, "loss")
    assert_close_scaled(gq, r_gq, 1e-5, "grad q")
    assert_close_scaled(gk, r_gk, 1e-5, "grad k")


def test_zero_norm_query_matches_normalize_clamp(device, seed):
    _masters, (q, k, queue) = make_inputs(3, 50, 16, seed=seed, dtype=torch.float64, device=device)
    q[1] = 0
    loss, _, gq, _gk = fused_and_grads(q, k, queue, gamma=0.8)
    r_loss, _, r_gq, _r_gk = reference_and_grads(q.cpu(), k.cpu(), queue.cpu(), gamma=0.8)
    assert_close_scaled(loss, r_loss, 1e-10, "loss")
    assert_close_scaled(gq, r_gq, 1e-10, "grad q")


def test_queue_gets_no_gradient_and_key_only_gradient(device, seed):
    _, (q, k, queue) = make_inputs(4, 100, 16, seed=seed, device=device)
    queue.requires_grad_()
    k.requires_grad_()
    adam_ext.pruned_info_nce(q, k, queue).backward()
    assert queue.grad is None and k.grad is not None and k.grad.abs().sum() > 0


def test_no_grad_forward_matches(device, seed):
    _, (q, k, queue) = make_inputs(8, 1000, 32, seed=seed, device=device)
    with torch.no_grad():
        a = adam_ext.pruned_info_nce(q.requires_grad_(), k, queue, reduction="none")
    b = adam_ext.pruned_info_nce(q, k, queue, reduction="none")
    torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-6)


def test_inplace_enqueue_between_forward_and_backward(device, seed):
    """MoCo enqueues the new keys in place before backward: the gradient must be the forward's."""
    masters, (q, k, queue) = make_inputs(16, 256, 32, seed=seed, device=device)
    q.requires_grad_()
    loss = adam_ext.pruned_info_nce(q, k, queue, gamma=0.8)
    queue[:16] = torch.nn.functional.normalize(k, dim=1)  # the enqueue
    loss.backward()
    q64 = masters[0].clone().requires_grad_()
    reference.pruned_info_nce(q64, masters[1], masters[2], gamma=0.8).backward()
    assert_close_scaled(q.grad, q64.grad, 1e-5, "grad q")


def test_module_matches_function(device, seed):
    _, (q, k, queue) = make_inputs(8, 500, 32, seed=seed, device=device)
    criterion = adam_ext.PurposivePrunerLoss(temperature=0.1, gamma=0.7)
    loss, pruned = criterion(q, k, queue, return_pruned=True)
    expected, expected_pruned = adam_ext.pruned_info_nce(
        q, k, queue, temperature=0.1, gamma=0.7, return_pruned=True
    )
    assert torch.equal(loss, expected) and torch.equal(pruned, expected_pruned)
    assert "gamma=0.7" in repr(criterion)


@pytest.mark.parametrize("temperature", [0.01, 0.07, 1.0, 5.0])
def test_temperatures_including_very_small(temperature, device, seed):
    masters, (q, k, queue) = make_inputs(16, 3000, 64, seed=seed, device=device)
    loss, _, gq, _ = fused_and_grads(q, k, queue, gamma=0.8, temperature=temperature)
    r_loss, _, r_gq, _ = reference_and_grads(*masters, gamma=0.8, temperature=temperature)
    assert loss.isfinite().all()
    # float32 logits carry an absolute error of about eps/τ: the tolerance grows as τ shrinks.
    rtol = 1e-5 * max(1.0, 0.2 / temperature)
    assert_close_scaled(loss, r_loss, rtol, "loss")
    assert_close_scaled(gq, r_gq, rtol, "grad q")


def test_unnormalised_queue_is_still_exact(device, seed):
    """Rows far from unit norm break the 1/τ bound; the online maximum keeps it exact."""
    masters, (q, k, _queue) = make_inputs(8, 2000, 32, seed=seed, device=device)
    scale = torch.linspace(0.1, 30, 2000, dtype=torch.float64)[:, None]
    loss, _, gq, _ = fused_and_grads(q, k, (masters[2] * scale).float().to(device), gamma=None)
    r_loss, _, r_gq, _ = reference_and_grads(masters[0], masters[1], masters[2] * scale, gamma=None)
    assert_close_scaled(loss, r_loss, 1e-5, "loss")
    assert_close_scaled(gq, r_gq, 1e-5, "grad q")


def test_no_allocation_proportional_to_b_times_k(device):
    """B=1024, K=262,144: a logit matrix would be 1 GiB; the fused op's extra peak stays under 200 MB."""
    B, K, D = 1024, 262144, 128
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, D, generator=g).to(device).requires_grad_()
    k = torch.randn(B, D, generator=g).to(device)
    queue = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=1).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        adam_ext.pruned_info_nce(q, k, queue).backward()
        torch.cuda.synchronize()
        extra_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size to the current one
        except OSError:
            pytest.skip("cannot reset the peak RSS here")
        base = _status_kb("VmRSS")
        adam_ext.pruned_info_nce(q, k, queue).backward()
        extra_mb = (_status_kb("VmHWM") - base) / 1024
    assert extra_mb < 200, f"extra peak memory {extra_mb:.0f} MB"


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# ---- Equivalent by default, and MoCo's own (dim, K) queue without a copy (issue 22) -----------------


def moco_v2_loss(q, k, queue_dk, T):
    """MoCo v2's loss as its builder computes it (the well-known recipe, written here): normalised q and k,
    positive and negative logits by einsum against the (dim, K) queue, CrossEntropyLoss with label 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue_dk.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    return nn.CrossEntropyLoss()(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))


def loss_and_grads(fn, q, k, *args, **kw):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    loss = fn(q, k, *args, **kw)
    loss.backward()
    return loss.detach(), q.grad, k.grad


@pytest.mark.parametrize("layout", ["moco (dim, K) buffer .t()", "(K, D) rows"])
def test_default_gamma_is_mocos_cross_entropy(layout, device, seed):
    """Issue 22 (2): without gamma the functional and the module are MoCo's InfoNCE (float64, ~1e-15), even
    with near-duplicate keys in the queue that pruning at 0.8 would remove (so the test would see it on)."""
    _, (q, k, queue) = make_inputs(32, 1000, 64, seed=seed, dtype=torch.float64, device=device)
    queue_dk = queue.t().contiguous()
    queue_arg = queue_dk.t() if layout.startswith("moco") else queue
    expected = loss_and_grads(moco_v2_loss, q, k, queue_dk, 0.2)
    for fn in (adam_ext.pruned_info_nce, adam_ext.PurposivePrunerLoss()):
        got = loss_and_grads(fn, q, k, queue_arg)
        for a, b, name in zip(got, expected, ("loss", "grad q", "grad k")):
            assert_close_scaled(a, b, 1e-12, name)
    assert adam_ext.PurposivePrunerLoss().gamma is None and "gamma=None" in repr(
        adam_ext.PurposivePrunerLoss()
    )
    _, pruned = adam_ext.pruned_info_nce(q, k, queue_arg, return_pruned=True)
    assert (pruned == 0).all()
    pruning = adam_ext.pruned_info_nce(q, k, queue_arg, gamma=0.8)
    assert (pruning - expected[0]).abs() > 1e-3, (
        "the planted near-duplicates must change the loss when pruned"
    )


MOCO_SHAPES = [(1, 0, 16), (3, 1, 16), (5, 17, 3), (4, 300, 1), (64, 700, 128), (256, 4096, 128)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gamma", [None, 0.8, "rows"])
@pytest.mark.parametrize("B,K,D", MOCO_SHAPES)
def test_moco_queue_transposed_gives_the_rows_loss_and_gradients(B, K, D, gamma, dtype, device, seed):
    """Issue 22 (3): queue.t() of MoCo's contiguous (D, K) buffer (strides (1, K)), and the (K, D) rows of a
    wider (D, K + 5) buffer (strides (1, K + 5)), give the loss, gradients and counts of a contiguous
    (K, D) queue; in float64 both equal the reference."""
    masters, (q, k, queue) = make_inputs(B, K, D, seed=seed, dtype=dtype, device=device)
    if gamma == "rows":
        gamma = torch.linspace(0.5, 1.0, B, device=device)
    buffer = queue.t().contiguous()
    wider = torch.cat([buffer, torch.full((D, 5), float("nan"), dtype=dtype, device=device)], dim=1)
    views = {"(D, K) .t()": buffer.t(), "(D, K + 5)[:, :K] .t()": wider[:, :K].t()}
    assert views["(D, K) .t()"].stride() == (1, K) or min(K, D) <= 1
    assert views["(D, K + 5)[:, :K] .t()"].stride() == (1, K + 5)
    rows = fused_and_grads(q, k, queue, gamma=gamma)
    rtol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for name, view in views.items():
        cols = fused_and_grads(q, k, view, gamma=gamma)
        for a, b, what in zip(cols[:1] + cols[2:], rows[:1] + rows[2:], ("loss", "grad q", "grad k")):
            assert_close_scaled(a, b, rtol, f"{name}: {what}")
        assert torch.equal(cols[1], rows[1]), name
    if dtype == torch.float64 and D > 1:  # (at D = 1 every gradient is 0 up to rounding: nothing to compare)
        g = gamma.cpu().double() if isinstance(gamma, torch.Tensor) else gamma
        want = reference_and_grads(*masters, gamma=g)
        slack = ambiguous_counts(masters[0], masters[2], g if isinstance(g, float) else None, BAND)
        assert_parity(fused_and_grads(q, k, views["(D, K) .t()"], gamma=gamma), want, 1e-10, slack)


@pytest.mark.parametrize("gamma", [None, 0.8])
def test_inplace_enqueue_into_mocos_buffer_between_forward_and_backward(gamma, device, seed):
    """MoCo enqueues into its (dim, K) buffer in place before backward; the backward never reads the queue,
    so the gradients are the forward's even when the whole buffer is overwritten with NaN."""
    masters, (q, k, queue) = make_inputs(16, 256, 32, seed=seed, dtype=torch.float64, device=device)
    q, k, buffer = (
        q.clone(),
        k.clone(),
        queue.t().contiguous(),
    )  # (in float64 the masters are the same tensors)
    q.requires_grad_()
    k.requires_grad_()
    loss = adam_ext.pruned_info_nce(q, k, buffer.t(), gamma=gamma)
    buffer[:, :16] = F.normalize(k.detach(), dim=1).t()  # MoCo's enqueue: queue[:, ptr:ptr + B] = keys.T
    buffer[:, 16:] = float("nan")
    loss.backward()
    q64, k64 = (x.detach().clone().requires_grad_() for x in masters[:2])
    expected = reference.pruned_info_nce(q64, k64, masters[2], gamma=gamma)
    expected.backward()
    assert_close_scaled(loss.detach(), expected.detach(), 1e-12, "loss")
    assert_close_scaled(q.grad, q64.grad, 1e-10, "grad q")
    assert_close_scaled(k.grad, k64.grad, 1e-10, "grad k")


def allocated_bytes(step, device) -> int:
    """Bytes allocated while ``step()`` runs: on the CPU every allocation the profiler sees (the sum of the
    ops' positive self memory: a copy inside the operator is an aten::empty of its own), on CUDA the peak
    above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())


def test_moco_queue_is_read_in_place_not_copied(device):
    """Issue 22 (3): the kernels once copied the queue to contiguous memory on every call (32 MiB here,
    30-50 ms of a MoCo step at K = 65,536); queue.t() of MoCo's buffer now allocates what a (K, D) queue
    does. Other strides are still copied, and the check sees that copy."""
    B, K, D = 8, 65536, 128
    g = torch.Generator().manual_seed(0)
    buffer = F.normalize(torch.randn(D, K, generator=g), dim=0).to(device)
    rows = buffer.t().contiguous()
    q = torch.randn(B, D, generator=g).to(device).requires_grad_()
    k = torch.randn(B, D, generator=g).to(device)

    def step(queue):
        return lambda: torch.autograd.grad(adam_ext.pruned_info_nce(q, k, queue, gamma=0.8), (q,))

    step(rows)()  # warm-up: first-call allocations (thread pools, caches) are not the op's
    queue_bytes = K * D * 4
    got = {
        name: allocated_bytes(step(queue), device)
        for name, queue in (("rows", rows), ("moco", buffer.t()), ("strided", buffer.t()[::2]))
    }
    assert got["strided"] >= queue_bytes // 2, got  # the control: a copy is seen
    assert got["moco"] <= 1.05 * got["rows"] + 4096, got
    assert got["moco"] < queue_bytes // 100, got


@pytest.mark.parametrize("scale", [1e-1, 1e-3, 1e-4, 3e-5, 1e-5, 1e-7])
def test_float16_small_norm_gradients_are_computed_in_float32(scale, device, seed):
    """Issue 24 (13): fp16 inputs of small norm. The normalisation and the gradients are computed in float32
    and rounded once: every gradient whose true value fits float16 is finite and right (none overflows in an
    intermediate), and only one beyond float16's range (it grows as 1/|q|: |q| ~ 1e-5 here) is ±inf with
    the true sign, never NaN; the loss is right at every scale.

    Tolerance: a gradient is ``(g - (g·x̂) x̂) / |x|`` with ``|g| <= 2 / T``; where the two terms cancel
    (a query equal to its key: the true gradient ~0) float32 leaves its rounding of the terms,
    ~2^-24 · D · 2 / (T |x|), which at |x| ~ 1e-7 is of order 1 (seen: 1.6 for a true 2e-9)."""
    T, D = 0.2, 16
    masters, _ = make_inputs(8, 300, D, seed=seed, dtype=torch.float64)
    q16 = (F.normalize(masters[0], dim=1) * scale).half().to(device)
    k16 = (F.normalize(masters[1], dim=1) * scale).half().to(device)
    queue16 = masters[2].half().to(device)
    loss, _, gq, gk = fused_and_grads(q16, k16, queue16, gamma=0.8, temperature=T)
    want_loss, _, want_gq, want_gk = reference_and_grads(
        q16.double().cpu(), k16.double().cpu(), queue16.double().cpu(), gamma=0.8, temperature=T
    )
    assert loss.isfinite().all()
    assert_close_scaled(loss, want_loss, 1e-2, "loss")
    fp16_max = torch.finfo(torch.float16).max
    for got, want, x, name in ((gq, want_gq, q16, "grad q"), (gk, want_gk, k16, "grad k")):
        got = got.double().cpu()
        cancel = 2**-24 * D * (2 / T) / x.double().cpu().norm(dim=1, keepdim=True).clamp_min(1e-30)
        assert not got.isnan().any(), name
        fits = want.abs() < fp16_max * (1 - 2**-10)
        assert got[fits].isfinite().all(), name
        beyond = want.abs() > fp16_max * (1 + 2**-10)  # past the rounding to float16's largest finite value
        assert torch.equal(got[beyond], want[beyond].sign() * float("inf")), name
        whole = fits.all(dim=1)  # rows that fit: right to float32 rounding of the row's largest entry
        if whole.any():
            atol = 2e-3 * want[whole].abs().amax(dim=1, keepdim=True) + cancel[whole]
            assert ((got[whole] - want[whole]).abs() <= atol + 2e-3 * want[whole].abs()).all(), name
