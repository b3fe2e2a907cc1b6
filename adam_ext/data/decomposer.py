"""The anatomy decomposer: Adam's coarse-to-fine choice of the anchor, the paper's central idea.

Pretraining runs in stages of growing granularity n = 0, 2, 4, ... (the paper stops at 4; finer
levels are possible). At stage n the decomposer splits an image into an n×n grid and picks one
cell uniformly at random as the anchor; n = 0 (and n = 1) is the whole image. The two augmented
views of a training pair are both cut from that anchor (:class:`adam_ext.data.views.TwoViews`),
so the network first learns whole-image (global) anatomy and then ever smaller parts of it,
which makes its embeddings locality-aware and compositional. (At n > 0 the purposive pruner
removes negatives too similar to the anchor from the memory bank: the loss,
:func:`adam_ext.pruned_info_nce`.)

Cells tile the image exactly, also when H or W is not divisible by n (:func:`grid_bounds`), and
an anchor is a view of the image's memory, not a copy.
"""

from __future__ import annotations

import torch

from .randomness import ProcessRandomness, SeedLike

REMAINDERS = ("spread", "drop")


def grid_bounds(length: int, n: int, remainder: str = "spread") -> list[int]:
    """Cell boundaries of ``n`` cells along an axis of ``length`` pixels.

    ``spread`` (default): boundary i is round(i·length/n) (half up, in integer arithmetic), so the
    cells tile the axis exactly and their sizes differ by at most one pixel when ``length`` is not
    divisible by n. ``drop``: every cell is ``length // n`` pixels and the last ``length % n``
    pixels belong to no cell (the official Adam code's cells).

    Returns:
        n + 1 ints from 0 to ``length`` (``drop``: to ``n * (length // n)``).
    """
    if remainder == "drop":
        return [i * (length // n) for i in range(n + 1)]
    if remainder != "spread":
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    return [(2 * i * length + n) // (2 * n) for i in range(n + 1)]


def grid_boxes(height: int, width: int, n: int, remainder: str = "spread") -> list[tuple[int, int, int, int]]:
    """The n×n grid cells of an image as ``(top, left, height, width)`` in pixels, row-major.

    n = 0 (and n = 1) is the whole image. Cells tile the image exactly with ``spread``, or leave the
    remainder rows and columns out with ``drop`` (see :func:`grid_bounds`).
    """
    if n <= 1:
        return [(0, 0, height, width)]
    rows, cols = grid_bounds(height, n, remainder), grid_bounds(width, n, remainder)
    return [
        (rows[r], cols[c], rows[r + 1] - rows[r], cols[c + 1] - cols[c]) for r in range(n) for c in range(n)
    ]


class AnatomyDecomposer:
    """Picks the anchor: one cell of an n×n grid, chosen uniformly at random (Adam's decomposer).

    At n = 0 the anchor is the whole image (the first stage of pretraining); stages then use
    n = 2, 4, ... Cells tile the image exactly, also when H or W is not divisible by n.

    Args:
        n: grid size, an int ≥ 0.
        seed: int, ``torch.Generator`` or None (see :class:`ProcessRandomness`).
        remainder: ``spread`` (cells tile the image) or ``drop`` (the official code's equal cells,
            the remainder rows and columns left out); see :func:`grid_bounds`.

    Example:
        >>> crop = AnatomyDecomposer(2, seed=0)(torch.zeros(1, 100, 101, dtype=torch.uint8))
        >>> tuple(crop.shape) in [(1, 50, 51), (1, 50, 50)]
        True
    """

    def __init__(self, n: int = 0, seed: SeedLike = None, remainder: str = "spread"):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0 (0: whole image), got {n!r}")
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        self.n, self.remainder = n, remainder
        self.randomness = ProcessRandomness(seed)

    def sample(self, image: torch.Tensor, generator: torch.Generator | None = None):
        """Draws a cell of ``image`` (Tensor[C, H, W], any dtype).

        Args:
            image: the image.
            generator: draw from this generator instead of the decomposer's own.

        Returns:
            ``(crop, index, box)``: the cell as a view of ``image`` (Tensor[C, h, w], no copy), its
            row-major index in [0, n²) (0 at n = 0) and its ``(top, left, height, width)`` box.
        """
        height, width = image.shape[-2:]
        if self.n > min(height, width):
            raise ValueError(
                f"n must be at most the image's shorter side, got n={self.n} for a {height}x{width} image"
            )
        if self.n <= 1:
            return image, 0, (0, 0, height, width)
        if generator is None:
            generator = self.randomness.generator()
        index = int(torch.randint(self.n * self.n, (), generator=generator))
        top, left, h, w = box = grid_boxes(height, width, self.n, self.remainder)[index]
        return image[..., top : top + h, left : left + w], index, box

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The anchor of ``image`` (Tensor[C, H, W]): a view of one random cell."""
        return self.sample(image)[0]

    def __repr__(self) -> str:
        return f"AnatomyDecomposer(n={self.n})"
