"""The fused purposively pruned InfoNCE operator: Python side.

Loads the compiled extension (``adam_ext._C``), registers the fake (meta)
implementations and the autograd formula of ``torch.ops.adam_ext.*``, and
offers the typed public wrapper :func:`pruned_info_nce`.
"""

from __future__ import annotations

import warnings

import torch

from . import _validate

#: The smallest temperature the operator accepts (1e-4): every logit is at most 1/temperature.
MIN_TEMPERATURE = _validate.MIN_TEMPERATURE

try:
    from .. import _C  # noqa: F401  (loading it registers torch.ops.adam_ext.*)

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "adam_ext: the compiled extension adam_ext._C failed to load "
        f"({EXTENSION_ERROR}); adam_ext.pruned_info_nce will run the slow pure-PyTorch "
        "reference instead. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

EXTENSION_LOADED = EXTENSION_ERROR is None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the operator's loss, lse and wsum outputs for inputs of ``dtype``.

    Mirrors ``acc_scalar_type`` / ``acc_type_t`` in ``csrc/pruned_info_nce.h``, the one C++
    definition used by every backend: float64 for float64 inputs, float32 otherwise.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


if EXTENSION_LOADED:

    @torch.library.register_fake("adam_ext::pruned_info_nce_fwd")
    def _fwd_fake(q, k, queue, temperature, gamma, gamma_rows, need_wsum):
        torch._check(q.dim() == 2 and k.shape == q.shape and queue.dim() == 2)
        torch._check(queue.shape[1] == q.shape[1])
        B, D = q.shape
        acc = _acc_dtype(q.dtype)
        return (
            q.new_empty((B,), dtype=acc),
            q.new_empty((B,), dtype=acc),
            q.new_empty((B if need_wsum else 0, D), dtype=acc),
            q.new_empty((B,), dtype=torch.int64),
        )

    @torch.library.register_fake("adam_ext::pruned_info_nce_bwd")
    def _bwd_fake(grad_loss, q, k, loss, wsum, temperature, need_grad_q, need_grad_k):
        B, D = q.shape
        return q.new_empty((B if need_grad_q else 0, D)), k.new_empty((B if need_grad_k else 0, D))

    def _setup_context(ctx, inputs, output):
        q, k, _queue, temperature, _gamma, _gamma_rows, _need_wsum = inputs
        loss, lse, wsum, pruned = output
        ctx.mark_non_differentiable(lse, wsum, pruned)
        ctx.temperature = temperature
        # The backward needs q and k (O(B*D)) and the forward's row statistics,
        # never the queue: MoCo may enqueue into it in place before backward.
        ctx.save_for_backward(q, k, loss, wsum)

    def _backward(ctx, grad_loss, _grad_lse, _grad_wsum, _grad_pruned):
        q, k, loss, wsum = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q, grad_k = torch.ops.adam_ext.pruned_info_nce_bwd(
            grad_loss, q, k, loss, wsum, ctx.temperature, need_q, need_k
        )
        return (grad_q if need_q else None, grad_k if need_k else None, None, None, None, None, None)

    torch.library.register_autograd("adam_ext::pruned_info_nce_fwd", _backward, setup_context=_setup_context)

    def _refuse_double_backward(ctx, *grads):
        raise RuntimeError(
            "adam_ext.pruned_info_nce does not support double backward (differentiating its gradient); "
            "use adam_ext.reference.pruned_info_nce for higher-order gradients"
        )

    # Without this, a gradient taken with create_graph=True would silently have no
    # dependence on q and k, and a second backward would return zeros.
    torch.library.register_autograd(
        "adam_ext::pruned_info_nce_bwd",
        _refuse_double_backward,
        setup_context=lambda ctx, inputs, output: None,
    )


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
    """InfoNCE over a MoCo memory bank, fused, with Adam's purposive pruner when asked for.

    For each query b, with q̂, k̂ the L2-normalised query and positive key,
    ``s⁺ = q̂·k̂`` and ``s_i = q̂·queue_i``,
    ``L_b = −s⁺/τ + log(exp(s⁺/τ) + Σ_i exp(s_i/τ))``: MoCo's cross-entropy over the
    (B, 1 + K) logits, by default. With ``gamma`` the keys with ``s_i ≥ γ`` (likely
    false negatives: the same anatomy) are removed from the sum.
    The (B, K) similarity matrix is never materialised: one pass over the queue
    yields the loss and everything the gradient needs, and the backward never
    reads the queue, so the caller may enqueue into it in place before calling
    ``backward()`` (as MoCo does), in either layout below.

    Non-finite numbers never hide: a similarity that is not a finite number (a NaN or
    infinite entry in q, k or the queue) is never pruned and makes that query's loss
    NaN, and its gradients NaN; one such queue row makes every query's loss NaN.

    Args:
        q (Tensor[B, D]): queries (any scale; normalised inside). float32, float64,
            bfloat16 or float16; inputs of different dtypes are computed in their
            promoted dtype (bf16 queries against a float32 queue: float32).
        k (Tensor[B, D]): positive keys, one per query.
        queue (Tensor[K, D]): memory bank of negative keys, rows L2-normalised as MoCo
            enqueues them; K may be 0. Treated as a constant: no gradient flows to it.
            Read in place, never copied, when it is contiguous or when it is the transposed
            view of a contiguous (D, K) buffer: the official MoCo code's ``self.queue`` is
            (dim, K), pass ``self.queue.t()``. Other strides are copied once per call.
        temperature (float): softmax temperature τ ≥ 1e-4 (:data:`MIN_TEMPERATURE`; MoCo v2: 0.2).
        gamma (float | Tensor[B] | Tensor[] | None): ``None`` (the default) disables pruning:
            plain MoCo InfoNCE. A number in [-1, 1] is the pruning threshold γ on the cosine
            similarity (the paper: 0.8); one per query as a (B,) tensor (+inf keeps every
            key, -inf prunes every key, NaN gives that query a NaN loss and NaN gradients).
        reduction (str): ``"mean"`` (default), ``"sum"`` or ``"none"`` (Tensor[B]).
        return_pruned (bool): if True also return ``pruned`` (Tensor[B], int64), the
            number of keys removed for each query.

    Returns:
        ``loss`` in the inputs' common dtype (accumulated in float32, float64 for
        float64 inputs), or ``(loss, pruned)`` with ``return_pruned=True``. Gradients of
        bfloat16/float16 inputs are computed in float32 and rounded once: a float16
        gradient overflows to ±inf only where its true value exceeds float16's range
        (an input row of norm below about 1e-4, since the gradient grows as 1/‖q‖).

    Raises:
        TypeError, ValueError: naming the argument (shapes, dtypes, devices, a temperature
            below 1e-4, a number gamma outside [-1, 1], an unknown reduction).

    Example:
        >>> import torch, adam_ext
        >>> q, k = torch.randn(8, 128, requires_grad=True), torch.randn(8, 128)
        >>> queue = torch.nn.functional.normalize(torch.randn(4096, 128), dim=1)
        >>> loss, pruned = adam_ext.pruned_info_nce(q, k, queue, gamma=0.8, return_pruned=True)
        >>> loss.backward()
        >>> moco_queue = torch.nn.functional.normalize(torch.randn(128, 4096), dim=0)  # MoCo's (dim, K)
        >>> loss = adam_ext.pruned_info_nce(q, k, moco_queue.t())  # γ None: MoCo's loss, no copy
    """
    if not EXTENSION_LOADED:
        from . import reference

        warnings.warn(
            f"adam_ext._C is not loaded ({EXTENSION_ERROR}); running the reference",
            RuntimeWarning,
            stacklevel=2,
        )
        return reference.pruned_info_nce(
            q,
            k,
            queue,
            temperature=temperature,
            gamma=gamma,
            reduction=reduction,
            return_pruned=return_pruned,
        )
    q, k, queue, temperature, gamma_scalar, gamma_rows, reduction = _validate.prepare(
        q, k, queue, temperature, gamma, reduction
    )
    need_wsum = torch.is_grad_enabled() and q.requires_grad
    loss_rows, _lse, _wsum, pruned = torch.ops.adam_ext.pruned_info_nce_fwd(
        q, k, queue, temperature, gamma_scalar, gamma_rows, need_wsum
    )
    # A NaN threshold row is already NaN here: the operator's contract (csrc/pruned_info_nce.h).
    loss = _validate.reduce(loss_rows, reduction).to(q.dtype)
    return (loss, pruned) if return_pruned else loss


def build_info() -> dict:
    """What this installation of adam_ext was built with.

    Returns:
        dict with ``extension_loaded`` (bool), ``extension_error`` (str or None),
        ``cuda`` (bool: CUDA kernels compiled in), ``cuda_archs`` (list of str, e.g.
        ``["8.0", "9.0"]``), ``torch`` (version string) and ``cuda_available`` (a GPU
        usable right now).
    """
    fields = {}
    if EXTENSION_LOADED:
        fields = dict(item.split("=", 1) for item in torch.ops.adam_ext._build_info().split("|"))
    archs = fields.get("cuda_archs", "")
    return {
        "extension_loaded": EXTENSION_LOADED,
        "extension_error": EXTENSION_ERROR,
        "cuda": fields.get("cuda") == "1",
        "cuda_archs": [a for a in archs.replace(",", ";").replace(" ", ";").split(";") if a],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
