"""Readers of the paper's data sets in the layouts their providers publish.

Every reader is a ``torch.utils.data.Dataset`` built as ``Class(root, split=..., **options)``
(see :func:`adam_ext.data.registry.open_dataset`). Items are dicts:

- ``image``: uint8 tensor, 1×H×W for X-rays, 3×H×W (RGB) for colour fundus photographs;
- ``labels``: float32 multi-hot (class names in the reader's ``classes``) or an int64 scalar
  for single-label sets;
- ``mask``: uint8 M×H×W of 0/1 (channel names in ``mask_names``);
- ``boxes``: float32 N×4 (x0, y0, x1, y1 in pixels of the returned image) with ``box_labels``
  (int64 N, indices into ``classes``); N may be 0;
- ``path``: str, the image file.

Common options of every reader:

- ``cache``: None, a folder written by ``adam cache`` or an object with
  ``get(key) -> (uint8 ndarray[C, h, w], (H, W)) | None``, where ``key`` is the image path
  relative to ``root`` (see :meth:`image_keys`). A cached image replaces the decoded file;
  boxes and landmarks are rescaled by (h/H, w/W) and masks are drawn or resized to h×w. A cache
  folder must have been built from the same data set (reader class) and root (any split: keys
  are paths under the root), else ValueError; and the files of this reader's keys must be
  unchanged since (size and modification time, one ``os.stat`` each when the reader is made),
  else ValueError naming the file (rebuild the cache). Objects may offer the same checks as
  ``check_dataset(reader)`` and ``check_files(keys)``. Keys the cache lacks are decoded.
- ``skip_corrupt``: a file that cannot be decoded raises :class:`~adam_ext.data._io.DecodeError`
  (a ValueError naming the file) unless this is True; then it is logged, counted in
  ``n_corrupt`` (per process) and replaced by the next decodable sample (index + 1, + 2, ...).
- ``transform``: a callable applied to the item dict.

Construction parses every annotation file once and fails early: a listed file that is missing
raises FileNotFoundError with the count and the first paths; an unknown class or a malformed
row raises ValueError naming the file and line (the entry for JSON files), and so does a row
naming an image outside ``root``: image paths from label files must be relative and free of
``..`` (also ``a/../b``, which a symlinked ``a`` would send elsewhere); symlinks inside the root,
put there by its owner (an image folder on another disk, say), are followed.
"""

from __future__ import annotations

import csv
import json
import logging
import operator
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import (
    IMAGE_SUFFIXES,
    DecodeError,
    check_image_size,
    fill_polygons,
    read_image,
    read_mask,
    resize_nearest,
    rle_runs,
    runs_to_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ChestXray14",
    "ChestXDet",
    "DRIVE",
    "DecodeError",
    "EyePACS",
    "ImageFolder",
    "Reader",
    "SCR",
    "SIIMACR",
    "Shenzhen",
    "VinDrCXR",
    "VinDrRib",
    "collate_items",
    "require_files",
]

_N_SHOWN = 5  # how many missing paths an error message lists


# ----------------------------------------------------------------------------- helpers


def _open_cache(cache):
    """None, a cache folder (opened with ImageCache) or an object with ``get(key)``."""
    if cache is None or hasattr(cache, "get"):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        from adam_ext.data.cache import ImageCache

        return ImageCache(cache)
    raise ValueError(
        f"cache must be None, a cache folder or an object with get(key), got {type(cache).__name__}"
    )


def _find_file(root: Path, candidates, what: str) -> Path:
    """The first of ``candidates`` (paths relative to root) that exists."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"{what} not found under {root}; looked for {', '.join(map(str, candidates))}")


def _find_dir(root: Path, candidates, what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    raise FileNotFoundError(f"{what} not found under {root}; looked for {', '.join(map(str, candidates))}")


def _read_csv(path: Path):
    """(header, rows): header stripped, rows as (line number, fields); blank lines skipped."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    if not rows:
        raise ValueError(f"{path} is empty; expected a header line")
    return [field.strip() for field in rows[0][1]], rows[1:]


