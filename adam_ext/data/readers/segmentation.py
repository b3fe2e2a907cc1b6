"""Readers of the chest X-ray sets with masks: SIIM-ACR (pneumothorax, run-length encoded),
ChestX-Det (findings as boxes and polygons) and SCR/JSRT (organ masks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..._util.seeds import holdout
from .._io import fill_polygons, resize_nearest, rle_runs, runs_to_mask
from .base import (
    _N_SHOWN,
    Reader,
    _check_row,
    _column,
    _find_dir,
    _find_file,
    _read_csv,
    _row_error,
    _scaled_boxes,
    _split_mask,
    require_files,
)

# ----------------------------------------------------------------------------- SIIM-ACR


class SIIMACR(Reader):
    """SIIM-ACR Pneumothorax Segmentation (Kaggle 2019).

    Layout under ``root``::

        train-rle.csv                 "ImageId, EncodedPixels" (or stage_2_train.csv; or ``rle_csv=``)
        dicom-images-train/<study>/<series>/<ImageId>.dcm     (any depth under root)

    ``EncodedPixels`` is ``-1`` for an image without pneumothorax; an image may have several
    rows, whose masks are unioned. The challenge's encoding (its ``mask_functions.py``) is
    relative: pairs (offset, length), each offset counted from the end of the previous run, over
    pixels numbered down the columns (column-major). Pass ``rle="absolute"`` for CSVs in the
    standard Kaggle encoding (1-based absolute starts, column-major).

    Splits: ``train`` / ``test``, a seeded ``test_fraction`` (default 20%) of the labelled images
    in ``test`` (``seed``). Items: ``image`` 1×H×W, ``labels`` int64 scalar (1 = pneumothorax),
    ``mask`` 1×H×W (``mask_names`` = ("pneumothorax",)), ``path``.
    """

    splits = ("train", "test")
    classes = ("no pneumothorax", "pneumothorax")
    mask_names = ("pneumothorax",)

    def __init__(
        self, root, split="train", *, seed=0, test_fraction=0.2, rle="relative", rle_csv=None, **options
    ):
        super().__init__(root, split, **options)
        if rle not in ("relative", "absolute"):
            raise ValueError(f"rle must be 'relative' or 'absolute', got {rle!r}")
        self._relative = rle == "relative"
        csv_candidates = (rle_csv,) if rle_csv is not None else ("train-rle.csv", "stage_2_train.csv")
        self._csv = _find_file(self.root, csv_candidates, "SIIM-ACR run-length CSV")
        runs = self._parse_runs(self._csv)
        ids = sorted(runs)
        dicoms: dict[str, str] = {}
        for path in sorted(self.root.rglob("*.dcm")):
            dicoms.setdefault(path.stem, path.relative_to(self.root).as_posix())
        missing = [image_id for image_id in ids if image_id not in dicoms]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(ids)} images listed by {self._csv.name} have no <ImageId>.dcm under "
                f"{self.root}; first: {', '.join(missing[:_N_SHOWN])}"
            )
        keep = _split_mask(split, holdout(ids, test_fraction, seed, stream="reader_test"), "test")
        ids = [image_id for image_id, k in zip(ids, keep) if k]
        self._keys = [dicoms[image_id] for image_id in ids]
        self._runs = [runs[image_id] for image_id in ids]

    @staticmethod
    def _parse_runs(path: Path):
        header, rows = _read_csv(path)
        i_id = _column(path, header, "ImageId")
        i_rle = _column(path, header, "EncodedPixels")
        runs: dict[str, list] = {}  # ImageId -> [(line, numbers)]
        for line, row in rows:
            _check_row(path, line, row, max(i_id, i_rle) + 1)
            image_id, text = row[i_id].strip(), row[i_rle].strip()
            if not image_id:
                raise _row_error(path, line, "malformed row: empty ImageId")
            listed = runs.setdefault(image_id, [])
            if text == "-1":
                continue  # listed, no pneumothorax
            try:
                numbers = np.array(text.split(), dtype=np.int64)
            except ValueError:
                message = f"malformed run-length encoding: {text[:60]!r} is not integers"
                raise _row_error(path, line, message) from None
            if numbers.size == 0 or numbers.size % 2 or (numbers < 0).any():
                message = "malformed run-length encoding: expected '-1' or pairs of non-negative integers"
                raise _row_error(path, line, message)
            listed.append((line, numbers))
        return runs

    def _annotations(self, index, original, size):
        height, width = original
        decoded = []
        for line, numbers in self._runs[index]:
            starts, ends = rle_runs(numbers, self._relative)
            try:
                decoded.append(runs_to_mask([(starts, ends)], height, width))
            except ValueError as exc:
                raise _row_error(self._csv, line, f"{exc} (wrong rle= convention?)") from None
        mask = np.zeros((1, height, width), dtype=np.uint8)
        for one in decoded:
            mask[0] |= one
        return {
            "labels": torch.tensor(int(bool(self._runs[index]))),
            "mask": torch.from_numpy(resize_nearest(mask, size)),
        }


# ----------------------------------------------------------------------------- ChestX-Det

CHESTX_DET_CLASSES = (
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "Diffuse Nodule",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pleural Thickening",
    "Pneumothorax",
)


class ChestXDet(Reader):
    """ChestX-Det (Deepwise-AILab/ChestX-Det-Dataset): 3,578 NIH images with 13 findings.

    Layout under ``root``::

        ChestX_Det_train.json     [{"file_name": "36199.png", "syms": [...], "boxes": [[x1,y1,x2,y2],...],
        ChestX_Det_test.json        "polygons": [[[x,y],...],...]}, ...]  (one polygon per sym)
        train/36199.png           (the train_data.zip archive; also train_data/train/ or train_data/)
        test/...

    Splits: ``train``, ``test``. Items: ``image`` 1×H×W, ``labels`` float32[13] (multi-hot of the
    syms), ``boxes``/``box_labels``, ``mask`` 13×H×W (one channel per class, the union of its
    polygons; ``mask_names`` = :attr:`classes`), ``path``.
    """

    splits = ("train", "test")
    classes = CHESTX_DET_CLASSES
    mask_names = CHESTX_DET_CLASSES

    def __init__(self, root, split="train", **options):
        super().__init__(root, split, **options)
        path = _find_file(self.root, (f"ChestX_Det_{split}.json",), "ChestX-Det annotation file")
        folder = _find_dir(self.root, (split, f"{split}_data/{split}", f"{split}_data"), "ChestX-Det images")
        prefix = folder.relative_to(self.root).as_posix()
        self._records = self._parse(path)
        self._keys = [f"{prefix}/{record[0]}" for record in self._records]
        require_files(self.root, self._keys, path.name)

    def _parse(self, path: Path):
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
        index = {name: i for i, name in enumerate(self.classes)}
        records = []
        for n, entry in enumerate(entries):
            where = f"{path}: entry {n}"
            try:
                name, syms, boxes = entry["file_name"], entry["syms"], entry["boxes"]
                polygons = entry.get("polygons") or []
                box_array = np.array(boxes, dtype=np.float32).reshape(len(boxes), 4)
                polygon_arrays = [np.array(p, dtype=np.float32).reshape(-1, 2) for p in polygons]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{where}: malformed entry ({type(exc).__name__}: {exc})") from exc
            if len(syms) != len(boxes) or (polygons and len(polygons) != len(syms)):
                counts = f"{len(syms)} syms, {len(boxes)} boxes, {len(polygons)} polygons"
                raise ValueError(f"{where} ({name}): malformed entry: {counts}")
            unknown = [s for s in syms if s not in index]
            if unknown:
                expected = f"expected one of {self.classes}"
                raise ValueError(f"{where} ({name}): unknown class {unknown[0]!r}; {expected}")
            labels = np.array([index[s] for s in syms], dtype=np.int64)
            self._inside_root(str(name), where)
            records.append((name, labels, box_array, polygon_arrays))
        return records

    def _annotations(self, index, original, size):
        _, box_labels, boxes, polygons = self._records[index]
        scale = (size[0] / original[0], size[1] / original[1])
        multi_hot = np.zeros(len(self.classes), dtype=np.float32)
        multi_hot[box_labels] = 1.0
        mask = np.zeros((len(self.classes), *size), dtype=np.uint8)
        for label, polygon in zip(box_labels, polygons):
            mask[label] |= fill_polygons([polygon], size, scale)
        return {
            "labels": torch.from_numpy(multi_hot),
            "boxes": _scaled_boxes(boxes, original, size),
            "box_labels": torch.from_numpy(box_labels.copy()),
            "mask": torch.from_numpy(mask),
        }


# ----------------------------------------------------------------------------- SCR / JSRT

SCR_ORGANS = ("heart", "left clavicle", "left lung", "right clavicle", "right lung")


class SCR(Reader):
    """JSRT radiographs with the SCR organ masks (van Ginneken et al. 2006).

    Layout under ``root``::

        All247images/JPCLN001.IMG                          JSRT raw: headerless big-endian uint16,
                                                           12 bits, square (2048 px; any square
                                                           side, inferred from the file size)
        fold1/masks/<organ>/JPCLN001.gif                   SCR masks, 0/255, half the image side
        fold2/masks/<organ>/...                            (also under scratch/fold1/... as unzipped)

    with <organ> each of ``heart``, ``left clavicle``, ``left lung``, ``right clavicle``,
    ``right lung``. A fold's images are those named in its mask folders. JSRT stores density
    (high = dark): the image is shown as 4095 − value, scaled to 0-255.

    Splits: ``fold1`` (alias ``train``) and ``fold2`` (alias ``test``), SCR's two folds. Items:
    ``image`` 1×S×S, ``mask`` 5×S×S (masks resized to the image with nearest neighbour;
    ``mask_names`` = the organs above), ``path``.
    """

    splits = ("fold1", "fold2")
    split_aliases = {"train": "fold1", "test": "fold2"}
    mask_names = SCR_ORGANS

    def __init__(self, root, split="fold1", **options):
        super().__init__(root, split, **options)
        candidates = (f"{self.split}/masks", f"scratch/{self.split}/masks")
        masks = _find_dir(self.root, candidates, f"SCR {self.split} masks")
        prefix = masks.relative_to(self.root).as_posix()
        stems = set()
        for organ in SCR_ORGANS:
            if (masks / organ).is_dir():
                names = os.listdir(masks / organ)
                stems.update(Path(name).stem for name in names if name.lower().endswith(".gif"))
        if not stems:
            raise FileNotFoundError(f"no SCR mask GIFs under {masks}/<organ>/ for organs {SCR_ORGANS}")
        ids = sorted(stems)
        images = self.root / "All247images"
        names = os.listdir(images) if images.is_dir() else []
        on_disk = {Path(n).stem: n for n in names if n.lower().endswith(".img")}
        self._keys = [f"All247images/{on_disk.get(i, i + '.IMG')}" for i in ids]
        self._masks = [[f"{prefix}/{organ}/{i}.gif" for organ in SCR_ORGANS] for i in ids]
        listed = self._keys + [m for masks_of in self._masks for m in masks_of]
        require_files(self.root, listed, f"{prefix}/<organ>/")

    def _annotations(self, index, original, size):
        return {"mask": self._mask_files(self._masks[index], size)}
