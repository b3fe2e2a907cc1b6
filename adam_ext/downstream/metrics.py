"""Downstream metrics: AUC for classification, Dice and IoU for segmentation, run statistics.

Definitions (the ones every results table of :mod:`adam_ext.downstream` uses):

* **AUC** (:func:`auc_per_class`): scikit-learn's ``roc_auc_score`` per class, one-vs-rest.
  A class whose label takes a single value in the evaluated set (absent, or present in every
  image) has no ROC curve: its AUC is **NaN**, and it is left out of ``mean_auc`` (the mean
  over the classes that have one). When no class has one, ``mean_auc`` is NaN. Nothing raises.
* **Dice / IoU** (:func:`dice_iou`): per image and per class on hard masks,
  ``Dice = 2|P∩T| / (|P| + |T|)`` and ``IoU = |P∩T| / |P∪T|``. When prediction and target are
  both empty, the prediction is perfect and **Dice = IoU = 1**; when only one is empty both are 0.
  ``backend="monai"`` computes the same numbers with MONAI's ``DiceMetric`` and ``MeanIoU``
  (``ignore_empty=False``: MONAI's own rule for empty masks is this one), for results stated in the
  field's common metric (the fine-tuning option ``dice_backend: monai``).
* **Aggregation** (:func:`segmentation_metrics`): per image, then averaged over the images
  (``dice/<class>`` is the mean of that class's per-image Dice over the evaluated set);
  ``mean_dice`` / ``mean_iou`` average the classes. This is the usual per-image protocol of
  medical segmentation papers; it is not the pooled Dice of the whole set.
* **mean ± std over runs** (:func:`summarize`): the sample standard deviation (ddof = 1), 0 for
  a single run; NaN values (an undefined AUC) are left out.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

#: Implementations of :func:`dice_iou`.
DICE_BACKENDS = ("adam_ext", "monai")

__all__ = [
    "DICE_BACKENDS",
    "auc_per_class",
    "classification_metrics",
    "dice_iou",
    "format_summary",
    "segmentation_metrics",
    "summarize",
    "ttest",
]


def auc_per_class(scores, targets) -> np.ndarray:
    """One-vs-rest ROC AUC per class.

    Args:
        scores: array-like float[N, C], higher = more likely positive (probabilities or logits).
        targets: array-like of 0/1, [N, C] (multi-hot), same shape as ``scores``.

    Returns:
        float64 ndarray[C]: the AUC of each class; NaN where the class's targets take a single
        value over the N samples (AUC undefined).

    Raises:
        ValueError: shapes differ or are not 2-D, or targets hold values other than 0 and 1.
    """
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, C) arrays of the same shape, got {scores.shape} and {targets.shape}"
        )
    if targets.size and not np.isin(targets, (0, 1)).all():
        raise ValueError(f"targets must hold only 0 and 1, got values {np.unique(targets)[:6].tolist()}")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):  # one call per class (C ≤ 28), not per sample
        column = targets[:, c]
        if column.size and column.min() != column.max():
            out[c] = roc_auc_score(column, scores[:, c])
    return out


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values[~np.isnan(values)].mean()) if np.any(~np.isnan(values)) else math.nan


def classification_metrics(scores, targets, classes, multilabel: bool) -> dict[str, float]:
    """Per-class and mean AUC (and accuracy for single-label tasks).

    Args:
        scores: float[N, C]: per-class probabilities (sigmoid for multi-label, softmax otherwise).
        targets: multi-label: 0/1 [N, C]; single-label (binary or multi-class): int class index [N].
        classes: the C class names (keys ``auc/<name>``).
        multilabel: which of the two target layouts is given.

    Returns:
        dict: ``mean_auc``, ``auc/<class>`` for every class (NaN where undefined, see the module
        docstring) and, for single-label tasks, ``accuracy`` (fraction of argmax hits). For a
        binary task the two one-vs-rest AUCs are equal, so ``mean_auc`` is the usual binary AUC.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"scores must be (N, {len(classes)}) for {len(classes)} classes, got {scores.shape}")
    out: dict[str, float] = {}
    if multilabel:
        onehot = targets
    else:
        if targets.shape != (scores.shape[0],):
            raise ValueError(
                f"targets must be (N,) class indices with N={scores.shape[0]}, got {targets.shape}"
            )
        if targets.size and (targets.min() < 0 or targets.max() >= len(classes)):
            raise ValueError(
                f"targets must be class indices in [0, {len(classes)}), got {np.unique(targets).tolist()}"
            )
        onehot = np.eye(len(classes), dtype=np.int64)[targets.astype(np.int64)]
        out["accuracy"] = float((scores.argmax(1) == targets).mean()) if targets.size else math.nan
    aucs = auc_per_class(scores, onehot)
    out["mean_auc"] = _nanmean(aucs)
    out.update({f"auc/{name}": float(value) for name, value in zip(classes, aucs)})
    return out