def _column(path: Path, header, name: str, alternatives=()) -> int:
    for candidate in (name, *alternatives):
        if candidate in header:
            return header.index(candidate)
    raise ValueError(f"{path}:1: header must have a column {name!r}, got {header}")


def _row_error(path: Path, line: int, message: str) -> ValueError:
    return ValueError(f"{path}:{line}: {message}")


def _check_row(path: Path, line: int, row, n_fields: int) -> None:
    if len(row) < n_fields:
        message = f"malformed row: expected at least {n_fields} fields, got {len(row)}: {row}"
        raise _row_error(path, line, message)


def _missing_error(missing, total: int, source: str, where) -> FileNotFoundError:
    return FileNotFoundError(
        f"{len(missing)} of {total} files listed by {source} are missing under {where}; "
        f"first: {', '.join(missing[:_N_SHOWN])}"
    )


def _outside_root(key: str) -> bool:
    """True when ``key`` could name a file outside the root: absolute, or with a '..' component."""
    return os.path.isabs(key) or key.startswith("\\") or ".." in key.replace("\\", "/").split("/")


def _outside_error(key: str, root: Path, where: str) -> ValueError:
    return ValueError(
        f"{where}: image path {key!r} must lie inside the data root {root}: a relative path "
        "without '..' components"
    )


def require_files(root: Path, keys, source: str) -> None:
    """Raises FileNotFoundError when files listed by ``source`` are missing under ``root``, and
    ValueError when a key names a file outside it (the readers check their rows first, with the
    line; this covers keys built elsewhere).

    Lists each parent folder once instead of one stat per file.
    """
    outside = next((key for key in keys if _outside_root(key)), None)
    if outside is not None:
        raise _outside_error(outside, root, f"{source} (listed)")
    present: set[str] = set()
    for parent in {key.rpartition("/")[0] for key in keys}:
        folder = root / parent
        if folder.is_dir():
            with os.scandir(folder) as entries:
                present.update(f"{parent}/{entry.name}" if parent else entry.name for entry in entries)
    missing = [key for key in keys if key not in present]
    if missing:
        raise _missing_error(missing, len(keys), source, root)


