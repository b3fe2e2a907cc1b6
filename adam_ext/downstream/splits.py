"""The samples of one fine-tuning run: the data set's training and test splits, a seeded validation
hold-out and few-shot subsets (see :mod:`.protocol` for the default splits per data set)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util.seeds import holdout as group_holdout
from .._util.seeds import numpy_rng
from ..data.registry import DATASETS, SPLITS
from .config import FinetuneConfig

__all__ = ["Splits", "few_shot", "holdout", "open_splits"]


def holdout(groups, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fine-tuning run's validation hold-out: (kept, held-out) index lists into ``groups``, sorted.

    Args:
        groups: the training reader's :meth:`~adam_ext.data.readers.Reader.groups` (patients where
            known: a patient's images stay on one side), or an int ``n`` (n samples, each its own group).
        fraction: share of the samples to hold out.
        seed: the run's seed (the ``finetune_val`` stream of :func:`adam_ext._util.seeds.holdout`).
    """
    groups = list(range(groups)) if isinstance(groups, int) else list(groups)
    held = group_holdout(groups, fraction, seed, stream="finetune_val")
    return np.flatnonzero(~held).tolist(), np.flatnonzero(held).tolist()


def few_shot(pool, shots: int, seed: int) -> list[int]:
    """``shots`` indices drawn without replacement from ``pool`` (the ``few_shot`` stream of ``seed``).

    Deterministic per (pool, shots, seed) and independent of the order of ``pool``.

    Raises:
        ValueError: ``shots`` larger than the pool.
    """
    pool = sorted(pool)
    if shots > len(pool):
        raise ValueError(
            f"shots must be at most the {len(pool)} training images left after validation, got {shots}"
        )
    chosen = numpy_rng(seed, "few_shot").choice(len(pool), size=shots, replace=False)
    return sorted(pool[i] for i in chosen)


@dataclass
class Splits:
    """The readers and sample indices of one run.

    Attributes:
        train, val, test: readers (``val`` may be ``train`` itself).
        train_idx, val_idx, test_idx: indices into them.
    """

    train: Any
    val: Any
    test: Any
    train_idx: list[int]
    val_idx: list[int]
    test_idx: list[int]


def open_splits(cfg: FinetuneConfig, seed: int) -> Splits:
    """Opens the training, validation and test samples of one run (see the module docstring).

    Args:
        cfg: a resolved config.
        seed: the run's seed (validation hold-out and few-shot draw).

    Raises:
        ValueError: the test split shares images with the training split, or too few images.
    """
    from adam_ext.data.registry import open_dataset

    default_train, _, reader_val = SPLITS[cfg.dataset]
    options = dict(cfg.options)
    if reader_val is not None and cfg.train_split == default_train:
        seeded = {**options, "seed": seed}
        if DATASETS[cfg.dataset].val_fraction_option:
            seeded["val_fraction"] = cfg.val_fraction
        train = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **seeded)
        val = open_dataset(cfg.dataset, cfg.root, split=reader_val, **seeded)
        pool, val_idx = list(range(len(train))), list(range(len(val)))
    else:
        train = val = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **options)
        pool, val_idx = holdout(train.groups(), cfg.val_fraction, seed)
    test = open_dataset(cfg.dataset, cfg.root, split=cfg.test_split, **options)
    shared = set(train.image_keys()) & set(test.image_keys())
    if shared:
        raise ValueError(
            f"test_split {cfg.test_split!r} must not share images with train_split {cfg.train_split!r}, "
            f"got {len(shared)} shared (e.g. {min(shared)})"
        )
    train_idx = few_shot(pool, cfg.shots, seed) if cfg.shots is not None else pool
    if len(train_idx) < 2 or not val_idx or len(test) == 0:
        raise ValueError(
            f"the splits must hold at least 2 training, 1 validation and 1 test image, got {len(train_idx)}, "
            f"{len(val_idx)} and {len(test)} ({cfg.dataset} at {cfg.root})"
        )
    return Splits(train, val, test, train_idx, val_idx, list(range(len(test))))