def dice_iou(
    pred: torch.Tensor, target: torch.Tensor, *, backend: str = "adam_ext"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-class Dice and IoU of hard masks.

    Args:
        pred: bool (or 0/1 integer) Tensor[N, M, H, W]: predicted masks.
        target: same shape and kinds: ground-truth masks.
        backend: ``"adam_ext"`` (exact counts in float64) or ``"monai"`` (``monai.metrics.DiceMetric``
            and ``MeanIoU`` with ``include_background=True, ignore_empty=False``, computed by MONAI in
            float32 and returned as float64: equal to ours within float32 rounding, 6e-8 relative).

    Returns:
        ``(dice, iou)``: float64 Tensor[N, M] each; 1 where both masks are empty (see the module
        docstring), 0 where exactly one is.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be (N, M, H, W) of the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if backend not in DICE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(DICE_BACKENDS)}, got {backend!r}")
    pred, target = pred.bool(), target.bool()
    if backend == "monai":
        return _dice_iou_monai(pred, target)
    inter = (pred & target).sum((2, 3), dtype=torch.float64)
    total = pred.sum((2, 3), dtype=torch.float64) + target.sum((2, 3), dtype=torch.float64)
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, 1.0, 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, 1.0, inter / union.clamp_min(1))
    return dice, iou


def _dice_iou_monai(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dice_iou` by MONAI's metrics (each mask channel a class, the background one included)."""
    from monai.metrics import DiceMetric, MeanIoU

    y_pred, y = pred.float(), target.float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(y_pred, y)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(y_pred, y)
    return dice.to(torch.float64), iou.to(torch.float64)


def segmentation_metrics(dice, iou, names) -> dict[str, float]:
    """Per-class and mean Dice and IoU over a set, from per-image values.

    Args:
        dice, iou: array-like float[N, M] from :func:`dice_iou` (N images, M classes).
        names: the M class names (keys ``dice/<name>``, ``iou/<name>``).

    Returns:
        dict: ``mean_dice``, ``mean_iou``, ``dice/<name>``, ``iou/<name>``: per class the mean
        over the N images, and the mean over classes of those.
    """
    dice, iou = np.asarray(dice, dtype=np.float64), np.asarray(iou, dtype=np.float64)
    if dice.ndim != 2 or dice.shape != iou.shape or dice.shape[1] != len(names):
        raise ValueError(
            f"dice and iou must both be (N, {len(names)}) for {len(names)} classes, got {dice.shape} and {iou.shape}"
        )
    per_dice = dice.mean(0) if len(dice) else np.full(len(names), np.nan)
    per_iou = iou.mean(0) if len(iou) else np.full(len(names), np.nan)
    out = {"mean_dice": _nanmean(per_dice), "mean_iou": _nanmean(per_iou)}
    out.update({f"dice/{n}": float(v) for n, v in zip(names, per_dice)})
    out.update({f"iou/{n}": float(v) for n, v in zip(names, per_iou)})
    return out


def summarize(values) -> dict:
    """Mean and sample standard deviation of one metric over runs.

    Args:
        values: floats, one per run; NaN (undefined) values are left out.

    Returns:
        dict with ``mean``, ``std`` (ddof = 1; 0 for one defined value) and ``n`` (defined
        values); mean and std are NaN when no value is defined.
    """
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def format_summary(summary: dict) -> str:
    """``"0.8123 ± 0.0211"`` for a :func:`summarize` result; ``"n/a"`` when no value is defined."""
    if summary["n"] == 0 or math.isnan(summary["mean"]):
        return "n/a"
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def ttest(a, b) -> dict:
    """Independent two-sample t-test (``scipy.stats.ttest_ind``, equal variances, two-sided).

    Args:
        a, b: per-run values of one metric under two initialisations; NaN values are left out.

    Returns:
        dict with ``t`` and ``p``; both NaN when a side has fewer than 2 defined values or both
        sides have zero variance (the test is undefined there).
    """
    from scipy import stats

    a = np.asarray([v for v in a if v is not None], dtype=np.float64)
    b = np.asarray([v for v in b if v is not None], dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size < 2 or b.size < 2:
        return {"t": math.nan, "p": math.nan}
    with warnings.catch_warnings():  # identical samples: scipy warns and returns NaN, which we report
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b)
    return {"t": float(result.statistic), "p": float(result.pvalue)}
