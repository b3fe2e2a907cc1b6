"""The checkpoint formats adam_ext writes: their kinds, versions and the version policy.

Every file adam_ext writes with weights is a dict with ``kind`` and ``version``:

* ``adam_ext.pretrain`` (:data:`PRETRAIN_KIND`): a pretraining run's ``last.pt`` / ``best.pt``
  (``model`` = ``MoCo.state_dict()``, ``config``, ``stage``, ``epoch``, ``step``...).
* ``adam_ext.finetune`` (:data:`FINETUNE_KIND`): a fine-tuning run's ``seed<S>/best.pt``
  (``model``, ``task``, ``arch``, ``classes``, ``config``...).

Policy: readers of *weights* (:func:`~adam_ext.checkpoints.load_pretrained`, Grad-CAM) accept
every version up to the current one; *resuming* a run needs exactly the current version (the
optimiser and schedule state must mean what this code means). A version is raised when the meaning
of a field changes.
"""

from __future__ import annotations

__all__ = ["FINETUNE_KIND", "FINETUNE_VERSION", "PRETRAIN_KIND", "PRETRAIN_VERSION", "readable_version"]

PRETRAIN_KIND = "adam_ext.pretrain"
PRETRAIN_VERSION = 1
FINETUNE_KIND = "adam_ext.finetune"
FINETUNE_VERSION = 1


def readable_version(version, current: int) -> bool:
    """True when weights of ``version`` can be read by code whose current version is ``current``."""
    return isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= current
