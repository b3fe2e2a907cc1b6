"""Readers of the NIH chest X-ray sets: ChestX-ray14 (labels, boxes, patient-wise
validation split) and Shenzhen (tuberculosis, label in the file name).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..._util.seeds import holdout
from .base import (
    Reader,
    _box_arrays,
    _check_row,
    _column,
    _find_file,
    _labels_and_boxes,
    _missing_error,
    _read_csv,
    _row_error,
    _split_mask,
)

# ----------------------------------------------------------------------------- ChestX-ray14

CXR14_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_CXR14_BOX_ALIASES = {"Infiltrate": "Infiltration"}


class ChestXray14(Reader):
    """NIH ChestX-ray14 (Wang et al. 2017), as published on the NIH Box share and Kaggle.

    Layout under ``root``::

        Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv) header
                                     "Image Index,Finding Labels,Follow-up #,Patient ID,...";
                                     findings joined by "|", "No Finding" for none
        train_val_list.txt           official image names, one a line
        test_list.txt
        BBox_List_2017.csv           optional; header "Image Index,Finding Label,Bbox [x,y,w,h],,,",
                                     rows name,label,x,y,w,h in pixels ("Infiltrate" = Infiltration)
        images/00000001_000.png      or the archives' images_001/images/*.png ... images_012/...

    Splits: ``train`` and ``val`` partition the official train_val list by patient (``val`` is a
    seeded ``val_fraction`` of its images, whole patients, seeded by ``seed``); ``test`` is the
    official test list. Items: ``image`` 1×H×W, ``labels`` float32[14] in :attr:`classes` order,
    ``boxes``/``box_labels`` (empty for images without boxes), ``path``.
    """

    splits = ("train", "val", "test")
    classes = CXR14_CLASSES

    def __init__(self, root, split="train", *, seed=0, val_fraction=0.1, **options):
        super().__init__(root, split, **options)
        entries = _find_file(
            self.root, ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"), "ChestX-ray14 label file"
        )
        labels, patients = self._parse_entries(entries)
        list_name = "test_list.txt" if split == "test" else "train_val_list.txt"
        list_path = _find_file(self.root, (list_name,), "split list")
        names = self._read_list(list_path, labels, entries)
        if split != "test":
            held = holdout([patients[name] for name in names], val_fraction, seed, stream="reader_val")
            names = [name for name, keep in zip(names, _split_mask(split, held, "val")) if keep]
        located = self._locate_images()
        missing = [name for name in names if name not in located]
        if missing:
            where = f"{self.root} (images/, images_*/images/)"
            raise _missing_error(missing, len(names), list_path.name, where)
        self._keys = [located[name] for name in names]
        self._patients = [patients[name] for name in names]
        self._labels = np.stack([labels[name] for name in names]) if names else np.zeros((0, 14), np.float32)
        boxes_path = self.root / "BBox_List_2017.csv"
        boxes = self._parse_boxes(boxes_path) if boxes_path.is_file() else {}
        self._boxes = [boxes.get(name) for name in names]

    def groups(self) -> list[str]:
        """The patient of each item (``Patient ID``): hold-outs keep a patient's films together."""
        return list(self._patients)

    def _parse_entries(self, path: Path):
        header, rows = _read_csv(path)
        i_name = _column(path, header, "Image Index")
        i_findings = _column(path, header, "Finding Labels")
        i_patient = _column(path, header, "Patient ID")
        n_fields = max(i_name, i_findings, i_patient) + 1
        index = {name: i for i, name in enumerate(self.classes)}
        labels, patients = {}, {}
        for line, row in rows:
            _check_row(path, line, row, n_fields)
            name, findings = row[i_name].strip(), row[i_findings].strip()
            try:
                patient = int(row[i_patient])
            except ValueError:
                message = f"malformed row: Patient ID must be an integer, got {row[i_patient]!r}"
                raise _row_error(path, line, message) from None
            if not name or not findings:
                raise _row_error(path, line, f"malformed row: empty image name or findings: {row}")
            self._inside_root(name, f"{path}:{line}")
            vector = np.zeros(len(self.classes), dtype=np.float32)
            for finding in findings.split("|"):
                finding = finding.strip()
                if finding == "No Finding":
                    continue
                if finding not in index:
                    message = f"unknown finding {finding!r}; expected 'No Finding' or one of {self.classes}"
                    raise _row_error(path, line, message)
                vector[index[finding]] = 1.0
            labels[name], patients[name] = vector, patient
        return labels, patients

    @staticmethod
    def _read_list(path: Path, labels, entries: Path):
        names = []
        with open(path, encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                name = text.strip()
                if not name:
                    continue
                if name not in labels:
                    raise _row_error(path, line, f"image {name!r} has no row in {entries.name}")
                names.append(name)
        return names

    def _locate_images(self) -> dict[str, str]:
        """Image name -> key, over images/ and the archives' images_NNN/images/ folders."""
        folders = ["images"]
        for extra in sorted(self.root.glob("images_*")):
            folders += [f"{extra.name}/images", extra.name]
        located: dict[str, str] = {}
        for folder in folders:
            if (self.root / folder).is_dir():
                with os.scandir(self.root / folder) as entries:
                    for entry in entries:
                        located.setdefault(entry.name, f"{folder}/{entry.name}")
        return located

    def _parse_boxes(self, path: Path):
        header, rows = _read_csv(path)
        if not header or header[0] != "Image Index":
            raise ValueError(f"{path}:1: header must start with 'Image Index', got {header}")
        index = {name: i for i, name in enumerate(self.classes)}
        found = defaultdict(list)
        for line, row in rows:
            _check_row(path, line, row, 6)
            label = _CXR14_BOX_ALIASES.get(row[1].strip(), row[1].strip())
            if label not in index:
                message = f"unknown finding {row[1]!r}; expected one of {self.classes} or 'Infiltrate'"
                raise _row_error(path, line, message)
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                message = f"malformed row: box x,y,w,h must be numbers, got {row[2:6]}"
                raise _row_error(path, line, message) from None
            found[row[0].strip()].append((x, y, x + w, y + h, index[label]))
        return _box_arrays(found)

    _annotations = _labels_and_boxes


# ----------------------------------------------------------------------------- Shenzhen

_SHENZHEN_NAME = re.compile(r"CHNCXR_(\d+)_(\d)\.png", re.IGNORECASE)


class Shenzhen(Reader):
    """NIH Shenzhen tuberculosis chest X-rays (Jaeger et al. 2014).

    Layout under ``root`` (the first of these folders holding images is used)::

        ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png     (as published; or CXR_png/, or root itself)

    The last digit of the name is the label: 0 normal, 1 tuberculosis; other PNGs (e.g. lung
    masks ``CHNCXR_0001_0_mask.png``) are ignored. Splits: ``train`` / ``test``, a seeded
    ``test_fraction`` (default 20%) of the images in ``test`` (``seed``). Items: ``image``
    1×H×W, ``labels`` int64 scalar, ``path``.
    """

    splits = ("train", "test")
    classes = ("normal", "tuberculosis")

    def __init__(self, root, split="train", *, seed=0, test_fraction=0.2, **options):
        super().__init__(root, split, **options)
        keys, labels = [], []
        for folder in ("ChinaSet_AllFiles/CXR_png", "CXR_png", ""):
            if (self.root / folder).is_dir():
                for name in sorted(os.listdir(self.root / folder)):
                    match = _SHENZHEN_NAME.fullmatch(name)
                    if match is None:
                        continue
                    if match.group(2) not in "01":
                        raise ValueError(f"{self.root / folder / name}: the name's last digit must be 0 or 1")
                    keys.append(f"{folder}/{name}" if folder else name)
                    labels.append(int(match.group(2)))
            if keys:
                break
        if not keys:
            raise FileNotFoundError(
                f"no CHNCXR_NNNN_L.png images under {self.root} "
                "(looked in ChinaSet_AllFiles/CXR_png, CXR_png and the root itself)"
            )
        keep = _split_mask(split, holdout(keys, test_fraction, seed, stream="reader_test"), "test")
        self._keys = [key for key, k in zip(keys, keep) if k]
        self._labels = np.array(labels, dtype=np.int64)[keep]

    def _annotations(self, index, original, size):
        return {"labels": torch.tensor(self._labels[index])}
