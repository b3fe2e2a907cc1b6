"""Every random draw of the package comes from one seed mixer and a *named* stream.

:func:`mix` (splitmix64 steps) turns a seed and integer parts into a 63-bit seed; a stream's name
(a member of :data:`STREAMS`) becomes its first part, so two uses of one seed never share draws
and no stream is a bare number in the code. :func:`numpy_rng` and :func:`torch_generator` build
the generators; :func:`holdout` is the one hold-out every split uses (patient-wise wherever the
reader knows patients).

:data:`SPLIT_VERSION` names the rule: run folders and checkpoints record it, and a resume under
another version is refused (its validation images would differ).

Example:
    >>> rng = numpy_rng(0, "few_shot")
    >>> held = holdout(["p1", "p1", "p2", "p3"], 0.25, seed=0)
    >>> held.dtype, held.shape
    (dtype('bool'), (4,))
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SPLIT_VERSION", "STREAMS", "holdout", "mix", "numpy_rng", "stream_seed", "torch_generator"]

#: Version of the hold-out and seeding rules. 1: the four hold-outs and two mixers before 0.2.0;
#: 2: :func:`holdout` and :func:`mix` with named streams everywhere.
SPLIT_VERSION = 2

#: The named streams: what each seeds. A name not listed here is refused (a typo would silently
#: open a new stream).
STREAMS = {
    # splits
    "pretrain_val": "the pretraining validation hold-out when the reader has no validation split",
    "finetune_val": "a fine-tuning run's validation hold-out",
    "few_shot": "the few-shot subset of a fine-tuning run",
    "reader_val": "a reader's own validation split (ChestX-ray14, a folder of images, the synthetic set)",
    "reader_test": "a reader's own test split (Shenzhen, SIIM-ACR)",
    "synthetic_test": "the synthetic generator's test list",
    # the synthetic generator
    "synthetic_schedule": "patients and their follow-up visits",
    "synthetic_subject": "a patient's anatomy",
    "synthetic_image": "one film: pose, exposure, findings, texture and noise",
    "synthetic_vessels": "a patient's vessel tree",
    # pretraining
    "epoch_order": "the order of a pretraining epoch's samples",
    "views": "the two views of a training sample",
    "val_views": "the two views of a validation sample",
    "worker": "a DataLoader worker's augmentations",
    # monitors and analyses
    "monitor_patches": "the images and landmark patches of the k-NN monitor",
    "landmark_images": "the images whose landmark patches an analysis embeds",
    "eve_images": "the images an Eve analysis or the explorer shows",
    "correspondence_pairs": "the image pairs of the correspondence analysis",
    "correspondence_views": "the views of a correspondence pair",
    "correspondence_subjects": "the subject pairs of the correspondence analysis",
    "compositionality": "the patches of the compositionality analysis",
    "benchmark": "the inputs of a benchmark",
}

_MASK = (1 << 64) - 1


def _stream_id(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {name!r}")
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def mix(seed: int, *parts: int) -> int:
    """A 63-bit seed mixing ``seed`` with the integer ``parts`` (splitmix64 steps; order matters).

    Args:
        seed: any int (taken modulo 2**64).
        *parts: ints (stage, epoch, sample...), each taken modulo 2**64.

    Returns:
        int in [0, 2**63).
    """
    x = int(seed) & _MASK
    for part in parts:
        x = (x + 0x9E3779B97F4A7C15 + (int(part) & _MASK)) & _MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        x ^= x >> 31
    return x >> 1


def stream_seed(seed: int, stream: str, *parts: int) -> int:
    """The 63-bit seed of stream ``stream`` (a name of :data:`STREAMS`) of ``seed``, with ``parts``."""
    return mix(seed, _stream_id(stream), *parts)


def numpy_rng(seed: int, stream: str, *parts: int) -> np.random.Generator:
    """A NumPy generator (PCG64) for stream ``stream`` of ``seed`` (see :func:`stream_seed`)."""
    return np.random.default_rng(stream_seed(seed, stream, *parts))


def torch_generator(seed: int, stream: str, *parts: int):
    """A CPU ``torch.Generator`` for stream ``stream`` of ``seed`` (see :func:`stream_seed`)."""
    import torch

    return torch.Generator().manual_seed(stream_seed(seed, stream, *parts))


def holdout(groups, fraction: float, seed: int, stream: str = "pretrain_val") -> np.ndarray:
    """The one seeded group-wise hold-out of the package.

    Whole groups (patients; a sample is its own group where the reader knows no patients) are taken
    in an order drawn from ``stream`` of ``seed`` until at least ``round(fraction * N)`` samples are
    held out. When ``0 < fraction < 1`` and there are at least two groups, at least one group is
    held out and at least one kept, so both sides are non-empty. The result does not depend on the
    order of ``groups``.

    Args:
        groups: per-sample group ids (sequence of N hashable, sortable values).
        fraction: share of the samples to hold out, in [0, 1].
        seed: the seed (a run's, or a data set's).
        stream: the named stream (:data:`STREAMS`) of this hold-out.

    Returns:
        bool ndarray[N]: True for the held-out samples.

    Raises:
        ValueError: ``fraction`` outside [0, 1] or an unknown stream.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the hold-out fraction must be in [0, 1], got {fraction!r}")
    groups = np.asarray(groups)
    if groups.size == 0:
        return np.zeros(0, dtype=bool)
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = numpy_rng(seed, stream).permutation(len(unique))
    target = round(fraction * len(groups))
    n_groups = 0 if target == 0 else int(np.searchsorted(np.cumsum(counts[order]), target)) + 1
    if 0 < fraction < 1 and len(unique) >= 2:
        n_groups = min(max(n_groups, 1), len(unique) - 1)
    held = np.zeros(len(unique), dtype=bool)
    held[order[:n_groups]] = True
    return held[inverse.reshape(-1)]
