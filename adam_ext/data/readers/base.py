"""The readers' shared machinery: the public base class :class:`Reader` (split check, cache,
decoding, corrupt-file policy, transform), :func:`require_files`, :func:`collate_items` and the
helpers the readers of :mod:`adam_ext.data.readers` share (label-file parsing, row errors, image
paths kept inside the root, seeded hold-outs, boxes). See the package docstring for the items and
options every reader has.
"""

from __future__ import annotations

import csv
import logging
import operator
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import DecodeError, check_image_size, read_image, read_mask, resize_nearest

# the package's name, as when this was one module: logging configured for adam_ext.data.readers applies
logger = logging.getLogger(__package__)

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

    def groups(self) -> list[str]:
        """Per-item group ids for hold-outs (:func:`adam_ext._util.seeds.holdout`): the patient where
        the layout names one (readers that know patients override this), else the image itself."""
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
                    self,
                    candidate,
                    self.n_corrupt,
                    exc,
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
