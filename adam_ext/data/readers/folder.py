"""The reader of any folder of images, unlabelled (self-supervised pretraining)."""

from __future__ import annotations

import os
from pathlib import Path

from ..._util.seeds import holdout
from .._io import IMAGE_SUFFIXES
from .base import Reader, _split_mask

# ----------------------------------------------------------------------------- any folder


class ImageFolder(Reader):
    """Any tree of images, unlabelled (self-supervised pretraining).

    Layout: every file under ``root`` (any depth) whose suffix is one of ``.png .jpg .jpeg
    .tif .tiff .bmp .dcm .dicom`` (case-insensitive), in sorted path order.

    Splits: ``all``; ``train`` and ``val`` partition it, ``val`` being a seeded
    ``val_fraction`` (default 10%, the paper's pretraining validation share) of the images.
    ``channels``: 1 (default, grey) or 3 (RGB, e.g. fundus). Items: ``image`` C×H×W, ``path``.
    """

    splits = ("all", "train", "val")

    def __init__(self, root, split="train", *, seed=0, val_fraction=0.1, channels=1, **options):
        super().__init__(root, split, **options)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        keys = []
        for folder, subfolders, files in os.walk(self.root):
            subfolders.sort()
            relative = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if relative == "." else relative + "/"
            keys += [prefix + f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        keys.sort()
        if not keys:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        if split != "all":
            keep = _split_mask(split, holdout(keys, val_fraction, seed, stream="reader_val"), "val")
            keys = [key for key, k in zip(keys, keep) if k]
        self._keys = keys
