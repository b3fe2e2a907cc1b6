"""The operator's contract (csrc/pruned_info_nce.h), seen by a caller of torch.ops.adam_ext.* directly.

Rules that once lived in the Python wrapper now hold for the raw op: a NaN per-query threshold
gives that query a NaN loss; outputs accumulate in float64 for float64 inputs and float32
otherwise (and the fake kernel agrees); the backward's argument checks look at q's rank before
reading its sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_inputs

import adam_ext
from adam_ext import ops, reference  # importing ops loads adam_ext._C: torch.ops.adam_ext.*

fwd = torch.ops.adam_ext.pruned_info_nce_fwd
bwd = torch.ops.adam_ext.pruned_info_nce_bwd

NAN = float("nan")


def nan_row_inputs(device, seed, B=3, K=100, D=16):
    _, (q, k, queue) = make_inputs(B, K, D, seed=seed, device=device)
    gammas = torch.full((B,), 0.8, device=device)
    with_nan = gammas.clone()
    with_nan[1] = NAN
    return q, k, queue, gammas, with_nan


def test_nan_gamma_row_raw_forward(device, seed):
    q, k, queue, gammas, with_nan = nan_row_inputs(device, seed)
    loss, lse, wsum, pruned = fwd(q, k, queue, 0.2, None, with_nan, True)
    good_loss, good_lse, good_wsum, good_pruned = fwd(q, k, queue, 0.2, None, gammas, True)
    assert loss[1].isnan() and lse[1].isnan()
    # s < NaN is false: every key of that query is pruned, none is weighted.
    assert pruned[1].item() == queue.shape[0]
    assert torch.equal(wsum[1].cpu(), torch.zeros_like(wsum[1]).cpu())
    # The other rows are those of the same call without the NaN.
    others = torch.tensor([0, 2], device=device)
    assert loss[others].isfinite().all() and lse[others].isfinite().all()
    torch.testing.assert_close(loss[others], good_loss[others], rtol=0, atol=0)
    torch.testing.assert_close(lse[others], good_lse[others], rtol=0, atol=0)
    torch.testing.assert_close(wsum[others], good_wsum[others], rtol=0, atol=0)
    assert torch.equal(pruned[others], good_pruned[others])


def test_nan_gamma_row_through_the_wrapper(device, seed):
    q, k, queue, _gammas, with_nan = nan_row_inputs(device, seed)
    rows, pruned = adam_ext.pruned_info_nce(q, k, queue, gamma=with_nan, reduction="none", return_pruned=True)
    expected, expected_pruned = reference.pruned_info_nce(
        q, k, queue, gamma=with_nan, reduction="none", return_pruned=True
    )
    assert rows[1].isnan() and rows[0].isfinite() and rows[2].isfinite()
    assert torch.equal(rows.isnan(), expected.isnan())
    finite = ~expected.isnan()
    torch.testing.assert_close(rows[finite], expected[finite], rtol=1e-5, atol=1e-5)
    assert torch.equal(pruned.cpu(), expected_pruned.cpu())
    for reduction in ("mean", "sum"):
        assert adam_ext.pruned_info_nce(q, k, queue, gamma=with_nan, reduction=reduction).isnan()


def test_nan_gamma_row_backward_leaves_the_other_rows_alone(device, seed):
    """The NaN row's gradient is NaN (expm1(-NaN)); the other rows' gradients are unchanged."""
    q, k, queue, gammas, with_nan = nan_row_inputs(device, seed)

    def grads(gamma):
        qq = q.detach().clone().requires_grad_()
        kk = k.detach().clone().requires_grad_()
        adam_ext.pruned_info_nce(qq, kk, queue, gamma=gamma, reduction="none").sum().backward()
        return qq.grad, kk.grad

    (gq, gk), (good_gq, good_gk) = grads(with_nan), grads(gammas)
    for g, good in ((gq, good_gq), (gk, good_gk)):
        assert g[1].isnan().all()
        torch.testing.assert_close(g[[0, 2]], good[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [NAN, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("gamma", [None, 0.8, -1.0])
def test_non_finite_similarity_raw_forward(bad, gamma, device, seed):
    """The contract's non-finite rule, on the raw op: a queue row with a NaN or inf entry is met by every
    query, is never pruned and makes every loss, lse and wsum row NaN; the pruned count is that of the
    finite keys the pruner removed (with γ = -1: all of them, but not the bad one)."""
    _, (q, k, queue) = make_inputs(3, 100, 16, seed=seed, device=device)
    clean_pruned = fwd(q, k, queue, 0.2, gamma, None, True)[3]
    row_was_pruned = (
        0
        if gamma is None
        else (torch.nn.functional.normalize(q.double(), dim=1) @ queue[40].double() >= gamma).long()
    )
    queue[40, 5] = bad
    loss, lse, wsum, pruned = fwd(q, k, queue, 0.2, gamma, None, True)
    assert loss.isnan().all() and lse.isnan().all() and wsum.isnan().any(dim=1).all()
    assert torch.equal(pruned, clean_pruned - row_was_pruned)
    if gamma == -1.0:
        assert (pruned == 99).all()


@pytest.mark.parametrize("gamma", [None, 0.8])
def test_moco_queue_raw_forward(gamma, device, seed):
    """The raw op reads MoCo's (D, K) buffer through .t() in place: the outputs of the (K, D) rows."""
    _, (q, k, queue) = make_inputs(5, 300, 16, seed=seed, device=device)
    rows = fwd(q, k, queue, 0.2, gamma, None, True)
    cols = fwd(q, k, queue.t().contiguous().t(), 0.2, gamma, None, True)
    for a, b in zip(rows, cols):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


