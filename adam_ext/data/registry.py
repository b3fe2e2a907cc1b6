"""One registry of data sets: each entry holds everything the package knows about one data set.

``open_dataset(name, root, split=..., **options)`` opens one. An entry (:class:`Dataset`) names the
class that reads the published layout (imported only when asked for, so a reader's optional
dependency costs nothing to users of another), its modality, and the splits and input size that
fine-tuning uses by default. A new reader is one file and one :func:`register_dataset` call::

    from adam_ext.data.registry import Dataset, register_dataset

    register_dataset("my_cxr", Dataset("my_package.readers:MyCXR", train_split="train", test_split="test"))

Default splits (``adam finetune``'s ``train_split`` / ``test_split`` override them); the validation
images are the reader's own validation split where it has one, else a seeded share of the training
split, whole patients where the reader knows them (:func:`adam_ext._util.seeds.holdout`):

================  ============  ==========  ===============================================
data set          train         test        validation
================  ============  ==========  ===============================================
chestxray14       train         test        the reader's ``val`` (patient-wise, seeded)
synthetic         train         test        the reader's ``val`` (patient-wise, seeded)
scr               fold1         fold2       10% of fold1, seeded
shenzhen          train         test        10% of train, seeded (test: reader's 20%)
vindr_cxr         train         test        10% of train, seeded
siim_acr          train         test        10% of train, seeded
chestx_det        train         test        10% of train, seeded
vindr_rib         train         val         10% of train, seeded
eyepacs           train         test        10% of train, seeded (both eyes of a patient together)
drive             training      test        10% of training, seeded
folder            —             —           (pretraining only: a seeded ``val_fraction``)
================  ============  ==========  ===============================================
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = [
    "DATASETS",
    "FUNDUS",
    "SPLITS",
    "Dataset",
    "check_options",
    "dataset_class",
    "open_dataset",
    "register_dataset",
]


@dataclass(frozen=True)
class Dataset:
    """What the package knows about one data set.

    Attributes:
        reader: ``"module:Class"``; the class is constructed as ``Class(root, split=split, **options)``.
        modality: ``xray`` (grey) or ``fundus`` (colour photographs).
        train_split, test_split: the splits fine-tuning trains and tests on (None: not a fine-tuning
            data set, e.g. a bare folder of images).
        val_split: the reader's own validation split, or None: fine-tuning then holds out a seeded
            ``val_fraction`` of the training split.
        val_fraction_option: the reader's validation split takes fine-tuning's ``val_fraction`` as a
            ``val_fraction=`` option (ChestX-ray14's patient-wise split).
        finetune_size: the fine-tuning input side in pixels (the paper: 224 for X-rays, 512 for fundus).
    """

    reader: str
    modality: str = "xray"
    train_split: str | None = None
    test_split: str | None = None
    val_split: str | None = None
    val_fraction_option: bool = False
    finetune_size: int = 224

    def __post_init__(self):
        module, sep, name = self.reader.partition(":")
        if not (module and sep and name):
            raise ValueError(f"reader must be 'module:Class', got {self.reader!r}")
        if self.modality not in ("xray", "fundus"):
            raise ValueError(f"modality must be xray or fundus, got {self.modality!r}")
        if (self.train_split is None) != (self.test_split is None):
            raise ValueError(
                "train_split and test_split must both be given (a fine-tuning data set) or neither"
            )


#: name -> :class:`Dataset`.
DATASETS: dict[str, Dataset] = {
    "chestxray14": Dataset(
        "adam_ext.data.readers.chestxray:ChestXray14",
        train_split="train",
        test_split="test",
        val_split="val",
        val_fraction_option=True,
    ),
    "synthetic": Dataset(
        "adam_ext.data.synthetic:SyntheticDataset", train_split="train", test_split="test", val_split="val"
    ),
    "scr": Dataset("adam_ext.data.readers.segmentation:SCR", train_split="fold1", test_split="fold2"),
    "shenzhen": Dataset("adam_ext.data.readers.chestxray:Shenzhen", train_split="train", test_split="test"),
    "vindr_cxr": Dataset("adam_ext.data.readers.vindr:VinDrCXR", train_split="train", test_split="test"),
    "siim_acr": Dataset("adam_ext.data.readers.segmentation:SIIMACR", train_split="train", test_split="test"),
    "chestx_det": Dataset(
        "adam_ext.data.readers.segmentation:ChestXDet", train_split="train", test_split="test"
    ),
    "vindr_rib": Dataset("adam_ext.data.readers.vindr:VinDrRib", train_split="train", test_split="val"),
    "eyepacs": Dataset("adam_ext.data.readers.fundus:EyePACS", "fundus", "train", "test", finetune_size=512),
    "drive": Dataset("adam_ext.data.readers.fundus:DRIVE", "fundus", "training", "test", finetune_size=512),
    "folder": Dataset("adam_ext.data.readers.folder:ImageFolder"),
}


def register_dataset(name: str, entry: Dataset) -> None:
    """Adds data set ``name`` (refused if taken: a program cannot silently replace a published layout)."""
    if not isinstance(name, str) or not name or name in DATASETS:
        raise ValueError(f"name must be a new data set name (taken: {sorted(DATASETS)}), got {name!r}")
    if not isinstance(entry, Dataset):
        raise ValueError(f"entry must be an adam_ext.data.registry.Dataset, got {type(entry).__name__}")
    DATASETS[name] = entry


class _Splits(dict):
    """:data:`SPLITS`, read from :data:`DATASETS` at each look-up (registrations included)."""

    def _table(self) -> dict:
        return {n: (d.train_split, d.test_split, d.val_split) for n, d in DATASETS.items() if d.train_split}

    def __getitem__(self, name):
        return self._table()[name]

    def __contains__(self, name):
        return name in self._table()

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(self._table())

    def get(self, name, default=None):
        return self._table().get(name, default)

    def keys(self):
        return self._table().keys()

    def items(self):
        return self._table().items()

    def __repr__(self):
        return repr(self._table())


#: The fine-tuning splits, derived from :data:`DATASETS`: name -> (train split, test split, the
#: reader's own validation split or None).
SPLITS = _Splits()

#: Data sets of colour fundus photographs (derived from :data:`DATASETS`; as of import).
FUNDUS = tuple(n for n, d in DATASETS.items() if d.modality == "fundus")


def dataset_class(name: str):
    """The class registered under ``name``; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {sorted(DATASETS)}, got {name!r}")
    module_name, class_name = DATASETS[name].reader.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def check_options(name: str, options, field: str = "options") -> None:
    """Raises ValueError naming the first key of ``options`` that data set ``name``'s reader does not
    take (``field`` names the configuration field in the message), instead of the reader's TypeError.
    Readers that pass ``**options`` on to their base class are followed up the class tree; one whose
    every ``__init__`` takes ``**kwargs`` accepts anything."""
    import inspect

    taken = set()
    for klass in dataset_class(name).__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        taken |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    else:
        return
    taken = sorted(taken - {"self", "root", "split", "transform"})
    unknown = [key for key in options if key not in taken]
    if unknown:
        raise ValueError(
            f"{field} has unknown key {unknown[0]!r} for data set {name!r}; expected some of {taken} "
            f"(options of another data set do not carry over: set {field}={{}} to clear them)"
        )


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
