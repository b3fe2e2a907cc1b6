"""Data: readers of the paper's data sets, the embedded synthetic generator, views, cache.

Submodules are imported on first use (``adam_ext.data.synthetic``, ``.readers``, ``.decomposer``,
``.views``, ``.cache``) so that importing the registry costs nothing.
"""

from .registry import DATASETS, dataset_class, open_dataset

__all__ = ["DATASETS", "dataset_class", "open_dataset"]
