"""Readers of the colour fundus sets (3-channel RGB images): EyePACS (diabetic retinopathy
grade) and DRIVE (vessel and field-of-view masks).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .base import Reader, _check_row, _column, _find_dir, _find_file, _read_csv, _row_error, require_files

# ----------------------------------------------------------------------------- EyePACS


class EyePACS(Reader):
    """EyePACS diabetic retinopathy photographs (Kaggle "Diabetic Retinopathy Detection", 2015).

    Layout under ``root``::

        trainLabels.csv             image,level     (level 0-4: none, mild, moderate, severe, proliferative)
        retinopathy_solution.csv    image,level,Usage   (the released test labels)
        train/10_left.jpeg
        test/1_left.jpeg

    Splits: ``train``, ``test``. ``ext`` (default ``.jpeg``) is the image suffix, for re-encoded
    copies. Items: ``image`` 3×H×W RGB, ``labels`` int64 scalar (the level), ``path``.
    """

    splits = ("train", "test")
    classes = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")
    channels = 3

    def __init__(self, root, split="train", *, ext=".jpeg", **options):
        super().__init__(root, split, **options)
        name = "trainLabels.csv" if split == "train" else "retinopathy_solution.csv"
        path = _find_file(self.root, (name,), "EyePACS label file")
        header, rows = _read_csv(path)
        i_image, i_level = _column(path, header, "image"), _column(path, header, "level")
        keys, levels = [], []
        for line, row in rows:
            _check_row(path, line, row, max(i_image, i_level) + 1)
            level = row[i_level].strip()
            if level not in ("0", "1", "2", "3", "4"):
                message = f"unknown level {level!r}; expected 0-4 ({', '.join(self.classes)})"
                raise _row_error(path, line, message)
            if not row[i_image].strip():
                raise _row_error(path, line, "malformed row: empty image name")
            keys.append(self._inside_root(f"{split}/{row[i_image].strip()}{ext}", f"{path}:{line}"))
            levels.append(int(level))
        self._keys = keys
        require_files(self.root, keys, path.name)
        self._labels = np.array(levels, dtype=np.int64)

    def groups(self) -> list[str]:
        """The patient of each item: ``10`` for ``10_left`` and ``10_right`` (both eyes stay together)."""
        return [key.rpartition("/")[2].partition("_")[0] for key in self._keys]

    def _annotations(self, index, original, size):
        return {"labels": torch.tensor(self._labels[index])}


# ----------------------------------------------------------------------------- DRIVE


class DRIVE(Reader):
    """DRIVE retinal vessel segmentation (Staal et al. 2004).

    Layout under ``root``::

        training/images/21_training.tif        RGB, 565×584
        training/1st_manual/21_manual1.gif     vessels, 0/255
        training/mask/21_training_mask.gif     field of view, 0/255
        test/images/01_test.tif
        test/1st_manual/01_manual1.gif         (absent from some distributions: then the test
        test/mask/01_test_mask.gif              items carry the field of view only)

    Splits: ``training`` (alias ``train``), ``test``. Items: ``image`` 3×H×W RGB, ``mask``
    2×H×W (``mask_names`` = ("vessel", "fov")) or 1×H×W (("fov",)) as said above, ``path``.
    """

    splits = ("training", "test")
    split_aliases = {"train": "training"}
    channels = 3

    def __init__(self, root, split="training", **options):
        super().__init__(root, split, **options)
        s = self.split
        images = _find_dir(self.root, (f"{s}/images",), "DRIVE image folder")
        names = sorted(n for n in os.listdir(images) if n.lower().endswith((".tif", ".tiff")))
        if not names:
            raise FileNotFoundError(f"no .tif images in {images}")
        ids = [n.split("_")[0] for n in names]
        self._keys = [f"{s}/images/{n}" for n in names]
        with_vessels = (self.root / s / "1st_manual").is_dir() or s == "training"
        self.mask_names = ("vessel", "fov") if with_vessels else ("fov",)
        self._masks = [
            ([f"{s}/1st_manual/{i}_manual1.gif"] if with_vessels else []) + [f"{s}/mask/{i}_{s}_mask.gif"]
            for i in ids
        ]
        require_files(self.root, [m for masks in self._masks for m in masks], f"{s}/images/")

    def _annotations(self, index, original, size):
        return {"mask": self._mask_files(self._masks[index], size)}
