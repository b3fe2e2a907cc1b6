"""The epoch-level machinery of a fine-tuning run: optimiser, one training epoch, evaluation of a
set (sharded over ranks under ``torchrun``, gathered so every rank gets the same metrics)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from ..data.views import worker_init
from ..engine import all_sum, amp_dtype, autocast, check_finite
from .config import FinetuneConfig

__all__ = ["evaluate", "make_optimizer", "train_epoch"]


def make_optimizer(cfg: FinetuneConfig, params):
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def evaluate(model, task, dataset, cfg, ctx) -> tuple[dict, float]:
    """(metrics over the whole ``dataset``, mean loss); every rank gets the same result.

    BatchNorm running statistics are first broadcast from rank 0: each rank updated its own in its
    last training forward (DDP only syncs buffers at the start of a forward), and rank 0's are
    the ones checkpointed.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    mine = list(range(ctx.rank, len(dataset), ctx.world))
    loader = DataLoader(
        Subset(dataset, mine),
        batch_size=max(1, cfg.batch_size // ctx.world),
        shuffle=False,
        num_workers=cfg.workers,
        worker_init_fn=worker_init,
    )
    parts: dict[str, list] = {}
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    model.eval()
    with torch.no_grad(), autocast(ctx.device, amp_dtype(cfg.amp, ctx.device)):
        for x, y in loader:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            logits = model(x).float()
            loss_sum += task.loss(logits, y).double() * x.shape[0]
            for key, value in task.collect(logits, y).items():
                parts.setdefault(key, []).append(value)
    local = {k: np.concatenate(v) for k, v in parts.items()}
    shards = [(mine, local, float(loss_sum))]
    if ctx.distributed:
        shards = [None] * ctx.world
        dist.all_gather_object(shards, (mine, local, float(loss_sum)))
    order = np.argsort(np.concatenate([np.asarray(s[0], dtype=np.int64) for s in shards]), kind="stable")
    keys = next((list(s[1]) for s in shards if s[1]), [])
    merged = {k: np.concatenate([s[1][k] for s in shards if s[1]])[order] for k in keys}
    return task.metrics(merged), sum(s[2] for s in shards) / max(1, len(dataset))


def train_epoch(net, task, loader, optimizer, schedule, cfg, ctx, desc, frozen=None) -> float:
    """One epoch; returns the mean training loss over all ranks' samples (one sync per epoch).
    ``frozen``: a module kept in eval mode (a frozen encoder's BN statistics do not move)."""
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=desc, leave=False)
    net.train()
    if frozen is not None:
        frozen.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if x.shape[0] < 2:  # BatchNorm cannot train on one image; every rank has the same batch sizes
            schedule.step()
            continue
        with autocast(ctx.device, amp_dtype(cfg.amp, ctx.device)):
            loss = task.loss(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach().double() * x.shape[0]
        count += x.shape[0]
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    total, n = all_sum(ctx, loss_sum, count)
    mean = total / max(1.0, n)
    check_finite(mean, f"{desc or 'a fine-tuning epoch'} (mean training loss)", f"lower lr (now {cfg.lr})")
    return mean
