"""Downstream segmentation: ``segmentation_models_pytorch.Unet`` with the pretrained ResNet encoder.

The U-Net is built with ``encoder_weights=None`` (nothing is downloaded); the initialisation then
loads into ``Unet.encoder`` (torchvision key names, strictly; see :mod:`.init`).

Two mask modes over the chosen mask channels ``masks`` (M names of the reader's ``mask_names``):

* ``multilabel`` (default; structures may overlap, e.g. SCR's lungs and heart): M output
  channels, sigmoid per channel, loss = BCE-with-logits + soft Dice, prediction = logit > 0;
* ``multiclass`` (one label per pixel): M + 1 channels (0 = background, i + 1 = ``masks[i]``; where
  masks overlap the later-listed one wins), softmax, loss = cross-entropy + soft Dice over the M
  foreground classes, prediction = argmax.

Images and masks are resized to ``size``×``size`` (area/linear for images, nearest for masks),
then in training augmented with the paper's albumentations
(:class:`adam_ext.data.seg_augment.SegmentationAugment`: random gamma, elastic, brightness /
contrast, optical and grid distortion), then normalised to float32 Tensor[3, S, S]. Metrics are
computed at that resolution (Dice and IoU per class and mean, see :mod:`.metrics`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .metrics import dice_iou, segmentation_metrics

__all__ = ["MASK_MODES", "SegmentationItems", "SegmentationTask", "build_unet", "soft_dice_loss"]

MASK_MODES = ("multilabel", "multiclass")


def build_unet(arch: str, classes: int) -> nn.Module:
    """``smp.Unet(arch, encoder_weights=None, classes=classes)``: 3-channel input, logits out.

    Shapes:
        Tensor[B, 3, H, W] (H, W multiples of 32) -> Tensor[B, classes, H, W].
    """
    import segmentation_models_pytorch as smp

    return smp.Unet(arch, encoder_weights=None, in_channels=3, classes=classes)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − mean over classes of the soft Dice, pooled over the batch and pixels.

    Args:
        probs: float Tensor[B, M, H, W] in [0, 1].
        target: float Tensor[B, M, H, W] of 0/1.
        smooth: added to numerator and denominator (keeps a class empty in the batch finite).
    """
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + smooth) / (total + smooth)).mean()


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """[H, W, K] (any K >= 1) -> [size, size, K]."""
    height, width, channels = array.shape
    if (height, width) == (size, size):
        return array
    mode = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if size < height else cv2.INTER_LINEAR)
    out = cv2.resize(np.ascontiguousarray(array), (size, size), interpolation=mode)
    return out.reshape(size, size, channels)


class SegmentationItems(Dataset):
    """``(image, target)`` pairs of the reader's samples ``indices``.

    Items: ``image`` float32 Tensor[3, S, S] normalised; ``target`` float32 Tensor[M, S, S] of 0/1
    (multilabel) or int64 Tensor[S, S] of class indices (multiclass).

    Args:
        reader: a reader whose items have ``mask`` uint8[K, H, W].
        indices: which of its samples.
        channels: indices into the reader's mask channels (the M chosen masks).
        size: output side in pixels.
        mode: ``multilabel`` or ``multiclass``.
        augment: None (evaluation) or a ``(image, mask) -> (image, mask)`` callable on numpy
            arrays [H, W(, C)] / [H, W, M].
    """

    def __init__(self, reader, indices, channels, size: int, mode: str, augment=None):
        from adam_ext.data.views import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedRGB

        self.reader, self.indices, self.channels = reader, list(indices), list(channels)
        self.size, self.mode, self.augment = size, mode, augment
        self.normalize = ToNormalizedRGB(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        item = self.reader[self.indices[i]]
        image = _resize(item["image"].numpy().transpose(1, 2, 0), self.size, nearest=False)  # H, W, C
        mask = _resize(item["mask"][self.channels].numpy().transpose(1, 2, 0), self.size, nearest=True)
        if image.shape[2] == 1:
            image = image[:, :, 0]
        if self.augment is not None:
            image, mask = self.augment(np.ascontiguousarray(image), np.ascontiguousarray(mask))
        image = torch.from_numpy(
            np.ascontiguousarray(image.reshape(self.size, self.size, -1).transpose(2, 0, 1))
        )
        mask = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1))) > 0  # M, S, S bool
        if self.mode == "multilabel":
            return self.normalize(image), mask.float()
        label = torch.zeros(mask.shape[1:], dtype=torch.int64)
        for c in range(mask.shape[0]):  # M channels (≤ 20), not pixels
            label[mask[c]] = c + 1
        return self.normalize(image), label


