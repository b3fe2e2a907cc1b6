"""One registry of data sets: ``open_dataset(name, root, split=..., **options)``.

Each entry names the class that reads a published layout; classes are imported
only when asked for, so a reader's optional dependency (pydicom, say) costs
nothing to users of another.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; each class is constructed as Class(root, split=split, **options)
DATASETS = {
    "chestxray14": "adam_ext.data.readers.chestxray:ChestXray14",
    "shenzhen": "adam_ext.data.readers.chestxray:Shenzhen",
    "vindr_cxr": "adam_ext.data.readers.vindr:VinDrCXR",
    "siim_acr": "adam_ext.data.readers.segmentation:SIIMACR",
    "chestx_det": "adam_ext.data.readers.segmentation:ChestXDet",
    "scr": "adam_ext.data.readers.segmentation:SCR",
    "vindr_rib": "adam_ext.data.readers.vindr:VinDrRib",
    "eyepacs": "adam_ext.data.readers.fundus:EyePACS",
    "drive": "adam_ext.data.readers.fundus:DRIVE",
    "folder": "adam_ext.data.readers.folder:ImageFolder",
    "synthetic": "adam_ext.data.synthetic:SyntheticDataset",
}

#: The splits fine-tuning uses: data set -> (train split, test split, the reader's own validation
#: split or None: then a seeded share of the train split is held out).
SPLITS = {
    "chestxray14": ("train", "test", "val"),
    "synthetic": ("train", "test", "val"),
    "scr": ("fold1", "fold2", None),
    "shenzhen": ("train", "test", None),
    "vindr_cxr": ("train", "test", None),
    "siim_acr": ("train", "test", None),
    "chestx_det": ("train", "test", None),
    "vindr_rib": ("train", "val", None),
    "eyepacs": ("train", "test", None),
    "drive": ("training", "test", None),
}


def dataset_class(name: str):
    """The class registered under ``name``; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {sorted(DATASETS)}, got {name!r}")
    module_name, class_name = DATASETS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_dataset(name: str, root, split: str = "train", **options):
    """Opens data set ``name`` stored under ``root`` in its published layout.

    Args:
        name: one of :data:`DATASETS` (e.g. ``"chestxray14"``, ``"scr"``, ``"folder"``).
        root: folder holding the data set as its provider publishes it.
        split: which split to read (the names each data set accepts are in its class docstring).
        **options: reader options, e.g. ``cache=`` (a decoded-image cache folder, see
            ``adam cache``) or ``skip_corrupt=True``.

    Returns:
        A ``torch.utils.data.Dataset`` whose items are dicts with ``image`` (uint8 tensor,
        1×H×W or 3×H×W) and, as the data set has them, ``labels``, ``mask``, ``boxes``,
        ``landmarks`` and ``path``.
    """
    return dataset_class(name)(root, split=split, **options)
