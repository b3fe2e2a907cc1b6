"""Modules that moved in 0.2.0, importable from their old paths until 0.3.0.

The package root holds only ``__init__.py`` since 0.2.0 (DESIGN.md's house). An import of an old
path (``import adam_ext.config``, ``from adam_ext.report import write_report``) gets the module at
its new home, the very same module object, with a :class:`DeprecationWarning` that names the new
path; ``adam_ext.reference`` stays a public name of the root, so it does not warn. Nothing here is
imported unless an old path is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Version in which the old paths stop working.
REMOVED_IN = "0.3.0"

#: old module -> (new module, warn)
MOVED = {
    "adam_ext.config": ("adam_ext.pretrain.config", True),
    "adam_ext.losses": ("adam_ext.ops.losses", True),
    "adam_ext.distributed": ("adam_ext.engine.distributed", True),
    "adam_ext.monitors": ("adam_ext.engine.monitors", True),
    "adam_ext.report": ("adam_ext.pretrain.report", True),
    "adam_ext.export": ("adam_ext.checkpoints.export", True),
    "adam_ext.provenance": ("adam_ext._util.provenance", True),
    "adam_ext.runfolder": ("adam_ext._util.runfolder", True),
    "adam_ext.train": ("adam_ext.pretrain", True),
    "adam_ext.checkpoints.atomic": ("adam_ext._util.atomic", True),
    "adam_ext.reference": ("adam_ext.ops.reference", False),
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` and loads them as their new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new, warn = MOVED[spec.name]
        if warn:
            warnings.warn(
                f"{spec.name} moved to {new} in adam_ext 0.2.0; the old path stops working in {REMOVED_IN}",
                DeprecationWarning,
                stacklevel=3,
            )
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's: put it back
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # already executed under its own name


def install() -> None:
    """Adds the finder once (``adam_ext/__init__.py`` calls it)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
