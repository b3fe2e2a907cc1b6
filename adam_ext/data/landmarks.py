"""Patches around annotated landmarks: what the locality analysis (``adam eve locality``) and the
pretraining engine's landmark k-NN monitor embed.

A patch is a square centred on a landmark, zero-padded where it leaves the image, so that every
patch shows its landmark at its centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._util.seeds import numpy_rng

__all__ = ["LandmarkPatches", "extract_patch", "landmark_names_of", "landmark_patches", "level_sides"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def extract_patch(image: torch.Tensor, center, side: int) -> torch.Tensor:
    """The ``side`` x ``side`` patch of ``image`` centred on ``center``, zero outside the image.

    Pixel centres sit at integer coordinates (the readers' landmark convention), so the patch
    holds rows ``y0 .. y0 + side - 1`` and columns ``x0 .. x0 + side - 1`` with
    ``x0 = floor(x - (side - 1) / 2 + 0.5)`` (likewise ``y0``): its centre is within half a pixel
    of ``center``. Where the patch leaves the image it is padded with 0 (constant), so a patch
    near the border stays centred on its landmark instead of shifting inwards.

    Args:
        image: Tensor[C, H, W] (any dtype; the readers give uint8).
        center: (x, y) in pixels, finite.
        side: patch side in pixels, >= 1.

    Returns:
        Tensor[C, side, side], ``image``'s dtype and device.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(
            f"image must be a Tensor[C, H, W], got "
            f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
        )
    if not _is_int(side) or side < 1:
        raise ValueError(f"side must be a positive integer (pixels), got {side!r}")
    x, y = (float(v) for v in center)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"center must be a finite (x, y), got {(x, y)}")
    _, h, w = image.shape
    x0, y0 = math.floor(x - (side - 1) / 2 + 0.5), math.floor(y - (side - 1) / 2 + 0.5)
    out = image.new_zeros((image.shape[0], side, side))
    xa, xb, ya, yb = max(x0, 0), min(x0 + side, w), max(y0, 0), min(y0 + side, h)
    if xa < xb and ya < yb:
        out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = image[:, ya:yb, xa:xb]
    return out


def level_sides(levels: Sequence[float], height: int, width: int) -> list[int]:
    """Patch sides in pixels: ``round(level * min(height, width))``, at least 1."""
    return [max(1, round(f * min(height, width))) for f in levels]


@dataclass
class LandmarkPatches:
    """Patches around landmarks, one per (image, landmark, level), with what each shows.

    Attributes:
        patches: list of N uint8 Tensor[C, s, s] (s = the level's side in that image).
        landmark: int64 ndarray[N], index into ``landmark_names``.
        level: int64 ndarray[N], index into ``levels``.
        image: int64 ndarray[N], the data set index of the source image.
        landmark_names: the names of the landmarks used.
        levels: the level fractions.
        images_used: the data set indices of the images sampled, ascending.
    """

    patches: list
    landmark: np.ndarray
    level: np.ndarray
    image: np.ndarray
    landmark_names: tuple[str, ...]
    levels: tuple[float, ...]
    images_used: list[int] = field(default_factory=list)


def landmark_names_of(dataset) -> tuple[str, ...]:
    """The ``landmark_names`` of ``dataset`` (or of the data set a ``Subset`` wraps); ValueError when none."""
    names = getattr(dataset, "landmark_names", None)
    if names is None and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        names = getattr(dataset.dataset, "landmark_names", None)
    if not names:
        raise ValueError(
            f"dataset: {type(dataset).__name__} has no landmark_names; the locality analysis "
            "needs a reader whose items carry 'landmarks' (e.g. 'synthetic')"
        )
    return tuple(names)


def landmark_patches(
    dataset,
    *,
    levels: Sequence[float] = (0.125, 0.25, 0.5),
    images: int | None = None,
    landmarks: Sequence[str] | None = None,
    seed: int = 0,
) -> LandmarkPatches:
    """Cuts a patch around every landmark of ``images`` sampled images at each of ``levels``.

    Args:
        dataset: a data set with ``landmark_names`` whose items have ``image`` (uint8 Tensor[C, H, W])
            and ``landmarks`` (float32 Tensor[L, 2], (x, y) pixels, NaN where not annotated:
            those landmarks are skipped in that image).
        levels: patch sides as fractions of the image's shorter side (see :func:`level_sides`).
        images: how many images, drawn without replacement with ``seed`` (None or more than
            the data set has: all), in data set order.
        landmarks: names of the landmarks to use (None: all).
        seed: seed of the image sample.

    Returns:
        :class:`LandmarkPatches`, ordered by image, then landmark, then level.
    """
    names = landmark_names_of(dataset)
    if landmarks is None:
        wanted = list(range(len(names)))
    else:
        unknown = [n for n in landmarks if n not in names]
        if unknown or not landmarks:
            raise ValueError(f"landmarks must be names among {list(names)}, got {list(landmarks)}")
        wanted = [names.index(n) for n in dict.fromkeys(landmarks)]
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset holds no images")
    chosen = (
        np.arange(n)
        if images is None or images >= n
        else np.sort(numpy_rng(seed, "landmark_images").choice(n, size=images, replace=False))
    )
    patches, lab, lev, img = [], [], [], []
    for index in chosen.tolist():
        item = dataset[index]
        points = item.get("landmarks") if isinstance(item, dict) else None
        if points is None:
            raise ValueError(
                f"dataset item {index} has no 'landmarks'; landmark patches need a reader "
                "whose items carry them (e.g. 'synthetic')"
            )
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.shape != (len(names), 2):
            raise ValueError(
                f"dataset item {index}: landmarks must be [{len(names)}, 2] like "
                f"landmark_names, got {tuple(points.shape)}"
            )
        image = item["image"]
        sides = level_sides(levels, image.shape[1], image.shape[2])
        for new_label, j in enumerate(wanted):
            if not torch.isfinite(points[j]).all():
                continue
            for v, side in enumerate(sides):
                patches.append(extract_patch(image, points[j].tolist(), side))
                lab.append(new_label)
                lev.append(v)
                img.append(index)
    if not patches:
        raise ValueError("dataset: no annotated landmark in the images sampled")
    return LandmarkPatches(
        patches,
        np.array(lab, np.int64),
        np.array(lev, np.int64),
        np.array(img, np.int64),
        tuple(names[j] for j in wanted),
        tuple(levels),
        chosen.tolist(),
    )