class SegmentationTask:
    """The segmentation task of one data set (what the fine-tuning engine asks of a task).

    Args:
        reader: a reader of the training split (its ``mask_names`` list the channels).
        arch: ResNet name of the U-Net encoder.
        size: side of the square network input in pixels (a multiple of 32).
        masks: the mask names to segment, a subset of ``reader.mask_names`` (None: all).
        mode: ``multilabel`` or ``multiclass`` (see the module docstring).

    Attributes:
        classes (tuple[str]): the M mask names; primary (str): ``"mean_dice"``.
    """

    name = "seg"
    primary = "mean_dice"

    def __init__(
        self,
        reader,
        arch: str,
        size: int,
        masks=None,
        mode: str = "multilabel",
        dice_backend: str = "adam_ext",
    ):
        names = tuple(getattr(reader, "mask_names", ()) or ())
        if not names:
            raise ValueError(f"dataset must have segmentation masks (mask_names), got none for {reader!r}")
        chosen = tuple(names if masks is None else masks)
        unknown = [m for m in chosen if m not in names]
        if unknown or not chosen:
            raise ValueError(f"masks must be a non-empty subset of {names}, got {list(chosen)}")
        if mode not in MASK_MODES:
            raise ValueError(f"seg_mode must be one of {MASK_MODES}, got {mode!r}")
        if size % 32:
            raise ValueError(f"size must be a multiple of 32 for the U-Net, got {size}")
        self.classes, self.channels = chosen, [names.index(m) for m in chosen]
        self.dice_backend = dice_backend
        self.arch, self.size, self.mode = arch, size, mode

    def build_model(self) -> tuple[nn.Module, nn.Module]:
        """``(model, encoder)``: the U-Net and its ``encoder`` (what initialisations load)."""
        outputs = len(self.classes) + (self.mode == "multiclass")
        model = build_unet(self.arch, outputs)
        return model, model.encoder

    def dataset(self, reader, indices, train: bool, seed: int) -> Dataset:
        """Items of ``indices``; training ones augmented with a ``seed``-ed SegmentationAugment."""
        augment = None
        if train:
            from adam_ext.data.seg_augment import SegmentationAugment

            augment = SegmentationAugment(seed=seed)
        return SegmentationItems(reader, indices, self.channels, self.size, self.mode, augment)

    def _probs_and_onehot(self, logits, target):
        if self.mode == "multilabel":
            return torch.sigmoid(logits), target
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        return torch.softmax(logits, 1)[:, 1:], onehot[:, 1:]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE (multilabel) or cross-entropy (multiclass), plus the soft Dice loss; a scalar."""
        logits = logits.float()
        if self.mode == "multilabel":
            base = F.binary_cross_entropy_with_logits(logits, target)
        else:
            base = F.cross_entropy(logits, target)
        return base + soft_dice_loss(*self._probs_and_onehot(logits, target))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard masks bool Tensor[B, M, H, W] from logits."""
        if self.mode == "multilabel":
            return logits > 0
        labels = logits.argmax(1)
        return labels[:, None] == torch.arange(1, logits.shape[1], device=logits.device)[None, :, None, None]

    def collect(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-image ``dice`` and ``iou`` float64[B, M] (only these leave the device, never masks)."""
        if self.mode == "multilabel":
            truth = target > 0.5
        else:
            truth = (
                target[:, None]
                == torch.arange(1, len(self.classes) + 1, device=target.device)[None, :, None, None]
            )
        dice, iou = dice_iou(self.predict(logits), truth, backend=self.dice_backend)
        return {"dice": dice.cpu().numpy(), "iou": iou.cpu().numpy()}

    def metrics(self, collected: dict[str, np.ndarray]) -> dict[str, float]:
        """Per-class and mean Dice / IoU over the set (per-image averaging, see :mod:`.metrics`)."""
        return segmentation_metrics(collected["dice"], collected["iou"], self.classes)
