"""Every bad input gets a clear error that names the argument."""

from __future__ import annotations

import pytest
import torch

import adam_ext
from adam_ext import reference


def good(B=4, K=50, D=16):
    return torch.randn(B, D), torch.randn(B, D), torch.nn.functional.normalize(torch.randn(K, D), dim=1)


LOSSES = [adam_ext.pruned_info_nce, reference.pruned_info_nce]


def call(fn, q, k, queue, **kw):
    return fn(q, k, queue, **kw)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda q, k, Q: (q[None], k, Q), r"q must be \(B, D\)"),
        (lambda q, k, Q: (q, k[0], Q), r"k must be \(B, D\)"),
        (lambda q, k, Q: (q, k, Q[0]), r"queue must be \(K, D\)"),
        (lambda q, k, Q: (q, k[:3], Q), r"k must be \(B, D\) = \[4, 16\] like q"),
        (lambda q, k, Q: (q, k, Q[:, :8]), r"queue must be \(K, D\) with D=16 like q, got \[50, 8\]"),
        (lambda q, k, Q: (q, k, torch.randn(16, 50)), r"queue must be \(K, D\) with D=16 like q, got \[16, 50\].*transposed"),
        (lambda q, k, Q: (q[:0], k[:0], Q), r"q must hold at least one query"),
        (lambda q, k, Q: (q[:, :0], k[:, :0], Q[:, :0]), r"q must have a feature dimension"),
    ],
    ids=["q-rank", "k-rank", "queue-rank", "B-mismatch", "D-mismatch", "queue-transposed", "B-zero", "D-zero"],
)
def test_shape_errors_name_the_argument(mutate, match):
    with pytest.raises(ValueError, match=match):
        adam_ext.pruned_info_nce(*mutate(*good()))


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("which", ["q", "k", "queue"])
def test_non_floating_dtype(fn, which):
    args = dict(zip(("q", "k", "queue"), good()))
    args[which] = args[which].long()
    with pytest.raises(TypeError, match=f"{which} must be a float32, float64, bfloat16 or float16 tensor, got torch.int64"):
        fn(args["q"], args["k"], args["queue"])


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
def test_not_a_tensor(fn):
    q, k, queue = good()
    with pytest.raises(TypeError, match="queue must be a torch.Tensor, got list"):
        fn(q, k, queue.tolist())


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("which", ["k", "queue"])
def test_different_devices(fn, which):
    args = dict(zip(("q", "k", "queue"), good()))
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=f"{which} must be on the device of q \\(cpu\\), got meta"):
        fn(args["q"], args["k"], args["queue"])


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("temperature", [0.0, -0.2, float("nan"), float("inf")])
def test_bad_temperature(fn, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fn(*good(), temperature=temperature)


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gamma(fn, gamma):
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        fn(*good(), gamma=gamma)


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
def test_bad_gamma_types_and_shapes(fn):
    with pytest.raises(TypeError, match="gamma must be None, a number or a \\(B,\\) tensor, got str"):
        fn(*good(), gamma="0.8")
    with pytest.raises(ValueError, match=r"gamma given as a tensor must be \(B,\) = \(4,\), got \(3,\)"):
        fn(*good(), gamma=torch.full((3,), 0.8))
    with pytest.raises(TypeError, match="gamma given as a tensor must be floating point"):
        fn(*good(), gamma=torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
def test_unknown_reduction(fn):
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        fn(*good(), reduction="avg")


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="temperature"):
        adam_ext.PurposivePrunerLoss(temperature=0)
    with pytest.raises(ValueError, match="gamma"):
        adam_ext.PurposivePrunerLoss(gamma=float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        adam_ext.PurposivePrunerLoss(reduction="avg")


def test_raw_op_checks_arguments_too():
    """torch.ops.adam_ext.* callers bypass the wrapper: the C++ checks still name the argument."""
    q, k, queue = good()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, -1.0, None, None, True)
    with pytest.raises(ValueError, match="k must have the dtype of q"):
        torch.ops.adam_ext.pruned_info_nce_fwd(q, k.double(), queue, 0.2, None, None, True)
    with pytest.raises(ValueError, match="gamma must be given either as a number or as a"):
        torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, 0.2, 0.5, torch.zeros(4), True)
    loss, _, wsum, _ = torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, 0.2, None, None, False)
    with pytest.raises(ValueError, match="wsum must be"):
        torch.ops.adam_ext.pruned_info_nce_bwd(torch.ones(4), q, k, loss, wsum, 0.2, True, True)


def test_raw_backward_names_a_mismatched_dtype():
    """Issue 15 (12): the backward called directly with k of another dtype said only
    'expected scalar type Float'; the shared C++ checks now name the argument."""
    q, k, queue = good()
    loss, _, wsum, _ = torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, 0.2, None, None, True)
    with pytest.raises(ValueError, match=r"k must have the dtype of q \(Float\), got Double"):
        torch.ops.adam_ext.pruned_info_nce_bwd(torch.ones(4), q, k.double(), loss, wsum, 0.2, True, True)
    with pytest.raises(ValueError, match="grad_loss must be floating point, got Long"):
        torch.ops.adam_ext.pruned_info_nce_bwd(torch.ones(4, dtype=torch.long), q, k, loss, wsum, 0.2, True, True)
    with pytest.raises(ValueError, match="q must be float32, float64, bfloat16 or float16, got Long"):
        torch.ops.adam_ext.pruned_info_nce_bwd(torch.ones(4), q.long(), k.long(), loss, wsum, 0.2, True, True)
