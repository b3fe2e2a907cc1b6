"""Benchmark of the fused pruned InfoNCE operator against what a user could write instead.

Providers, all forward + backward (gradients of q and k), in one process:

* ``fused``       adam_ext.pruned_info_nce (the C++/CUDA kernels).
* ``eager``       adam_ext.ops.reference.pruned_info_nce: matmul, masked_fill, cross_entropy.
* ``compiled``    torch.compile of that reference.
* ``flex``        FlexAttention (queue as keys and values, the pruner as a score_mod),
                  compiled forward returning the log-sum-exp, closed-form gradient.
* ``official``    the official Adam per-row loop, at a smaller B (it is ~100x slower).
* ``floor``       only the two matrix products the operator cannot avoid (similarities and
                  the softmax-weighted key sum), on cache-sized tiles: the speed limit.

And, when lightly is installed, lightly's MoCo loss ``NTXentLoss(memory_bank_size=(K, D))``
against its drop-in ``adam_ext.integrations.lightly.PrunedNTXentLoss`` (γ = None: the same loss;
γ = 0.8), each call a MoCo training step's: queries with a gradient, detached keys, the enqueue.

And the official MoCo v2 loss against the fused one on MoCo's own queue, a (D, K) buffer
(``--moco-queue-size``): the builder's recipe (einsum logits against a clone of the queue, cat,
CrossEntropyLoss; written here from the recipe), ``adam_ext.pruned_info_nce(q, k, queue.t())``
on the same buffer, and ``adam_ext.pruned_info_nce`` on a (K, D) copy made once beforehand: the
transposed view must cost what the rows cost (no copy inside the operator). Time and bytes
allocated per call (torch.profiler's CPU memory events, or CUDA's peak allocation), side by side.

Each time is the median of repeated runs after a warm-up (torch.utils.benchmark), with
all of torch's threads. Peak memory is the extra peak resident memory (CPU, reset through
/proc/self/clear_refs) or the extra peak allocated memory (CUDA) of one call.

Usage::

    python benchmarks/bench_loss.py                 # headline case + K/B sweep, writes benchmarks/results/
    python benchmarks/bench_loss.py --headline      # only B=256, K=65536, D=128
    python benchmarks/bench_loss.py --device cuda   # on a GPU (queues rotated so none is timed from L2)
    python benchmarks/bench_loss.py --lightly-only  # only lightly's NTXentLoss against PrunedNTXentLoss
    python benchmarks/bench_loss.py --moco-queue-only  # only the official MoCo v2 loss against ours on its queue
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import benchmark as tbench

import adam_ext
from adam_ext import reference
from adam_ext.engine import git_commit, machine

TEMPERATURE = 0.2
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    K: int
    D: int = 128
    dtype: torch.dtype = torch.float32
    gamma: float | None = 0.8

    @property
    def gflop(self) -> float:
        """FLOPs of the two unavoidable matrix products, in GFLOP."""
        return 2 * 2 * self.B * self.K * self.D / 1e9

    def logits_bytes(self) -> int:
        return self.B * (self.K + 1) * torch.tensor([], dtype=self.dtype).element_size()


@dataclasses.dataclass
class Result:
    case: Case
    provider: str
    ms: float | None
    peak_mb: float | None
    note: str = ""
    allocated_mb: float | None = None  # bytes allocated per call, where measured (the MoCo queue rows)
    rounds_ms: list[float] | None = None  # per interleaved round, where measured


# ----------------------------------------------------------------------------- inputs


def make_inputs(case: Case, device: str, n_queues: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(case.B, case.D, generator=g).to(device, case.dtype).requires_grad_()
    k = torch.randn(case.B, case.D, generator=g).to(device, case.dtype).requires_grad_()
    queues = [
        F.normalize(torch.randn(case.K, case.D, generator=g), dim=1).to(device, case.dtype)
        for _ in range(n_queues)
    ]
    return q, k, queues


# ----------------------------------------------------------------------------- providers


def loss_step(loss_fn: Callable, case: Case) -> Callable:
    def step(q, k, queue):
        loss = loss_fn(q, k, queue, temperature=TEMPERATURE, gamma=case.gamma)
        torch.autograd.grad(loss, (q, k))

    return step


class _FlexClosedForm(torch.autograd.Function):
    """The loss through one FlexAttention call, with a closed-form gradient.

    torch 2.14 has no FlexAttention backward (nor ``return_lse``) on CPU, so the
    positive goes in as an extra key: keys = [k̂; queue], values = [[k̂, 1]; [queue, 0]],
    and a score_mod keeps, for query b, only its own positive and the unpruned
    negatives. The output is then [p⁺k̂ + Σ p_i queue_i, p⁺]: the loss is −log p⁺ and
    ∂L/∂q̂ = (output[:, :D] − k̂)/τ, ∂L/∂k̂ = (p⁺ − 1) q̂/τ.
    """

    @staticmethod
    def forward(ctx, qh, kh, queue, gamma, flex):
        B, D = qh.shape
        keys = torch.cat([kh.detach(), queue])
        values = torch.zeros(keys.shape[0], D + 16, dtype=keys.dtype, device=keys.device)  # padded to 16
        values[:, :D] = keys
        values[:B, D] = 1
        threshold = float("inf") if gamma is None else gamma

        def score_mod(score, b, h, q_idx, kv_idx):
            keep = torch.where(kv_idx < B, kv_idx == q_idx, score * TEMPERATURE < threshold)
            return torch.where(keep, score, -float("inf"))

        with torch.no_grad():
            out = flex(
                qh.detach()[None, None],
                keys[None, None],
                values[None, None],
                score_mod=score_mod,
                scale=1.0 / TEMPERATURE,
            )[0, 0]
        ppos = out[:, D].float()
        ctx.save_for_backward(qh, kh, ppos, out[:, :D])
        return -torch.log(ppos)

    @staticmethod
    def backward(ctx, grad):
        qh, kh, ppos, mixed = ctx.saved_tensors
        c = (grad / TEMPERATURE)[:, None]
        return c * (mixed - kh), c * (ppos - 1)[:, None] * qh, None, None, None


def flex_step(case: Case) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def step(q, k, queue):
        qh, kh = F.normalize(q, dim=1), F.normalize(k, dim=1)
        loss = _FlexClosedForm.apply(qh, kh, queue, case.gamma, flex).mean()
        torch.autograd.grad(loss, (q, k))

    return step


def official_step(case: Case) -> Callable:
    def step(q, k, queue):
        loss = reference.official_loop_pruned_info_nce(q, k, queue, temperature=TEMPERATURE, gamma=case.gamma)
        torch.autograd.grad(loss, (q, k))

    return step


def floor_step(case: Case, tile: int) -> Callable:
    """The two matrix products of the loss on tiles of `tile` queue rows, nothing else."""

    def step(q, k, queue):
        with torch.no_grad():
            qh = F.normalize(q, dim=1)
            s = torch.empty(case.B, max(1, min(tile, case.K)), dtype=q.dtype, device=q.device)
            acc = torch.zeros(case.B, case.D, dtype=q.dtype, device=q.device)
            for i in range(0, case.K, tile):
                t = queue[i : i + tile]
                si = s[:, : t.shape[0]]
                torch.mm(qh, t.T, out=si)
                acc.addmm_(si, t)

    return step


# ----------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(step: Callable, q, k, queues, device: str, min_run_time: float, slow: bool = False) -> float:
    """Median milliseconds of step over rotating queues, after one warm-up call."""
    it = iter(range(10**12))

    def call():
        step(q, k, queues[next(it) % len(queues)])

    call()
    _sync(device)
    timer = tbench.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    if slow:
        m = timer.timeit(1)
        runs = [m.median] + [timer.timeit(1).median for _ in range(2)]
        return 1e3 * sorted(runs)[1]
    return 1e3 * timer.blocked_autorange(min_run_time=min_run_time).median


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mb(step: Callable, q, k, queue, device: str) -> float | None:
    """Extra peak memory of one call above what was resident/allocated before it."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(q, k, queue)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak resident set) to the current RSS
    except OSError:
        return None
    base = _rss_mb("VmRSS")
    step(q, k, queue)
    return max(0.0, _rss_mb("VmHWM") - base)  # freed pages may leave RSS slightly below the start


