"""The extension itself: loaded, registered, differentiable, compilable, opcheck-clean."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, similarities

import adam_ext
from adam_ext import ops, reference


def test_compiled_extension_is_loaded():
    """Fails when adam_ext._C did not load: there is no silent fallback to the reference."""
    info = adam_ext.build_info()
    assert ops.EXTENSION_LOADED, ops.EXTENSION_ERROR
    assert info["extension_loaded"] and info["extension_error"] is None
    assert hasattr(torch.ops.adam_ext, "pruned_info_nce_fwd")
    assert hasattr(torch.ops.adam_ext, "pruned_info_nce_bwd")


def test_build_info_fields():
    info = adam_ext.build_info()
    assert info["torch"] == torch.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_archs"], list)
    assert info["cuda"] == bool(info["cuda_archs"])
    if torch.cuda.is_available():
        assert info["cuda"], "a GPU is present but the CUDA kernels were not compiled in"


def margin_inputs(B, K, D, gamma, margin=1e-3, dtype=torch.float64, device="cpu"):
    """Inputs whose similarities all stay at least `margin` from γ (the mask is a step)."""
    for seed in range(1000):
        masters, cast = make_inputs(B, K, D, seed=seed, dtype=dtype, device=device)
        if gamma is None or K == 0 or (similarities(masters[0], masters[2]) - gamma).abs().min() >= margin:
            return cast
    raise AssertionError("no seed gave inputs clear of gamma")


@pytest.mark.parametrize("gamma", [None, 0.5, 0.8])
@pytest.mark.parametrize("B,K,D", [(1, 17, 16), (3, 300, 8), (5, 0, 4), (4, 513, 16)])
def test_gradcheck_float64(B, K, D, gamma, device):
    q, k, queue = margin_inputs(B, K, D, gamma, device=device)
    q.requires_grad_()
    k.requires_grad_()

    def loss(q, k):
        return adam_ext.pruned_info_nce(q, k, queue, temperature=0.2, gamma=gamma, reduction="none")

    assert torch.autograd.gradcheck(loss, (q, k), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_per_query_gamma_and_non_contiguous(device):
    q, k, queue = margin_inputs(4, 300, 8, 0.5, device=device)
    gamma = torch.tensor([0.5, 0.5, float("inf"), 0.5], dtype=torch.float64, device=device)
    q = q.T.contiguous().T.requires_grad_()
    k = k.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k: adam_ext.pruned_info_nce(q, k, queue, gamma=gamma, reduction="sum"),
        (q, k),
        eps=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("need_wsum", [True, False])
@pytest.mark.parametrize("gamma", [None, 0.5])
def test_opcheck_forward(gamma, need_wsum, device):
    q, k, queue = margin_inputs(4, 300, 16, gamma, dtype=torch.float32, device=device)
    q.requires_grad_(need_wsum)
    k.requires_grad_()
    torch.library.opcheck(
        torch.ops.adam_ext.pruned_info_nce_fwd.default, (q, k, queue, 0.2, gamma, None, need_wsum)
    )


def test_opcheck_forward_per_query_gamma(device):
    q, k, queue = margin_inputs(4, 300, 16, 0.5, dtype=torch.float32, device=device)
    gamma_rows = torch.full((4,), 0.5, device=device)
    torch.library.opcheck(
        torch.ops.adam_ext.pruned_info_nce_fwd.default,
        (q.requires_grad_(), k, queue, 0.2, None, gamma_rows, True),
    )


def test_opcheck_backward(device):
    q, k, queue = margin_inputs(4, 300, 16, 0.5, dtype=torch.float32, device=device)
    loss, _lse, wsum, _ = torch.ops.adam_ext.pruned_info_nce_fwd(q, k, queue, 0.2, 0.5, None, True)
    grad = torch.rand_like(loss)
    torch.library.opcheck(
        torch.ops.adam_ext.pruned_info_nce_bwd.default, (grad, q, k, loss, wsum, 0.2, True, True)
    )


def test_torch_compile_fullgraph(device):
    masters, (q, k, queue) = make_inputs(8, 600, 32, seed=0, device=device)

    @torch.compile(fullgraph=True)
    def step(q, k, queue):
        loss, pruned = adam_ext.pruned_info_nce(q * 2.0, k, queue, gamma=0.8, return_pruned=True)
        return loss, pruned

    q.requires_grad_()
    loss, pruned = step(q, k, queue)
    loss.backward()
    q64 = masters[0].clone().requires_grad_()
    expected, expected_pruned = reference.pruned_info_nce(
        q64 * 2.0, masters[1], masters[2], gamma=0.8, return_pruned=True
    )
    expected.backward()
    torch.testing.assert_close(loss.double().cpu(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.grad.double().cpu(), q64.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(pruned.cpu(), expected_pruned)


def test_double_backward_is_refused_not_silently_zero(device):
    q, k, queue = margin_inputs(4, 50, 16, 0.8, device=device)
    q.requires_grad_()
    (grad,) = torch.autograd.grad(adam_ext.pruned_info_nce(q, k, queue), q, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        grad.sum().backward()


@pytest.mark.parametrize("gamma", [None, 0.5])
def test_gradcheck_float64_moco_queue(gamma, device):
    """MoCo's (D, K) buffer passed as queue.t() (strides (1, K)): the same gradients, read in place."""
    q, k, queue = margin_inputs(4, 300, 8, gamma, device=device)
    moco_queue = queue.t().contiguous().t()
    assert moco_queue.stride() == (1, 300)
    assert torch.autograd.gradcheck(
        lambda q, k: adam_ext.pruned_info_nce(q, k, moco_queue, gamma=gamma, reduction="none"),
        (q.requires_grad_(), k.requires_grad_()),
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
    )


def test_opcheck_forward_moco_queue(device):
    q, k, queue = margin_inputs(4, 300, 16, 0.5, dtype=torch.float32, device=device)
    torch.library.opcheck(
        torch.ops.adam_ext.pruned_info_nce_fwd.default,
        (q.requires_grad_(), k, queue.t().contiguous().t(), 0.2, 0.5, None, True),
    )
