"""adam_ext: Adam (anatomy-aware self-supervised pretraining) around a fused pruned-InfoNCE operator.

The heart is :func:`pruned_info_nce`, MoCo's InfoNCE over a memory bank with the
purposive pruner, computed in one pass over the queue on CPU and CUDA.

The names below are imported when first used (PEP 562), so that ``import adam_ext.cli`` (the
``adam`` command) and ``adam --help`` do not load torch. In a program that has imported torch,
``import adam_ext`` loads the extension at once, so ``torch.ops.adam_ext.*`` exist right after it
(``import adam_ext.ops`` does the same anywhere).
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.2.0"

# public name -> module that defines it
_LAZY = {
    "PurposivePrunerLoss": ".ops.losses",
    "build_info": ".ops",
    "pruned_info_nce": ".ops",
    "reference": ".ops.reference",
}

__all__ = ["PurposivePrunerLoss", "build_info", "pruned_info_nce", "reference", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "reference" else getattr(module, name)
    globals()[name] = value
    return value


from ._util import moved as _moved  # noqa: E402  (the old module paths of 0.1.0, until 0.3.0)

_moved.install()

if "torch" in sys.modules:  # a torch program: register torch.ops.adam_ext.* now, as an eager import did
    from . import ops as _ops  # noqa: F401


def __dir__():
    return sorted(set(globals()) | set(__all__))
