"""The former home of pretraining, kept for one release: use :mod:`adam_ext.pretrain`.

``from adam_ext.train import pretrain`` keeps working (and the other public names below).
"""

from .pretrain import (
           EpochBatches,
           NonFiniteLossError,
           PretrainViews,
           ResumeError,
           load_checkpoint,
           pretrain,
           sample_seed,
)

__all__ = ["EpochBatches", "NonFiniteLossError", "PretrainViews", "ResumeError", "load_checkpoint", "pretrain",
           "sample_seed"]
