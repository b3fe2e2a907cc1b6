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
        (
            lambda q, k, Q: (q, k, torch.randn(16, 50)),
            r"queue must be \(K, D\) with D=16 like q, got \[16, 50\].*transposed",
        ),
        (lambda q, k, Q: (q[:0], k[:0], Q), r"q must hold at least one query"),
        (lambda q, k, Q: (q[:, :0], k[:, :0], Q[:, :0]), r"q must have a feature dimension"),
    ],
    ids=[
        "q-rank",
        "k-rank",
        "queue-rank",
        "B-mismatch",
        "D-mismatch",
        "queue-transposed",
        "B-zero",
        "D-zero",
    ],
)
def test_shape_errors_name_the_argument(mutate, match):
    with pytest.raises(ValueError, match=match):
        adam_ext.pruned_info_nce(*mutate(*good()))


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("which", ["q", "k", "queue"])
def test_non_floating_dtype(fn, which):
    args = dict(zip(("q", "k", "queue"), good()))
    args[which] = args[which].long()
    with pytest.raises(
        TypeError, match=f"{which} must be a float32, float64, bfloat16 or float16 tensor, got torch.int64"
    ):
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


TEMPERATURE_BOUND = r"temperature must be a finite number >= 0\.0001 \(every logit is at most 1/temperature\)"


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("temperature", [0.0, -0.2, float("nan"), float("inf"), 5e-324, 1e-30, 9.9e-5])
def test_bad_temperature(fn, temperature):
    """Issue 24 (13): temperature=5e-324 was accepted and gave NaN (1/τ overflows); the bound is 1e-4."""
    with pytest.raises(ValueError, match=TEMPERATURE_BOUND + f", got {temperature}"):
        fn(*good(), temperature=temperature)


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
def test_smallest_temperature_is_accepted(fn):
    assert torch.isfinite(fn(*good(), temperature=1e-4, gamma=0.8))


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), float("-inf"), 5, 1.01, -1.5])
def test_gamma_outside_minus_one_one(fn, gamma):
    with pytest.raises(
        ValueError,
        match=r"gamma must be in \[-1, 1\] \(a cosine similarity\), or None to disable "
        rf"pruning, got {float(gamma)}",
    ):
        fn(*good(), gamma=gamma)


@pytest.mark.parametrize("fn", LOSSES, ids=["fused", "reference"])
def test_bad_gamma_types_and_shapes(fn):
    with pytest.raises(
        TypeError, match=r"gamma must be None, a number in \[-1, 1\] or a \(B,\) tensor, got str"
    ):
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


@pytest.mark.parametrize("temperature", [5e-324, 1e-5])
def test_module_refuses_the_temperatures_the_functional_refuses(temperature):
    with pytest.raises(ValueError, match=TEMPERATURE_BOUND + f", got {temperature}"):
        adam_ext.PurposivePrunerLoss(temperature=temperature)


@pytest.mark.parametrize("gamma", [5, 1.5, -1.01, float("inf")])
def test_module_refuses_gamma_outside_minus_one_one_like_the_functional(gamma):
    """Issue 24 (13): PurposivePrunerLoss(gamma=5) was accepted."""
    match = (
        rf"gamma must be in \[-1, 1\] \(a cosine similarity\), or None to disable pruning, got {float(gamma)}"
    )
    with pytest.raises(ValueError, match=match):
        adam_ext.PurposivePrunerLoss(gamma=gamma)
    with pytest.raises(ValueError, match=match):
        adam_ext.pruned_info_nce(*good(), gamma=gamma)


@pytest.mark.parametrize("gamma", [torch.full((4,), 0.8), torch.tensor(0.8), "0.8", True])
def test_module_gamma_message_says_what_it_takes(gamma):
    """Issue 24 (13): the module refused a per-query tensor with a message saying tensors were allowed.
    It takes None or a number; the message names the functional that takes a Tensor[B]."""
    with pytest.raises(TypeError) as info:
        adam_ext.PurposivePrunerLoss(gamma=gamma)
    message = str(info.value)
    assert message.startswith("gamma of PurposivePrunerLoss must be None or a number in [-1, 1];")
    assert "pass gamma=Tensor[B] to adam_ext.pruned_info_nce" in message
    assert "a number or a (B,) tensor" not in message
    q, k, queue = good()  # and the functional does take the per-query tensor
    assert adam_ext.pruned_info_nce(q, k, queue, gamma=torch.full((4,), 0.8)).isfinite()


def test_raw_op_checks_arguments_too():
    """torch.ops.adam_ext.* callers bypass the wrapper: the C++ checks still name the argument."""
    q, k, queue = good()
    for temperature in (-1.0, 5e-324):
        with pytest.raises(ValueError, match=TEMPERATURE_BOUND):
            torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, temperature, None, None, True)
    with pytest.raises(ValueError, match=r"gamma must be in \[-1, 1\] \(a cosine similarity\)"):
        torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, 0.2, 5.0, None, True)
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
        torch.ops.adam_ext.pruned_info_nce_bwd(
            torch.ones(4, dtype=torch.long), q, k, loss, wsum, 0.2, True, True
        )
    with pytest.raises(ValueError, match="q must be float32, float64, bfloat16 or float16, got Long"):
        torch.ops.adam_ext.pruned_info_nce_bwd(torch.ones(4), q.long(), k.long(), loss, wsum, 0.2, True, True)
