"""Per-process random generators for augmentations run in DataLoader workers: the anatomy
decomposer's draws (:mod:`adam_ext.data.decomposer`), the views' (:mod:`adam_ext.data.views`) and
the segmentation augmentations' (:mod:`adam_ext.data.seg_augment`).
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from .._util.seeds import stream_seed

SeedLike = int | torch.Generator | None


class ProcessRandomness:
    """A torch.Generator per process, so DataLoader workers never repeat each other.

    A generator built in ``__init__`` is copied into every worker with the same state, which would
    give every worker the same augmentations. Here the generator is (re)made lazily in each
    process: in the main process from ``seed``; in a worker from ``seed`` mixed with the worker's
    ``seed`` (which the DataLoader derives from its own generator, new every epoch). With
    ``seed=None`` draws come from torch's global generator, which the DataLoader also seeds per
    worker.

    Args:
        seed: an int, a ``torch.Generator`` (used as is in the main process; in workers its
            ``initial_seed()`` is mixed with the worker's seed) or None.
    """

    def __init__(self, seed: SeedLike = None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, torch.Generator))):
            raise ValueError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
        self._given = seed if isinstance(seed, torch.Generator) else None
        self.seed = seed.initial_seed() if isinstance(seed, torch.Generator) else seed
        self._generator: torch.Generator | None = None
        self._owner: int | None = None  # worker seed the generator was made for (None: main process)

    def generator(self) -> torch.Generator | None:
        """The generator to draw from in this process (None: torch's global generator)."""
        if self.seed is None:
            return None
        info = get_worker_info()
        owner = None if info is None else info.seed
        if self._generator is None or owner != self._owner:
            if owner is None:
                self._generator = self._given or torch.Generator().manual_seed(self.seed)
            else:
                self._generator = torch.Generator().manual_seed(self.process_seed(owner))
            self._owner = owner
        return self._generator

    def process_seed(self, worker_seed: int) -> int:
        """A 63-bit seed mixing ``self.seed`` with a worker's seed (the ``worker`` stream)."""
        return stream_seed(self.seed, "worker", worker_seed)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_given=None, _generator=None, _owner=None)  # generators are per process
        return state
