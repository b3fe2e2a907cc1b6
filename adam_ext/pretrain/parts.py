"""The pieces a pretraining run is built from: its splits and loaders, its model, its monitors, its stops.

:class:`~adam_ext.pretrain.loop.Trainer` wires them; each is also usable alone (the learning curve
measures the initial encoder with :func:`initial_knn`, a benchmark builds :class:`RunData`).
"""

from __future__ import annotations

import signal
import sys
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._util.seeds import holdout
from ..data.sampling import EpochBatches, PretrainViews
from ..models import MoCo, check_queue_size
from .config import PretrainConfig

__all__ = [
    "RunData",
    "Stopper",
    "build_model",
    "initial_knn",
    "initial_model",
    "knn_at_scales",
    "open_splits",
    "stage_monitor",
]


def open_splits(cfg: PretrainConfig):
    """(train reader, train indices, val reader, val indices): the reader's validation split, or a
    seeded ``val_fraction`` of the training split's patients (:func:`adam_ext._util.seeds.holdout`)."""
    from ..data.registry import dataset_class, open_dataset

    d = cfg.data
    options = dict(d.options)
    if d.cache:
        options["cache"] = d.cache
    train = open_dataset(d.dataset, d.root, split=d.train_split, **options)
    cls = dataset_class(d.dataset)
    splits = set(getattr(cls, "splits", ())) | set(getattr(cls, "split_aliases", {}))
    if d.val_split and d.val_split in splits and d.val_split != d.train_split:
        val = open_dataset(d.dataset, d.root, split=d.val_split, **options)
        return train, list(range(len(train))), val, list(range(len(val)))
    held = holdout(train.groups(), d.val_fraction, cfg.seed, stream="pretrain_val")
    return train, np.flatnonzero(~held).tolist(), train, np.flatnonzero(held).tolist()


def build_model(cfg: PretrainConfig, distributed: bool = False) -> MoCo:
    """The run's MoCo model as ``cfg.model`` says, drawn from torch's global generator (the
    Trainer seeds it with ``cfg.seed`` first)."""
    return cfg.model.build(distributed)


