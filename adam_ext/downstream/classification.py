"""Downstream classification: a ResNet trunk plus a linear head (the paper's linear-head fine-tuning).

Task kinds follow the reader's labels:

* **multi-label** (``labels`` float32 multi-hot, e.g. ChestX-ray14's 14 findings): one logit per
  class, ``BCEWithLogitsLoss``, sigmoid scores, per-class and mean AUC;
* **binary / multi-class** (``labels`` an int64 class index, e.g. Shenzhen's 2 classes or
  EyePACS's 5 levels): one logit per class, cross-entropy, softmax scores, one-vs-rest AUC per
  class, their mean, and accuracy.

Images go through :class:`adam_ext.data.views.ClassificationTransform` (training: random crop,
horizontal flip, rotation ±7°; evaluation: resize and centre crop) to float32 Tensor[3, S, S].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from adam_ext.models import Classifier

from .metrics import classification_metrics

__all__ = ["ClassificationItems", "ClassificationTask", "Classifier"]


class ClassificationItems(Dataset):
    """``(image, labels)`` pairs of the reader's samples ``indices``, transformed.

    Items: ``image`` float32 Tensor[3, S, S] (``transform`` of the reader's uint8 image) and
    ``labels`` as the reader gives them (float32[C] multi-hot or an int64 scalar).
    """

    def __init__(self, reader, indices, transform):
        self.reader, self.indices, self.transform = reader, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        item = self.reader[self.indices[i]]
        return self.transform(item["image"]), item["labels"]


class ClassificationTask:
    """The classification task of one data set (what the fine-tuning engine asks of a task).

    Args:
        reader: a reader of the training split (its ``classes`` and first item's ``labels``
            decide the kind: float multi-hot → multi-label, int scalar → single-label).
        arch: ResNet name.
        size: side of the square network input in pixels.

    Attributes:
        classes (tuple[str]): class names; multilabel (bool); primary (str): ``"mean_auc"``.
    """

    name = "cls"
    primary = "mean_auc"

    def __init__(self, reader, arch: str, size: int):
        if len(reader) == 0:
            raise ValueError(f"the training split must hold images, got an empty {reader!r}")
        labels = reader[0].get("labels")
        if labels is None:
            raise ValueError(
                f"dataset must have image labels for classification, got items without 'labels' ({reader!r})"
            )
        self.classes = tuple(getattr(reader, "classes", ()) or ())
        self.multilabel = labels.is_floating_point() and labels.ndim == 1
        if self.multilabel and len(self.classes) != labels.numel():
            self.classes = tuple(f"class{i}" for i in range(labels.numel()))
        if not self.multilabel and len(self.classes) < 2:
            raise ValueError(f"a single-label data set must name at least 2 classes, got {self.classes}")
        self.arch, self.size = arch, size

    def build_model(self) -> tuple[nn.Module, nn.Module]:
        """``(model, encoder)``: a :class:`Classifier` and its trunk (what initialisations load)."""
        model = Classifier(self.arch, len(self.classes))
        return model, model.encoder

    def dataset(self, reader, indices, train: bool, seed: int) -> Dataset:
        """The training (random transform) or evaluation (deterministic) items of ``indices``.

        The training transform draws from torch's global generator (seeded per run; DataLoader
        workers are seeded from the loader's generator).
        """
        from adam_ext.data.views import ClassificationTransform

        return ClassificationItems(reader, indices, ClassificationTransform(train=train, size=self.size))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits (multi-label, target float[B, C]) or cross-entropy (target int64[B]); mean."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        return F.cross_entropy(logits, target)

    def collect(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-sample arrays for :meth:`metrics`: ``scores`` float32[B, C] and ``targets``."""
        logits = logits.float()
        scores = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)
        return {"scores": scores.cpu().numpy(), "targets": target.cpu().numpy()}

    def metrics(self, collected: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of a whole evaluated set (see :func:`~.metrics.classification_metrics`)."""
        return classification_metrics(
            collected["scores"], collected["targets"], self.classes, self.multilabel
        )
