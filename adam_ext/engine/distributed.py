"""This process's place in a run: rank, world size and device, from torchrun's environment.

Shared by pretraining (:mod:`adam_ext.pretrain`) and fine-tuning (:mod:`adam_ext.downstream`): one
process alone, or one rank of ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), with NCCL
on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["AUTO_WORKERS_MAX", "ProcessContext", "auto_workers", "resolve_workers"]

#: The most DataLoader workers ``workers="auto"`` gives one rank.
AUTO_WORKERS_MAX = 16


def auto_workers(cpus: int | None = None, local_world: int | None = None) -> int:
    """DataLoader workers per rank for ``data.workers: auto``.

    The CPUs this process may run on (``os.sched_getaffinity``, which honours ``taskset``, cgroup
    cpusets and Slurm's binding; ``os.cpu_count`` where it does not exist) are shared by the ranks
    of this node (torchrun's ``LOCAL_WORLD_SIZE``); each rank keeps one for its own training
    process and gives the rest to workers, at most :data:`AUTO_WORKERS_MAX`. One rank on 2 cores:
    1 worker (the demo's setting); 8 ranks on 64 cores: 7 each; 1 rank on 16 cores: 15.

    Args:
        cpus: the CPUs available (default: this process's).
        local_world: ranks on this node (default: ``LOCAL_WORLD_SIZE``, else 1).
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_world is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(AUTO_WORKERS_MAX, cpus // max(1, local_world) - 1))


def resolve_workers(workers) -> int:
    """``workers`` as a number of DataLoader workers: an int >= 0 as it is, ``"auto"`` by :func:`auto_workers`."""
    return auto_workers() if workers == "auto" else workers


class ProcessContext:
    """Rank, world size and device of this process; joins the process group under torchrun.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda`` (an error without CUDA).
        timeout: seconds a collective may wait for the other ranks before failing.

    Attributes:
        world, rank, local_rank (int); device (torch.device: ``cuda:LOCAL_RANK`` or cpu);
        distributed (bool: world > 1); main (bool: rank 0, the one that writes files).
    """

    def __init__(self, device: str, timeout: float):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device must be cpu or auto on a machine without CUDA, got 'cuda'")
        want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", self.local_rank) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if want_cuda else "gloo",
                timeout=datetime.timedelta(seconds=timeout),
                device_id=self.device if want_cuda else None,
            )
            self.owns_group = True
        if dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.distributed = self.world > 1
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leaves the process group if this context joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