# ----------------------------------------------------------------------------- running


def fits(case: Case, provider: str, budget_bytes: float) -> bool:
    """Whether a provider's B x K intermediates (about 6 logit-sized buffers) fit the budget."""
    if provider in ("fused", "floor"):
        return True
    return 6 * case.logits_bytes() <= budget_bytes


def run_case(case: Case, providers: list[str], device: str, args) -> list[Result]:
    n_queues = 1 if device == "cpu" else max(1, min(8, int(256 * 2**20 // max(1, case.K * case.D * 4))))
    q, k, queues = make_inputs(case, device, n_queues)
    budget = args.memory_budget_gb * 2**30
    results = []
    for provider in providers:
        if not fits(case, provider, budget):
            results.append(
                Result(case, provider, None, None, "skipped: B x K buffers exceed --memory-budget-gb")
            )
            continue
        note = ""
        try:
            if provider == "fused":
                step = loss_step(adam_ext.pruned_info_nce, case)
            elif provider == "eager":
                step = loss_step(reference.pruned_info_nce, case)
            elif provider == "compiled":
                step = loss_step(torch.compile(reference.pruned_info_nce, dynamic=False), case)
            elif provider == "flex":
                step = flex_step(case)
            elif provider == "official":
                step = official_step(case)
            elif provider == "floor":
                tiles = [256, 1024, 4096, case.K]  # the last: two whole-matrix GEMMs
                best = min(
                    (time_ms(floor_step(case, t), q, k, queues, device, args.min_run_time), t) for t in tiles
                )
                what = "whole matrices" if best[1] == case.K else f"tiles of {best[1]} rows"
                results.append(Result(case, provider, best[0], None, f"fastest of tiled/untiled: {what}"))
                continue
            else:
                raise ValueError(provider)
            ms = time_ms(step, q, k, queues, device, args.min_run_time, slow=provider == "official")
            peak = peak_extra_mb(step, q, k, queues[0], device)
        except Exception as exc:
            ms, peak, note = None, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        results.append(Result(case, provider, ms, peak, note))
        print(
            f"  {provider:9s} B={case.B:5d} K={case.K:8d}: "
            + (
                f"{ms:10.2f} ms, peak +{peak:.1f} MB"
                if ms is not None and peak is not None
                else f"{ms:10.2f} ms"
                if ms is not None
                else note
            ),
            flush=True,
        )
    return results


def official_case(case: Case, device: str, args) -> list[Result]:
    small = dataclasses.replace(case, B=args.official_batch)
    print(f"official per-row loop at B={small.B} (it loops over the batch in Python):", flush=True)
    return run_case(small, ["fused", "official"], device, args)


# ----------------------------------------------------------------------------- lightly


def lightly_rows(case: Case, device: str, args) -> list[Result]:
    """lightly's ``NTXentLoss(memory_bank_size=(K, D))`` and ``PrunedNTXentLoss`` (γ None, 0.8),
    forward + backward of a MoCo step (gradient of the queries; the keys detached, then enqueued),
    side by side; [] with a message when lightly is not installed."""
    try:
        from lightly.loss import NTXentLoss

        from adam_ext.integrations.lightly import PrunedNTXentLoss
    except ImportError as exc:
        print(f"lightly rows skipped: {exc}", flush=True)
        return []
    size = (case.K, case.D)
    criteria = {
        "lightly NTXentLoss": NTXentLoss(temperature=TEMPERATURE, memory_bank_size=size),
        "PrunedNTXentLoss, γ=None": PrunedNTXentLoss(temperature=TEMPERATURE, memory_bank_size=size),
        "PrunedNTXentLoss, γ=0.8": PrunedNTXentLoss(
            temperature=TEMPERATURE, memory_bank_size=size, gamma=0.8
        ),
    }
    q, k, _ = make_inputs(dataclasses.replace(case, K=0), device)
    k = k.detach()
    print(
        f"lightly's MoCo loss, B={case.B} K={case.K} D={case.D} ({args.lightly_rounds} interleaved rounds):",
        flush=True,
    )
    steps = {
        name: functools.partial(_criterion_step, criterion.to(device)) for name, criterion in criteria.items()
    }
    # Interleaved rounds, median of the rounds' medians: on a shared machine the load moves
    # between providers measured one after the other, less so between rounds.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.lightly_rounds):
        for name, step in steps.items():
            times[name].append(time_ms(step, q, k, [None], device, args.min_run_time / args.lightly_rounds))
    results = []
    for name, step in steps.items():
        ms, peak = statistics.median(times[name]), peak_extra_mb(step, q, k, None, device)
        results.append(
            Result(case, name, ms, peak, f"rounds: {', '.join(f'{t:.1f}' for t in times[name])} ms")
        )
        print(
            f"  {name:26s} {ms:10.2f} ms ({results[-1].note}), peak +{peak if peak is not None else float('nan'):.1f} MB",
            flush=True,
        )
    return results


def _criterion_step(criterion, q, k, _queue) -> None:
    torch.autograd.grad(criterion(q, k), (q,))


def lightly_table(results: list[Result]) -> str:
    if not results:
        return "lightly rows skipped: lightly is not installed (pip install adam_ext[lightly])."
    theirs = results[0].ms
    case = results[0].case
    lines = [
        (
            f"lightly's MoCo loss against its drop-in, B={case.B}, K={case.K}, D={case.D}, forward + backward "
            "of a MoCo step (queries' gradient, keys enqueued):"
        ),
        "",
        "| provider | time (ms) | × lightly's time | lightly's time / this | peak extra memory (MB) | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        peak = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "—"
        lines.append(
            f"| {r.provider} | {r.ms:.2f} | {r.ms / theirs:.2f} | {theirs / r.ms:.2f}× | {peak} | {r.note} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- MoCo's own queue


def official_moco_v2_loss(q, k, queue_dk, T: float) -> torch.Tensor:
    """MoCo v2's loss as its builder computes it (our code, from the well-known recipe): normalised q and
    k (Tensor[N, C]), positive logits, negative logits against a clone of the (C, K) queue, both over
    T, CrossEntropyLoss with the positive at index 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue_dk.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def fused_on_moco_features(q, k, queue, T: float) -> torch.Tensor:
    """What the drop-in runs: MoCo's forward still normalises q and k; γ is left at None (MoCo's loss)."""
    return adam_ext.pruned_info_nce(F.normalize(q, dim=1), F.normalize(k, dim=1), queue, temperature=T)


def fused_on_a_copy(q, k, queue, T: float) -> torch.Tensor:
    """The control: the queue copied to contiguous memory on every call, as the kernels did before they
    read the transposed view in place (so the table shows what a copy costs, and that the check sees it)."""
    return fused_on_moco_features(q, k, queue.contiguous(), T)


def allocated_mb(step: Callable, device: str) -> float:
    """Megabytes allocated during one ``step()``: on the CPU every allocation torch.profiler records (the
    positive self memory of each op: a copy of the queue is an aten::empty of its own), on CUDA the peak
    allocated above the start."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return sum(max(event.self_cpu_memory_usage, 0) for event in prof.events()) / 2**20


def moco_queue_rows(case: Case, device: str, args) -> list[Result]:
    """The official MoCo v2 loss on its (D, K) queue, ours on ``queue.t()`` of the same buffer and ours on a
    (K, D) queue: forward + backward of a MoCo step (queries' gradient, detached keys), interleaved rounds.
    The official loss is skipped when its B x (1 + K) buffers exceed ``--memory-budget-gb``."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(case.B, case.D, generator=g).to(device).requires_grad_()
    k = torch.randn(case.B, case.D, generator=g).to(device)
    queue_dk = F.normalize(torch.randn(case.D, case.K, generator=g), dim=0).to(device)
    queue_kd = queue_dk.t().contiguous()
    losses = {
        "official MoCo v2 loss, (D, K) queue": (official_moco_v2_loss, queue_dk),
        "ours, queue.t() of the (D, K) queue": (fused_on_moco_features, queue_dk.t()),
        "ours, (K, D) queue": (fused_on_moco_features, queue_kd),
        "control: ours on a copy of queue.t() per call": (fused_on_a_copy, queue_dk.t()),
    }
    skipped = {}
    if not fits(case, "official", args.memory_budget_gb * 2**30):
        skipped["official MoCo v2 loss, (D, K) queue"] = "skipped: B x K buffers exceed --memory-budget-gb"
        losses.pop("official MoCo v2 loss, (D, K) queue")
    steps = {name: functools.partial(_moco_step, fn, queue) for name, (fn, queue) in losses.items()}
    with torch.no_grad():
        ours = fused_on_moco_features(q, k, queue_kd, TEMPERATURE).double()
        official = None if skipped else official_moco_v2_loss(q, k, queue_dk, TEMPERATURE).double()
        gaps = {
            name: abs(fn(q, k, queue, TEMPERATURE).double() - (ours if official is None else official)).item()
            for name, (fn, queue) in losses.items()
        }
    against = "ours on the (K, D) queue" if official is None else "official"
    print(
        f"MoCo's own queue, B={case.B} K={case.K} D={case.D} ({args.moco_queue_rounds} interleaved rounds):",
        flush=True,
    )
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.moco_queue_rounds):
        for name, step in steps.items():
            times[name].append(
                time_ms(step, q, k, [None], device, args.min_run_time / args.moco_queue_rounds)
            )
    results = [Result(case, name, None, None, note) for name, note in skipped.items()]
    for name, step in steps.items():
        ms = statistics.median(times[name])
        call = functools.partial(step, q, k, None)
        mb, peak = allocated_mb(call, device), peak_extra_mb(step, q, k, None, device)
        note = f"rounds: {', '.join(f'{t:.1f}' for t in times[name])} ms; loss − {against}: {gaps[name]:.1e}"
        results.append(Result(case, name, ms, peak, note, allocated_mb=mb, rounds_ms=times[name]))
        print(f"  {name:38s} {ms:10.2f} ms, allocated {mb:.2f} MB, peak +{_mb(peak)} MB ({note})", flush=True)
    return results


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _moco_step(loss_fn, queue, q, k, _queue) -> None:
    torch.autograd.grad(loss_fn(q, k, queue, TEMPERATURE), (q,))


def moco_queue_table(results: list[Result]) -> str:
    """The rows, and the verdict on the view against the rows: the median of the per-round time
    ratios (each round times both within seconds, so the load of a shared machine largely cancels) and the
    ratio of the bytes allocated, each at most 1.05 (a copy of the queue would add its K x D x 4 bytes)."""
    official, view, rows = results[:3]
    case = official.case
    time_ratio = statistics.median(v / r for v, r in zip(view.rounds_ms, rows.rounds_ms))
    memory_ratio = (view.allocated_mb + 1e-9) / (rows.allocated_mb + 1e-9)
    verdict = "PASS" if time_ratio <= 1.05 and memory_ratio <= 1.05 else "FAIL"
    lines = [
        (
            f"MoCo's own queue: the official MoCo v2 loss against ours, B={case.B}, K={case.K}, D={case.D}, float32, "
            "forward + backward of a MoCo step (queries' gradient, detached keys):"
        ),
        "",
        (
            "| provider | time (ms) | × official time | official time / this | allocated per call (MB) "
            "| peak extra memory (MB) | note |"
        ),
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.ms is None:
            lines.append(f"| {r.provider} | — | — | — | — | — | {r.note} |")
            continue
        ratios = f"{r.ms / official.ms:.2f} | {official.ms / r.ms:.2f}×" if official.ms else "— | —"
        lines.append(
            f"| {r.provider} | {r.ms:.2f} | {ratios} | {r.allocated_mb:.2f} | {_mb(r.peak_mb)} | {r.note} |"
        )
    lines += [
        "",
        (
            f"{verdict}: queue.t() of the (D, K) queue takes {time_ratio:.3f}× the time (median of the per-round "
            f"ratios) and {memory_ratio:.3f}× the memory allocated of the (K, D) queue (target: at most 1.05×, i.e. "
            f"no copy; a copy of the queue would allocate {case.K * case.D * 4 / 2**20:.1f} MB)."
        ),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reporting


def table(results: list[Result]) -> str:
    by_case: dict[Case, dict[str, Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.provider] = r
    lines = [
        "| B | K | D | dtype | γ | provider | time (ms) | × fused time | GFLOP/s | peak extra memory (MB) | note |",
        "|---:|---:|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for case, rs in by_case.items():
        fused = rs.get("fused")
        for name, r in rs.items():
            ratio = f"{r.ms / fused.ms:.2f}" if (r.ms and fused and fused.ms) else ""
            gflops = f"{case.gflop / (r.ms / 1e3):.0f}" if r.ms else ""
            lines.append(
                f"| {case.B} | {case.K} | {case.D} | {str(case.dtype).replace('torch.', '')} | {case.gamma} | {name} | "
                + (f"{r.ms:.2f}" if r.ms else "—")
                + f" | {ratio} | {gflops} | "
                + (f"{r.peak_mb:.1f}" if r.peak_mb is not None else "—")
                + f" | {r.note} |"
            )
    return "\n".join(lines)


def headline_summary(results: list[Result], case: Case) -> str:
    rs = {r.provider: r for r in results if r.case == case}
    fused = rs["fused"].ms
    out = []
    for name, what in (
        ("eager", "eager reference"),
        ("compiled", "torch.compile of the reference"),
        ("flex", "FlexAttention + closed-form gradient"),
    ):
        if rs.get(name) and rs[name].ms:
            out.append(
                f"- fused is **{rs[name].ms / fused:.2f}×** faster than the {what} ({rs[name].ms:.1f} ms vs {fused:.1f} ms)"
            )
    if rs.get("floor") and rs["floor"].ms:
        out.append(
            f"- fused takes **{fused / rs['floor'].ms:.2f}×** the time of the two matrix products alone "
            f"({rs['floor'].ms:.1f} ms, {rs['floor'].note.replace('fastest of tiled/untiled: ', '')})"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--headline", action="store_true", help="only the headline case B=256, K=65536, D=128")
    p.add_argument("--providers", default="fused,eager,compiled,flex,floor")
    p.add_argument("--Ks", default="4096,65536,262144,1048576")
    p.add_argument("--Bs", default="32,256,1024")
    p.add_argument(
        "--official-batch", type=int, default=32, help="B at which the official per-row loop is timed"
    )
    p.add_argument("--no-official", action="store_true")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed runs per measurement")
    p.add_argument(
        "--memory-budget-gb", type=float, default=12.0, help="skip baselines whose B x K buffers exceed it"
    )
    p.add_argument(
        "--no-lightly", action="store_true", help="leave out lightly's NTXentLoss against PrunedNTXentLoss"
    )
    p.add_argument(
        "--lightly-only", action="store_true", help="only lightly's NTXentLoss against PrunedNTXentLoss"
    )
    p.add_argument("--lightly-size", default="256,65536", help="B,K of the lightly rows (float32, D=128)")
    p.add_argument("--lightly-rounds", type=int, default=5, help="interleaved rounds of the lightly rows")
    p.add_argument(
        "--no-moco-queue", action="store_true", help="leave out the official MoCo v2 loss on its (D, K) queue"
    )
    p.add_argument(
        "--moco-queue-only",
        action="store_true",
        help="only the official MoCo v2 loss against ours on its queue",
    )
    p.add_argument(
        "--moco-queue-size", default="256,65536", help="B,K of the MoCo queue rows (float32, D=128)"
    )
    p.add_argument(
        "--moco-queue-rounds", type=int, default=5, help="interleaved rounds of the MoCo queue rows"
    )
    p.add_argument(
        "--out", default=None, help="Markdown file to write (default benchmarks/results/<device>.md)"
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is available")
    dtype = getattr(torch, args.dtype)
    providers = args.providers.split(",")
    headline = Case(256, 65536, 128, dtype)
    cases = [headline]
    if not args.headline:
        cases += [
            Case(B, K, 128, dtype)
            for B in map(int, args.Bs.split(","))
            for K in map(int, args.Ks.split(","))
            if (B, K) != (256, 65536)
        ]
    info = adam_ext.build_info()
    print(
        f"adam_ext benchmark on {machine(args.device)}; torch {torch.__version__}; build {info}", flush=True
    )

    results: list[Result] = []
    only = args.lightly_only or args.moco_queue_only
    if not only:
        for case in cases:
            print(f"case B={case.B} K={case.K} D={case.D} {case.dtype} gamma={case.gamma}", flush=True)
            results += run_case(case, providers, args.device, args)
        if not args.no_official:
            results += official_case(headline, args.device, args)
    lightly = None
    if not args.no_lightly and not args.moco_queue_only:
        B, K = map(int, args.lightly_size.split(","))
        lightly = lightly_rows(Case(B, K, 128, torch.float32, None), args.device, args)
    moco = None
    if not args.no_moco_queue and not args.lightly_only:
        B, K = map(int, args.moco_queue_size.split(","))
        moco = moco_queue_rows(Case(B, K, 128, torch.float32, None), args.device, args)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# bench_loss: {args.device}, {args.dtype}",
        "",
        f"- machine: {machine(args.device)}",
        f"- torch {torch.__version__}, adam_ext commit {git_commit()}, {stamp}",
        f"- τ = {TEMPERATURE}, median after warm-up"
        + ("; operator rows: forward + backward, gradients of q and k" if results else ""),
        f"- command: `python benchmarks/bench_loss.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
    ]
    if results:
        lines += [
            "Headline (B=256, K=65536, D=128):",
            "",
            headline_summary(results, headline),
            "",
            table(results),
            "",
        ]
    if lightly is not None:
        lines += [lightly_table(lightly), ""]
    if moco is not None:
        lines += [moco_queue_table(moco), ""]
    report = "\n".join(lines)
    print("\n" + report)
    suffix = (
        "-lightly"
        if args.lightly_only
        else "-moco-queue"
        if args.moco_queue_only
        else "-headline"
        if args.headline
        else ""
    )
    out = args.out or os.path.join(RESULTS_DIR, f"{args.device}{suffix}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
