"""Readers of the VinDr sets (PhysioNet layouts): VinDr-CXR (image labels from several
radiologists, boxes) and VinDr-RibCXR (20 rib polygons per image).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .._io import fill_polygons
from .base import (
    Reader,
    _box_arrays,
    _check_row,
    _column,
    _find_file,
    _labels_and_boxes,
    _read_csv,
    _row_error,
    require_files,
)

# ----------------------------------------------------------------------------- VinDr-CXR

VINDR_CXR_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
)
_VINDR_ALIASES = {"Other disease": "Other diseases"}  # the test CSV's spelling
_RADIOLOGIST_COLUMNS = ("rad_id", "rad_ID")


class VinDrCXR(Reader):
    """VinDr-CXR (Nguyen et al. 2022), as published on PhysioNet (vindr-cxr/1.0.0).

    Layout under ``root``::

        annotations/image_labels_train.csv   image_id,rad_id,<28 labels of 0/1>
        annotations/image_labels_test.csv    image_id,<28 labels> (consensus; "Other disease")
        annotations/annotations_train.csv    image_id,rad_id,class_name,x_min,y_min,x_max,y_max
        annotations/annotations_test.csv     optional; rows without a box ("No finding") have
                                             empty coordinates
        train/<image_id>.dicom
        test/<image_id>.dicom

    Splits: ``train``, ``test`` (the official ones). Labels: the union over the radiologists'
    rows (the train set has three readers per image), float32[28] in :attr:`classes` order.
    Boxes: every reader's box, in DICOM pixels. Items: ``image`` 1×H×W (DICOM decoded with
    modality LUT, VOI LUT/window and MONOCHROME1 inversion), ``labels``, ``boxes``,
    ``box_labels``, ``path``.
    """

    splits = ("train", "test")
    classes = VINDR_CXR_CLASSES

    def __init__(self, root, split="train", **options):
        super().__init__(root, split, **options)
        labels_path = _find_file(self.root, (f"annotations/image_labels_{split}.csv",), "VinDr-CXR labels")
        ids, labels = self._parse_labels(labels_path)
        self._keys = [f"{split}/{image_id}.dicom" for image_id in ids]
        require_files(self.root, self._keys, labels_path.name)
        self._labels = labels
        boxes_path = self.root / f"annotations/annotations_{split}.csv"
        boxes = self._parse_boxes(boxes_path) if boxes_path.is_file() else {}
        self._boxes = [boxes.get(image_id) for image_id in ids]

    def _parse_labels(self, path: Path):
        header, rows = _read_csv(path)
        i_id = _column(path, header, "image_id")
        skip = {i_id} | {header.index(c) for c in _RADIOLOGIST_COLUMNS if c in header}
        index = {name: i for i, name in enumerate(self.classes)}
        columns = {}  # csv column -> class index
        for i, name in enumerate(header):
            if i in skip:
                continue
            name = _VINDR_ALIASES.get(name, name)
            if name not in index:
                raise ValueError(f"{path}:1: unknown class column {name!r}; expected one of {self.classes}")
            columns[i] = index[name]
        absent = set(self.classes) - {self.classes[c] for c in columns.values()}
        if absent:
            raise ValueError(f"{path}:1: header lacks the class columns {sorted(absent)}")
        for line, row in rows:
            if len(row) != len(header):
                raise _row_error(path, line, f"malformed row: expected {len(header)} fields, got {len(row)}")
        table = np.char.strip(np.array([row for _, row in rows], dtype=str).reshape(len(rows), len(header)))
        cells = table[:, list(columns)]
        bad = np.argwhere(~np.isin(cells, ("0", "1", "0.0", "1.0")))
        if len(bad):
            r, c = bad[0]
            message = f"malformed row: {header[list(columns)[c]]!r} must be 0 or 1, got {cells[r, c]!r}"
            raise _row_error(path, rows[r][0], message)
        for (line, _), image_id in zip(rows, table[:, i_id]):
            self._inside_root(f"{self.split}/{image_id}.dicom", f"{path}:{line}")
        values = np.zeros((len(rows), len(self.classes)), dtype=np.float32)
        values[:, list(columns.values())] = np.isin(cells, ("1", "1.0"))
        unique, inverse = np.unique(table[:, i_id], return_inverse=True)
        labels = np.zeros((len(unique), len(self.classes)), dtype=np.float32)
        np.maximum.at(labels, inverse.reshape(-1), values)
        return [str(u) for u in unique], labels

    def _parse_boxes(self, path: Path):
        header, rows = _read_csv(path)
        i_id = _column(path, header, "image_id")
        i_class = _column(path, header, "class_name")
        coords = [_column(path, header, c) for c in ("x_min", "y_min", "x_max", "y_max")]
        n_fields = max(i_id, i_class, *coords) + 1
        index = {name: i for i, name in enumerate(self.classes)}
        found = defaultdict(list)
        for line, row in rows:
            _check_row(path, line, row, n_fields)
            name = _VINDR_ALIASES.get(row[i_class].strip(), row[i_class].strip())
            if name not in index:
                raise _row_error(path, line, f"unknown class {name!r}; expected one of {self.classes}")
            values = [row[i].strip() for i in coords]
            if not any(values):
                continue  # an image-level finding without a box
            try:
                box = [float(v) for v in values]
            except ValueError:
                message = f"malformed row: box coordinates must be numbers, got {values}"
                raise _row_error(path, line, message) from None
            found[row[i_id].strip()].append((*box, index[name]))
        return _box_arrays(found)

    _annotations = _labels_and_boxes


# ----------------------------------------------------------------------------- VinDr-RibCXR

VINDR_RIBS = tuple(f"R{i}" for i in range(1, 11)) + tuple(f"L{i}" for i in range(1, 11))


class VinDrRib(Reader):
    """VinDr-RibCXR (Nguyen et al., MIDL 2021): 20 ribs segmented on 245 radiographs.

    Layout under ``root`` (the published ``data`` folder, or its parent)::

        data/train/img/VinDr_RibCXR_train_000.png
        data/train/Vindr_RibCXR_train_mask.json
        data/val/img/...
        data/val/Vindr_RibCXR_val_mask.json

    The JSON is a pandas ``to_json`` table: ``{"img": {"0": "data/train/img/....png", ...},
    "R1": {"0": [{"x": .., "y": ..}, ...] or "None"}, ..., "L10": {...}}`` (a list of records is
    accepted too). ``img`` is resolved against ``root``, else taken as a file in the JSON's
    ``img/`` folder.

    Splits: ``train``, ``val`` (alias ``test``). Items: ``image`` 1×H×W, ``mask`` 20×H×W
    (``mask_names`` R1..R10, L1..L10; a rib given as "None" is empty), ``path``.
    """

    splits = ("train", "val")
    split_aliases = {"test": "val"}
    mask_names = VINDR_RIBS

    def __init__(self, root, split="train", **options):
        super().__init__(root, split, **options)
        name = f"Vindr_RibCXR_{self.split}_mask.json"
        candidates = (f"data/{self.split}/{name}", f"{self.split}/{name}", name)
        path = _find_file(self.root, candidates, "VinDr-RibCXR annotation file")
        records = self._parse(path)
        keys = []
        for image, _ in records:
            direct = Path(image).as_posix()
            fallback = (path.parent / "img" / Path(image).name).relative_to(self.root).as_posix()
            keys.append(direct if (self.root / direct).is_file() else fallback)
        self._keys = keys
        require_files(self.root, self._keys, path.name)
        self._polygons = [polygons for _, polygons in records]

    def _parse(self, path: Path):
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
        if isinstance(table, dict):  # pandas "columns" orientation
            if "img" not in table:
                raise ValueError(f"{path}: expected an 'img' column, got {sorted(table)[:8]}")
            absent = [rib for rib in VINDR_RIBS if rib not in table]
            if absent:
                raise ValueError(f"{path}: missing rib columns {absent}")
            columns = ("img", *VINDR_RIBS)
            rows = [(k, {col: table[col].get(k, "None") for col in columns}) for k in table["img"]]
        elif isinstance(table, list):
            rows = list(enumerate(table))
        else:
            raise ValueError(f"{path}: expected a JSON object or list, got {type(table).__name__}")
        records = []
        for k, row in rows:
            try:
                image = row["img"]
                polygons = []
                for rib in VINDR_RIBS:
                    points = row.get(rib, "None")
                    if points in ("None", None):
                        polygons.append(None)
                    else:
                        xy = [[float(p["x"]), float(p["y"])] for p in points]
                        polygons.append(np.array(xy, dtype=np.float32))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{path}: entry {k}: malformed entry ({type(exc).__name__}: {exc})") from exc
            records.append((self._inside_root(Path(str(image)).as_posix(), f"{path}: entry {k}"), polygons))
        return records

    def _annotations(self, index, original, size):
        scale = (size[0] / original[0], size[1] / original[1])
        mask = np.zeros((len(VINDR_RIBS), *size), dtype=np.uint8)
        for channel, polygon in enumerate(self._polygons[index]):
            if polygon is not None:
                mask[channel] = fill_polygons([polygon], size, scale)
        return {"mask": torch.from_numpy(mask)}
