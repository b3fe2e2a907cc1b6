"""What a pretraining epoch reads: the order of its samples and the seeds of their views.

Data order, anchors and views are functions of (seed, stage, epoch, sample), never of worker
scheduling: the named streams of :mod:`adam_ext._util.seeds` mix them (``epoch_order``, ``views``,
``val_views``), :class:`EpochBatches` orders an epoch for one rank,
:class:`PretrainViews` turns ``(index, seed)`` into two views. A resumed epoch skips the batches
done without reading them, so a resumed run sees exactly what an uninterrupted one saw.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Sampler

from .._util.seeds import mix, stream_seed, torch_generator

__all__ = ["EpochBatches", "PretrainViews", "sample_seed"]

#: The package's one seed mixer (:func:`adam_ext._util.seeds.mix`), under its earlier name.
sample_seed = mix


class PretrainViews(Dataset):
    """Two views of an image, reproducibly: item ``(i, seed)`` is ``views(image_i)`` drawn from a
    generator seeded with ``seed``.

    Args:
        reader: a data set reader of :mod:`adam_ext.data` (its ``image(i)``: uint8 Tensor[C, H, W]).
        indices: which of the reader's samples form this data set.
        views: an :class:`adam_ext.data.views.TwoViews`.

    Items are ``(q, k)``, two float32 Tensor[3, S, S].
    """

    def __init__(self, reader, indices, views):
        self.reader, self.indices, self.views = reader, list(indices), views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        index, seed = key
        image = self.reader.image(self.indices[index])
        return self.views(image, generator=torch.Generator().manual_seed(seed))


class EpochBatches(Sampler):
    """Batches of ``(index, view seed)`` for one rank and one epoch, from ``start`` on.

    The epoch's order is a permutation seeded by (seed, stage, epoch); global batch ``g`` takes
    positions ``[g * B, (g + 1) * B)`` of it and rank r its r-th slice of B / world (the last
    incomplete global batch is dropped, so every rank takes the same number of equal batches).

    Args:
        n (int): samples in the data set.
        global_batch (int): images per step over all ranks.
        world, rank (int): the process group's size and this rank.
        seed, stage, epoch (int): what the order and the views depend on.
        start (int): first global batch (a resumed epoch skips the ones done, reading nothing).
        shuffle (bool): False for validation: a fixed order, views independent of the epoch, and
            the tail kept (rank r takes positions r, r + world, ...).
    """

    def __init__(self, n, global_batch, world, rank, seed, stage, epoch, start=0, shuffle=True):
        self.n, self.global_batch, self.world, self.rank = n, global_batch, world, rank
        self.seed, self.stage, self.epoch, self.start, self.shuffle = seed, stage, epoch, start, shuffle
        self.local = global_batch // world

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(len(range(self.rank, self.n, self.world)) / self.local)
        return max(0, self.n // self.global_batch - self.start)

    def __iter__(self):
        if not self.shuffle:
            mine = list(range(self.rank, self.n, self.world))
            for at in range(0, len(mine), self.local):
                yield [(i, stream_seed(self.seed, "val_views", i)) for i in mine[at : at + self.local]]
            return
        generator = torch_generator(self.seed, "epoch_order", self.stage, self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        for step in range(self.start, self.n // self.global_batch):
            at = step * self.global_batch + self.rank * self.local
            yield [
                (i, stream_seed(self.seed, "views", self.stage, self.epoch, i))
                for i in order[at : at + self.local]
            ]
