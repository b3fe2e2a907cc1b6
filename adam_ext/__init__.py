"""adam_ext: Adam (anatomy-aware self-supervised pretraining) around a fused pruned-InfoNCE operator.

The heart is :func:`pruned_info_nce`, MoCo's InfoNCE over a memory bank with the
purposive pruner, computed in one pass over the queue on CPU and CUDA.
"""

from . import reference
from .losses import PurposivePrunerLoss
from .ops import build_info, pruned_info_nce

__version__ = "0.1.0"

__all__ = ["PurposivePrunerLoss", "build_info", "pruned_info_nce", "reference", "__version__"]
