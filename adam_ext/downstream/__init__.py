"""Downstream transfer: fine-tuning and evaluation of pretrained encoders (the paper's protocol).

* :mod:`.classification` — ResNet trunk + linear head; multi-label (BCE, AUC) and binary /
  multi-class (cross-entropy, AUC, accuracy).
* :mod:`.segmentation` — ``segmentation_models_pytorch.Unet`` with the pretrained encoder;
  Dice + BCE / CE loss; Dice and IoU.
* :mod:`.init` — initialisations: ``random``, ``imagenet:PATH``, any checkpoint
  :func:`adam_ext.checkpoints.load_pretrained` reads.
* :mod:`.config` — :class:`FinetuneConfig` (the defaults), its validation, YAML files and overrides.
* :mod:`.splits` — training / validation / test samples of a run: hold-out and few-shot subsets.
* :mod:`.protocol` — runs, seeds, early stopping, repeated runs and comparisons.
* :mod:`.training` — one epoch, evaluation (sharded under ``torchrun``), the optimiser.
* :mod:`.report` — results.json / .md, curves.png, the t-test tables of a comparison.
* :mod:`.metrics` — AUC, Dice, IoU and run statistics, with their edge cases defined.

Example:
    >>> from adam_ext.downstream import FinetuneConfig, finetune              # doctest: +SKIP
    >>> cfg = FinetuneConfig(task="seg", dataset="scr", root="data/synth/scr", arch="resnet18",
    ...                      init="runs/adam/best.pt", size=64, shots=8, runs=3)  # doctest: +SKIP
    >>> finetune(cfg)["summary"]["mean_dice"]                                # doctest: +SKIP
    {'mean': 0.83, 'std': 0.02, 'n': 3}
"""

from __future__ import annotations

from ..checkpoints import InitReport, load_encoder, parse_init
from .config import FinetuneConfig, load_finetune_config
from .metrics import auc_per_class, classification_metrics, dice_iou, segmentation_metrics, summarize, ttest
from .protocol import SPLITS, compare, evaluate_checkpoint, finetune, finetune_run
from .splits import few_shot, holdout, open_splits

__all__ = [
    "SPLITS",
    "FinetuneConfig",
    "InitReport",
    "auc_per_class",
    "classification_metrics",
    "compare",
    "dice_iou",
    "evaluate_checkpoint",
    "few_shot",
    "finetune",
    "finetune_run",
    "holdout",
    "load_encoder",
    "load_finetune_config",
    "open_splits",
    "parse_init",
    "segmentation_metrics",
    "summarize",
    "ttest",
]
