"""Quick start of the fused pruned InfoNCE loss on random embeddings.

Runs one MoCo-style loss evaluation with and without the purposive pruner, shows how many
queue keys were pruned, and checks the result against the pure-PyTorch reference.

    python python/loss_quickstart.py --batch 256 --queue 65536 --dim 128 --gamma 0.8
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import adam_ext


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, default=65536)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--gamma", type=float, default=0.8)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    q = torch.randn(args.batch, args.dim, device=args.device, requires_grad=True)
    k = q.detach() + 0.5 * torch.randn_like(q)
    queue = F.normalize(torch.randn(args.queue, args.dim, device=args.device), dim=1)
    # A few near-duplicates of the queries in the queue: the false negatives the pruner removes.
    queue[: args.batch // 4] = F.normalize(q.detach()[: args.batch // 4] + 0.2 * torch.randn_like(q[: args.batch // 4]), dim=1)

    for gamma in (None, args.gamma):
        start = time.perf_counter()
        loss, pruned = adam_ext.pruned_info_nce(q, k, queue, temperature=args.temperature, gamma=gamma, return_pruned=True)
        loss.backward()
        elapsed = time.perf_counter() - start
        ref = adam_ext.ops.reference.pruned_info_nce(q.detach(), k, queue, temperature=args.temperature, gamma=gamma)
        print(f"gamma={gamma}: loss {loss.item():.6f} (reference {ref.item():.6f}), "
              f"keys pruned per query {pruned.float().mean().item():.2f}, forward+backward {elapsed * 1e3:.1f} ms")
        q.grad = None
    print("build:", adam_ext.build_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