def _holdout(groups, fraction: float, seed: int) -> np.ndarray:
    """Seeded group-wise hold-out.

    Args:
        groups: per-sample group ids (patients; the sample itself where each is its own patient).
        fraction: share of the samples to hold out, in [0, 1].
        seed: seeds numpy's PCG64 generator.

    Returns:
        bool ndarray[N]: True for held-out samples. Whole groups, taken in a seeded random order
        until at least ``round(fraction * N)`` samples are held out (none when that rounds to 0);
        independent of the input order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the hold-out fraction must be in [0, 1], got {fraction}")
    groups = np.asarray(groups)
    if groups.size == 0:
        return np.zeros(0, dtype=bool)
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    target = round(fraction * len(groups))
    n_groups = 0 if target == 0 else int(np.searchsorted(np.cumsum(counts[order]), target)) + 1
    held = np.zeros(len(unique), dtype=bool)
    held[order[:n_groups]] = True
    return held[inverse.reshape(-1)]


def _split_mask(split: str, held: np.ndarray, held_name: str) -> np.ndarray:
    return held if split == held_name else ~held


def _box_arrays(found):
    """{name: [(x0, y0, x1, y1, label), ...]} -> {name: (float32 ndarray[N, 4], int64 ndarray[N])}."""
    arrays = {}
    for name, boxes in found.items():
        table = np.array(boxes, dtype=np.float64).reshape(len(boxes), 5)
        arrays[name] = (table[:, :4].astype(np.float32), table[:, 4].astype(np.int64))
    return arrays


def _empty_boxes():
    return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)


def collate_items(batch):
    """Collates reader items: tensors of equal shape are stacked, others kept as lists.

    The default collate cannot stack ``boxes`` (N varies per image); use
    ``DataLoader(..., collate_fn=collate_items)`` for sets with boxes.

    Args:
        batch: list of item dicts with the same keys.

    Returns:
        dict: per key, a stacked tensor (B×...) or a list of B values.
    """
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) for v in values) and len({v.shape for v in values}) == 1:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


# ----------------------------------------------------------------------------- base class


class Reader(Dataset):
    """The base class of every reader (public: :class:`adam_ext.data.synthetic.SyntheticDataset` and
    readers of other layouts build on it): split check, cache, decoding, corrupt-file policy, transform.

    Subclasses set ``self._keys`` (image paths relative to root, posix) once, at the end of
    ``__init__`` (keys built from a label file go through :meth:`_inside_root`), and override
    :meth:`_annotations`. Setting ``_keys`` checks the cache's files for them (see the module
    docstring).
    """

    splits: tuple[str, ...] = ("train",)
    split_aliases: dict[str, str] = {}
    classes: tuple[str, ...] = ()
    mask_names: tuple[str, ...] = ()
    channels = 1

    def __init__(self, root, split, *, cache=None, skip_corrupt=False, transform=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"root must be the folder holding the {type(self).__name__} data set, got {root}"
            )
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} for {type(self).__name__}, got {split!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        self.split = split
        self.cache = _open_cache(cache)
        if hasattr(self.cache, "check_dataset"):
            self.cache.check_dataset(self)
        self.skip_corrupt = bool(skip_corrupt)
        self.transform = transform
        self._keys = []
        self._corrupt: set[int] = set()

    @property
    def _keys(self) -> list[str]:
        return self._key_list

    @_keys.setter
    def _keys(self, keys: list[str]) -> None:
        # The cache's staleness check runs here, once per reader, over this reader's keys, not per
        # cache hit: os.stat took 1.5-1.6 us a file on the 2-core dev machine (local disk, warm)
        # against 18-35 us for image() served from a 512-px cache (4-8%; ~25% at 256 px), and more
        # on network file systems. Here it costs ~1.8 us a key: 0.2 s for ChestX-ray14's 112k.
        self._key_list = keys
        cache = getattr(self, "cache", None)
        if keys and hasattr(cache, "check_files"):
            cache.check_files(keys)

    def _inside_root(self, key: str, where: str) -> str:
        """``key`` when it names a file inside ``root``, else ValueError naming ``where``.

        Args:
            key: an image path relative to the root, as built from a label file.
            where: the label file and line (or JSON entry) it comes from, for the message.

        Returns:
            ``key``, unchanged. Absolute keys and keys with a '..' component are refused, without
            touching the file system (see the module docstring about symlinks).
        """
        if _outside_root(key):
            raise _outside_error(key, self.root, where)
        return key

    @property
    def n_corrupt(self) -> int:
        """How many samples this process found undecodable and replaced (skip_corrupt=True)."""
        return len(self._corrupt)

    def image_keys(self) -> list[str]:
        """Paths of the split's images relative to ``root`` (posix), in item order."""
        return list(self._keys)

    def load_image(self, key: str) -> np.ndarray:
        """Decodes one image, bypassing the cache.

        Args:
            key: one of :meth:`image_keys`.

        Returns:
            ndarray[C, H, W] uint8 (C = 1 for X-rays, 3 for fundus).

        Raises:
            ValueError: ``key`` names a file outside the root.
            DecodeError: the file cannot be decoded (see :func:`~adam_ext.data._io.read_image`).
        """
        return read_image(self.root / self._inside_root(key, "load_image key"), self.channels)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def __getitem__(self, index):
        n = len(self)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index must be in [-{n}, {n}) for {self!r}, got {index}")
        item = self._item(index) if not self.skip_corrupt else self._item_skipping(index)
        return self.transform(item) if self.transform is not None else item

    def image(self, index: int) -> torch.Tensor:
        """Only the image of sample ``index``: uint8 Tensor[C, H, W], without annotations or
        ``transform`` (what self-supervised pretraining reads). Cache and ``skip_corrupt`` apply."""
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}) for {self!r}, got {index}")
        fetch = lambda i: torch.from_numpy(self._image(self._keys[i])[0])  # noqa: E731
        return fetch(index) if not self.skip_corrupt else self._item_skipping(index, fetch)

    def _item_skipping(self, index: int, fetch=None):
        fetch = fetch or self._item
        n = len(self)
        for step in range(n):
            candidate = (index + step) % n
            if candidate in self._corrupt:
                continue
            try:
                return fetch(candidate)
            except DecodeError as exc:
                self._corrupt.add(candidate)
                logger.warning(
                    "%r: skipping corrupt sample %d (%d so far in this process): %s",
                    self, candidate, self.n_corrupt, exc,
                )
        raise DecodeError(f"{self!r}: none of the {n} samples can be decoded")

    def _item(self, index: int) -> dict:
        key = self._keys[index]
        image, original = self._image(key)
        item = {"image": torch.from_numpy(image)}
        item.update(self._annotations(index, original, tuple(image.shape[1:])))
        item["path"] = str(self.root / key)
        return item

    def _image(self, key: str):
        """(uint8 ndarray[C, h, w], original (H, W)), from the cache when it has the image."""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                image, (height, width) = hit
                image = np.asarray(image)
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != self.channels:
                    raise ValueError(
                        f"cache entry {key!r} must be uint8 ndarray[{self.channels}, h, w], "
                        f"got {image.dtype} {image.shape}"
                    )
                check_image_size(self.root / key, int(height), int(width), "cached image")
                if not image.flags.writeable:  # memory-mapped cache: torch wants writable memory
                    image = image.copy()
                return image, (int(height), int(width))
        image = self.load_image(key)
        return image, tuple(image.shape[1:])

    def _annotations(self, index: int, original: tuple[int, int], size: tuple[int, int]) -> dict:
        """Annotation entries of the item, in pixels of an image of ``size`` (original ``original``)."""
        return {}

    def _mask_files(self, paths, size):
        """Masks decoded from files, resized (nearest) to ``size``: uint8 tensor[M, h, w]."""
        masks = [resize_nearest(read_mask(self.root / path)[None], size)[0] for path in paths]
        return torch.from_numpy(np.stack(masks))


