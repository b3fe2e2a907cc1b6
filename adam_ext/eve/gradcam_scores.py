"""Grad-CAM scores of one heatmap against a finding's boxes: the pointing game and the IoU of the
thresholded map (see :mod:`adam_ext.eve.gradcam`)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["box_iou", "box_mask", "heatmap_peak", "pointing_game"]


def _heatmap(heatmap) -> np.ndarray:
    array = np.asarray(heatmap.detach().cpu() if isinstance(heatmap, torch.Tensor) else heatmap)
    if array.ndim != 2 or 0 in array.shape or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"heatmap must be a numeric 2-D array (H, W), got shape {array.shape} {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"heatmap must be finite, got {np.count_nonzero(~np.isfinite(array))} NaN/inf values"
        )
    if array.min() < 0:
        raise ValueError(f"heatmap must be >= 0 (a Grad-CAM map), got a minimum of {array.min()}")
    return array


def box_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """The union of ``boxes`` rasterised on an (H, W) pixel grid.

    A pixel (row r, column c) covers [c, c+1) x [r, r+1) and belongs to a box when its centre
    (c + 0.5, r + 0.5) does, so integer boxes with exclusive x1, y1 cover exactly x0 <= c < x1,
    y0 <= r < y1; a box narrower than a pixel keeps the pixel holding its centre. Boxes are clipped
    to the grid.

    Args:
        boxes: float[N, 4] (x0, y0, x1, y1) in pixels of the grid, N >= 1, x1 > x0, y1 > y0 (the
            readers' ``boxes`` layout).
        shape: (H, W).

    Returns:
        bool ndarray[H, W].

    Raises:
        ValueError: malformed boxes, or boxes that all lie outside the grid.
    """
    height, width = shape
    array = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) with N >= 1 boxes (x0, y0, x1, y1), got shape {array.shape}")
    if (
        not np.isfinite(array).all()
        or (array[:, 2] <= array[:, 0]).any()
        or (array[:, 3] <= array[:, 1]).any()
    ):
        raise ValueError(
            f"boxes must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {array.tolist()}"
        )
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in array:
        c0, c1 = _pixel_span(x0, x1)
        r0, r1 = _pixel_span(y0, y1)
        mask[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    if not mask.any():
        raise ValueError(f"boxes must overlap the {height}x{width} heatmap, got {array.tolist()}")
    return mask


def _pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """Pixels [first, last + 1) whose centres lie in [lo, hi); the centre's pixel when none does."""
    first, end = math.ceil(lo - 0.5), math.ceil(hi - 0.5)
    if end <= first:
        first = math.floor((lo + hi) / 2)
        end = first + 1
    return first, end


def pointing_game(heatmap, boxes) -> bool:
    """Whether the heatmap's maximum falls inside one of ``boxes`` (a pointing-game hit).

    The maximum is the pixel of :func:`heatmap_peak`; a flat heatmap (maximum = minimum, e.g. all
    zero) points nowhere and is a miss.

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
        boxes: float[N, 4] (x0, y0, x1, y1) pixels of the heatmap's frame (see :func:`box_mask`).

    Raises:
        ValueError: naming ``heatmap`` or ``boxes`` when malformed.
    """
    heat = _heatmap(heatmap)
    mask = box_mask(boxes, heat.shape)
    peak = heatmap_peak(heat)
    return peak is not None and bool(mask[peak])


def heatmap_peak(heatmap) -> tuple[int, int] | None:
    """(row, column) of the heatmap's maximum; None for a flat heatmap.

    An upsampled Grad-CAM map often holds its maximum on a plateau (bilinear resizing repeats the
    border cells of the coarse map), so among several maximal pixels the one nearest their
    centroid is taken, not the first in row-major order (a plateau's corner).

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
    """
    heat = _heatmap(heatmap)
    top = heat.max()
    if top == heat.min():
        return None
    rows, cols = np.nonzero(heat == top)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def box_iou(heatmap, boxes, threshold: float = 0.5) -> float:
    """IoU of the thresholded heatmap with the union of ``boxes``.

    The map is the set of pixels with ``heatmap >= threshold * heatmap.max()``: threshold 1 keeps
    the maximal pixels only, 0 the whole image. An all-zero heatmap marks nothing (IoU 0).

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
        boxes: float[N, 4] (x0, y0, x1, y1) pixels of the heatmap's frame (see :func:`box_mask`).
        threshold: fraction of the maximum in [0, 1].

    Returns:
        float in [0, 1].

    Raises:
        ValueError: naming ``heatmap``, ``boxes`` or ``threshold`` when malformed.
    """
    _check_threshold(threshold)
    heat = _heatmap(heatmap)
    mask = box_mask(boxes, heat.shape)
    peak = heat.max()
    if peak <= 0:
        return 0.0
    marked = heat >= threshold * peak
    return float(np.logical_and(marked, mask).sum() / np.logical_or(marked, mask).sum())


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(
            f"threshold must be a fraction of the heatmap's maximum in [0, 1], got {threshold!r}"
        )
