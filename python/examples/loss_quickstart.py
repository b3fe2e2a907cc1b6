"""Quick start of the fused pruned InfoNCE loss on random embeddings.

Runs one MoCo-style loss evaluation with and without the purposive pruner, shows how much of the
queue was pruned, and checks the result against the pure-PyTorch reference.

    python python/examples/loss_quickstart.py --batch 256 --queue 65536 --dim 128 --gamma 0.8

On random data nothing is pruned: random unit vectors in 128 dimensions have cosine similarities
of about ±0.1, never near γ = 0.8. Real MoCo queues hold false negatives, keys of the same anatomy as
the query; so that the pruner has something to do here, a few near-duplicates of each query are
planted in the queue (``--duplicates`` per query, cosine ≈ 0.98), and the pruned fraction printed is
theirs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import adam_ext


def plant_near_duplicates(queue: torch.Tensor, q: torch.Tensor, per_query: int, noise: float = 0.2) -> int:
    """Overwrites the first ``per_query * B`` rows of ``queue`` (Tensor[K, D], unit rows) with noisy copies of
    the normalised queries (cosine about 1 / sqrt(1 + noise²) ≈ 0.98 with their query); returns how many."""
    n = min(per_query * q.shape[0], queue.shape[0])
    owners = torch.arange(n, device=q.device) % q.shape[0]
    source = F.normalize(q.detach(), dim=1)[owners]
    queue[:n] = F.normalize(source + noise * F.normalize(torch.randn_like(source), dim=1), dim=1)
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, default=65536)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--gamma", type=float, default=0.8)
    p.add_argument("--duplicates", type=int, default=8, help="near-duplicate keys planted per query")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    q = torch.randn(args.batch, args.dim, device=args.device, requires_grad=True)
    k = q.detach() + 0.5 * torch.randn_like(q)
    queue = F.normalize(torch.randn(args.queue, args.dim, device=args.device), dim=1)
    planted = plant_near_duplicates(queue, q, args.duplicates)
    print(
        f"queue of {args.queue} unit keys: random, but for {planted} planted near-duplicates of the queries "
        f"({args.duplicates} per query: the false negatives the pruner is for)"
    )

    for gamma in (None, args.gamma):
        start = time.perf_counter()
        loss, pruned = adam_ext.pruned_info_nce(
            q, k, queue, temperature=args.temperature, gamma=gamma, return_pruned=True
        )
        loss.backward()
        elapsed = time.perf_counter() - start
        ref = adam_ext.reference.pruned_info_nce(
            q.detach(), k, queue, temperature=args.temperature, gamma=gamma
        )
        per_query = pruned.double().mean().item()
        print(
            f"gamma={gamma}: loss {loss.item():.6f} (reference {ref.item():.6f}), "
            f"pruned {per_query:.2f} keys per query ({100 * per_query / args.queue:.3g}% of the queue), "
            f"forward+backward {elapsed * 1e3:.1f} ms"
        )
        q.grad = None
    print("build:", adam_ext.build_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
