"""The samples of one fine-tuning run: the data set's training and test splits, a seeded validation
hold-out and few-shot subsets (see :mod:`.protocol` for the default splits per data set)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.registry import SPLITS
from .config import FinetuneConfig

__all__ = ["Splits", "few_shot", "holdout", "open_splits"]


def holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into (kept, held-out) index lists, both sorted.

    ``round(fraction * n)`` samples are held out (at least 1 when n >= 2), drawn with
    ``numpy.random.default_rng([seed, 0])``.
    """
    n_held = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    order = np.random.default_rng([seed, 0]).permutation(n)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())


def few_shot(pool, shots: int, seed: int) -> list[int]:
    """``shots`` indices drawn without replacement from ``pool`` with ``default_rng([seed, 1])``.

    Deterministic per (pool, shots, seed) and independent of the order of ``pool``.

    Raises:
        ValueError: ``shots`` larger than the pool.
    """
    pool = sorted(pool)
    if shots > len(pool):
        raise ValueError(f"shots must be at most the {len(pool)} training images left after validation, got {shots}")
    chosen = np.random.default_rng([seed, 1]).choice(len(pool), size=shots, replace=False)
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
        if cfg.dataset == "chestxray14":
            seeded["val_fraction"] = cfg.val_fraction
        train = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **seeded)
        val = open_dataset(cfg.dataset, cfg.root, split=reader_val, **seeded)
        pool, val_idx = list(range(len(train))), list(range(len(val)))
    else:
        train = val = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **options)
        pool, val_idx = holdout(len(train), cfg.val_fraction, seed)
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