ACC = [
    (torch.float32, torch.float32),
    (torch.float64, torch.float64),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]


@pytest.mark.parametrize("dtype,acc", ACC, ids=[str(d).split(".")[1] for d, _ in ACC])
@pytest.mark.parametrize("need_wsum", [True, False])
def test_accumulation_dtype_of_the_outputs(dtype, acc, need_wsum, device):
    _, (q, k, queue) = make_inputs(4, 40, 16, seed=0, dtype=dtype, device=device)
    loss, lse, wsum, pruned = fwd(q, k, queue, 0.2, 0.8, None, need_wsum)
    assert (loss.dtype, lse.dtype, wsum.dtype, pruned.dtype) == (acc, acc, acc, torch.int64)
    assert wsum.shape == ((4 if need_wsum else 0), 16)
    assert ops._acc_dtype(dtype) == acc
    # The fake kernel (torch.compile, meta) promises the same dtypes.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fq, fk, fqueue = (mode.from_tensor(t) for t in (q, k, queue))
        fake = fwd(fq, fk, fqueue, 0.2, 0.8, None, need_wsum)
    assert [t.dtype for t in fake] == [t.dtype for t in (loss, lse, wsum, pruned)]
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in (loss, lse, wsum, pruned)]
    # The backward reads acc_t rows and answers in the inputs' dtype.
    if need_wsum:
        grad_q, grad_k = bwd(torch.ones_like(loss), q, k, loss, wsum, 0.2, True, True)
        assert grad_q.dtype == dtype and grad_k.dtype == dtype


def backward_args(device):
    _, (q, k, queue) = make_inputs(4, 40, 16, seed=1, device=device)
    loss, _lse, wsum, _ = fwd(q, k, queue, 0.2, 0.8, None, True)
    return torch.ones_like(loss), q, k, loss, wsum


@pytest.mark.parametrize("bad_q", ["1-d", "0-d", "3-d"])
def test_backward_checks_q_rank_before_its_sizes(bad_q, device):
    grad, q, k, loss, wsum = backward_args(device)
    q = {"1-d": q[:, 0].contiguous(), "0-d": q[0, 0], "3-d": q[None]}[bad_q]
    with pytest.raises(ValueError, match=rf"q must be \(B, D\), got {bad_q}"):
        bwd(grad, q, k, loss, wsum, 0.2, True, True)


def test_backward_checks_in_order(device):
    grad, q, k, loss, wsum = backward_args(device)
    with pytest.raises(ValueError, match=r"k must be \(B, D\) = \[4, 16\] like q, got \[4\]"):
        bwd(grad, q, k[:, 0], loss, wsum, 0.2, True, True)
    with pytest.raises(ValueError, match=r"grad_loss must be \(B,\) = \(4,\), got \[4, 1\]"):
        bwd(grad[:, None], q, k, loss, wsum, 0.2, True, True)
    with pytest.raises(ValueError, match=r"loss must be \(B,\) = \(4,\), got \[3\]"):
        bwd(grad, q, k, loss[:3], wsum, 0.2, True, True)
    with pytest.raises(ValueError, match="wsum must be"):
        bwd(grad, q, k, loss, wsum[:, :3], 0.2, True, True)
    # Shapes are checked before dtypes, dtypes before the temperature.
    with pytest.raises(ValueError, match=r"loss must be \(B,\)"):
        bwd(grad, q, k, loss[:3].long(), wsum, -1.0, True, True)
    with pytest.raises(ValueError, match="loss must be floating point"):
        bwd(grad, q, k, loss.long(), wsum, -1.0, True, True)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0\.0001"):
        bwd(grad, q, k, loss, wsum, math.inf, True, True)
    # Without the gradient of q, wsum is not read (the forward with need_wsum=False returns (0, D)).
    grad_q, grad_k = bwd(grad, q, k, loss, wsum[:0], 0.2, False, True)
    assert grad_q.shape == (0, 16) and grad_k.shape == (4, 16)


def test_forward_checks_q_rank_first(device):
    _, (q, k, queue) = make_inputs(4, 40, 16, seed=2, device=device)
    with pytest.raises(ValueError, match=r"q must be \(B, D\), got 1-d"):
        fwd(q[:, 0], k, queue, 0.2, 0.8, None, True)
    with pytest.raises(ValueError, match=r"q must be \(B, D\), got 0-d"):
        fwd(q[0, 0], k, queue, 0.2, 0.8, None, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_backward_names_an_argument_on_another_device():
    grad, q, k, loss, wsum = backward_args("cuda")
    with pytest.raises(ValueError, match=r"loss must be on the device of q \(cuda:0\), got cpu"):
        bwd(grad, q, k, loss.cpu(), wsum, 0.2, True, True)
