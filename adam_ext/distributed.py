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

__all__ = ["ProcessContext"]


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