def _scaled_boxes(boxes: np.ndarray, original, size) -> torch.Tensor:
    sy, sx = size[0] / original[0], size[1] / original[1]
    return torch.from_numpy(boxes * np.array([sx, sy, sx, sy], dtype=np.float32))


def _labels_and_boxes(reader, index, original, size) -> dict:
    """Image-level labels plus boxes rescaled to ``size``: the annotations of ChestX-ray14 and VinDr-CXR."""
    boxes, box_labels = reader._boxes[index] or _empty_boxes()
    return {
        "labels": torch.from_numpy(reader._labels[index].copy()),
        "boxes": _scaled_boxes(boxes, original, size),
        "box_labels": torch.from_numpy(box_labels.copy()),
    }


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
            held = _holdout([patients[name] for name in names], val_fraction, seed)
            names = [name for name, keep in zip(names, _split_mask(split, held, "val")) if keep]
        located = self._locate_images()
        missing = [name for name in names if name not in located]
        if missing:
            where = f"{self.root} (images/, images_*/images/)"
            raise _missing_error(missing, len(names), list_path.name, where)
        self._keys = [located[name] for name in names]
        self._labels = np.stack([labels[name] for name in names]) if names else np.zeros((0, 14), np.float32)
        boxes_path = self.root / "BBox_List_2017.csv"
        boxes = self._parse_boxes(boxes_path) if boxes_path.is_file() else {}
        self._boxes = [boxes.get(name) for name in names]

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
        keep = _split_mask(split, _holdout(keys, test_fraction, seed), "test")
        self._keys = [key for key, k in zip(keys, keep) if k]
        self._labels = np.array(labels, dtype=np.int64)[keep]

    def _annotations(self, index, original, size):
        return {"labels": torch.tensor(self._labels[index])}


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
        keep = _split_mask(split, _holdout(ids, test_fraction, seed), "test")
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
            keep = _split_mask(split, _holdout(keys, val_fraction, seed), "val")
            keys = [key for key, k in zip(keys, keep) if k]
        self._keys = keys