def initial_model(cfg: PretrainConfig) -> MoCo:
    """The MoCo model a run of ``cfg`` starts from (torch seeded with ``cfg.seed``, built as the
    Trainer builds it); torch's global generator is left as it was."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        return build_model(cfg)
    finally:
        torch.random.set_rng_state(state)


def stage_monitor(cfg: PretrainConfig, stage: int, splits):
    """The :class:`~adam_ext.engine.monitors.RepresentationMonitor` of stage ``stage`` (its grid ``n``
    sets the landmark patches' scale). ``splits``: :func:`open_splits`'s result."""
    from ..data.views import TwoViews
    from ..engine.monitors import RepresentationMonitor

    n, mon = cfg.stages[stage], cfg.monitor
    views = TwoViews(cfg.data.view_size, n, **cfg.data.view_options())
    train_reader, train_idx, val_reader, val_idx = splits
    return RepresentationMonitor(
        views.config.size,
        views.normalize,
        train_reader,
        train_idx,
        val_reader,
        val_idx,
        n=n,
        seed=cfg.seed,
        images=mon.images,
        knn_images=mon.knn_images,
        k=mon.k,
        temperature=mon.temperature,
    )


@torch.no_grad()
def knn_at_scales(cfg: PretrainConfig, encoder: nn.Module) -> dict[int, dict]:
    """The k-NN monitor of ``encoder`` (a MoCo query encoder, on the CPU) at every stage's scale of
    ``cfg``: ``{n: {"knn_landmark": ...}}`` ({} inner dicts when the data set has neither landmarks nor
    labels). Values of one n compare across encoders (the same patches: ``cfg.seed`` picks them)."""
    splits = open_splits(cfg)
    return {
        cfg.stages[i]: stage_monitor(cfg, i, splits).knn_monitor(encoder, torch.device("cpu"))
        for i in range(len(cfg.stages))
    }


@torch.no_grad()
def initial_knn(cfg: PretrainConfig) -> dict[int, dict]:
    """The k-NN monitor of the run's *initial* encoder at every stage's scale: ``{n: {"knn_landmark":
    ...}}``. The random-initialisation reference for a stage's k-NN: the landmark patches' side is the
    image's / max(n, 2), so values of different stages are measured on different patches and compare
    only with the reference at the same n."""
    return knn_at_scales(cfg, initial_model(cfg).encoder_q)


class RunData:
    """A run's splits and its loaders of two views, positioned at any (stage, epoch, step).

    One loader per stage and kind, kept across epochs: with ``data.workers`` its worker processes
    persist and only its batch sampler is moved on, in this process. Views depend on (seed, stage,
    epoch, sample) alone, never on a worker's state, so the batches are those of a fresh loader.

    Args:
        cfg: the configuration; ``world``, ``rank``: this process's place; ``workers``: loader
            workers per rank; ``pin_memory``: for a GPU.
    """

    def __init__(
        self, cfg: PretrainConfig, world: int = 1, rank: int = 0, workers: int = 0, pin_memory=False
    ):
        if cfg.optim.batch_size % world:
            raise ValueError(
                f"optim.batch_size must be divisible by the world size {world}, got {cfg.optim.batch_size}"
            )
        self.cfg, self.world, self.rank, self.workers, self.pin_memory = cfg, world, rank, workers, pin_memory
        self.splits = open_splits(cfg)
        self.train_reader, self.train_idx, self.val_reader, self.val_idx = self.splits
        self.global_batch = cfg.optim.batch_size
        self.steps_per_epoch = len(self.train_idx) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"optim.batch_size={self.global_batch} exceeds the {len(self.train_idx)} training "
                f"images: no full batch per epoch"
            )
        self._loaders: dict[tuple[int, bool], DataLoader] = {}

    def queue_capacity(self, K: int, say: bool = True) -> int:
        """How many distinct training images a queue of ``K`` keys holds; ``say``: print the warning of
        :func:`~adam_ext.models.check_queue_size` when K is not much smaller than the training set."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            capacity = check_queue_size(K, len(self.train_idx))
        for w in caught if say else ():
            print(f"adam pretrain: warning: {w.message}", file=sys.stderr, flush=True)
        return capacity

    def sizes(self) -> dict:
        """What a checkpoint records of the data (a model card reports it)."""
        return {
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "steps_per_epoch": self.steps_per_epoch,
        }

    def loader(self, stage: int, epoch: int, start: int, train: bool) -> DataLoader:
        """The stage's training (or validation) loader, positioned at (``epoch``, global batch ``start``)."""
        loader = self._loaders.get((stage, train))
        if loader is None:
            from ..data.views import TwoViews, worker_init

            if any(key[0] != stage for key in self._loaders):
                self.close()  # a new stage: the previous one's workers stop
            cfg = self.cfg
            views = TwoViews(cfg.data.view_size, cfg.stages[stage], **cfg.data.view_options())
            reader, indices = (
                (self.train_reader, self.train_idx) if train else (self.val_reader, self.val_idx)
            )
            sampler = EpochBatches(
                len(indices),
                self.global_batch,
                self.world,
                self.rank,
                cfg.seed,
                stage,
                epoch,
                start,
                shuffle=train,
            )
            loader = DataLoader(
                PretrainViews(reader, indices, views),
                batch_sampler=sampler,
                num_workers=self.workers,
                worker_init_fn=worker_init if self.workers else None,
                pin_memory=self.pin_memory,
                persistent_workers=self.workers > 0,
                generator=torch.Generator().manual_seed(cfg.seed),
            )  # the global RNG stays alone
            self._loaders[(stage, train)] = loader
        loader.batch_sampler.epoch, loader.batch_sampler.start = epoch, start
        return loader

    def close(self) -> None:
        """Stops the loaders' worker processes (at a stage's end and the run's)."""
        self._loaders.clear()  # their iterators shut the workers down when collected


class Stopper:
    """Turns SIGTERM/SIGINT into a flag checked between steps (the step in flight finishes)."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def report(self, where: str, max_steps: int | None, main: bool) -> str:
        """Prints (rank 0) that the run stopped ``where`` (its checkpoint is saved); returns what stopped it:
        the signal's name or ``"max_steps"``."""
        if main:
            why = self.signal or f"max_steps={max_steps}"
            print(f"adam pretrain: stopped by {why} {where}; continue with --resume", flush=True)
        return self.signal or "max_steps"

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
