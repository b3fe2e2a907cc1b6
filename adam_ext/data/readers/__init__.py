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

# The class lists (readers.VINDR_RIBS, ...) stay public as when this package was one module.
from .._io import DecodeError
from .base import Reader, collate_items, require_files
from .chestxray import CXR14_CLASSES, ChestXray14, Shenzhen  # noqa: F401
from .folder import ImageFolder
from .fundus import DRIVE, EyePACS
from .segmentation import CHESTX_DET_CLASSES, SCR, SCR_ORGANS, SIIMACR, ChestXDet  # noqa: F401
from .vindr import VINDR_CXR_CLASSES, VINDR_RIBS, VinDrCXR, VinDrRib  # noqa: F401

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
