"""Downstream metrics against scikit-learn, scipy and hand-computed values, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from adam_ext.downstream.metrics import (
    auc_per_class,
    classification_metrics,
    dice_iou,
    segmentation_metrics,
    summarize,
    ttest,
)
from adam_ext.downstream.segmentation import soft_dice_loss


def test_auc_per_class_matches_sklearn_and_undefined_classes_are_nan(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.4).astype(np.int64)
    targets[:, 2] = 0  # class absent from the evaluated set
    targets[:, 3] = 1  # class present in every image
    aucs = auc_per_class(scores, targets)
    for c in (0, 1):
        assert aucs[c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]))
    assert math.isnan(aucs[2]) and math.isnan(aucs[3])


def test_multilabel_mean_auc_skips_undefined_classes():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.3, 0.5], [0.1, 0.6, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    out = classification_metrics(scores, targets, ("a", "b", "c"), multilabel=True)
    assert out["auc/a"] == 1.0  # positives 0.9, 0.7 above negatives 0.2, 0.1
    assert out["auc/b"] == pytest.approx(roc_auc_score(targets[:, 1], scores[:, 1]))
    assert math.isnan(out["auc/c"])
    assert out["mean_auc"] == pytest.approx((out["auc/a"] + out["auc/b"]) / 2)
    assert "accuracy" not in out


def test_no_defined_class_gives_nan_mean_without_raising():
    out = classification_metrics(np.random.rand(3, 2), np.zeros((3, 2)), ("a", "b"), multilabel=True)
    assert math.isnan(out["mean_auc"])


def test_multiclass_one_vs_rest_auc_and_accuracy(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(30, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, 3, 30)
    out = classification_metrics(probs, targets, ("x", "y", "z"), multilabel=False)
    for c, name in enumerate("xyz"):
        assert out[f"auc/{name}"] == pytest.approx(roc_auc_score(targets == c, probs[:, c]))
    assert out["mean_auc"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    assert out["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == targets))


def test_binary_auc_is_the_usual_auc_and_absent_class_is_nan():
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    targets = np.array([0, 0, 1, 1])
    out = classification_metrics(np.stack([1 - p1, p1], 1), targets, ("neg", "pos"), multilabel=False)
    assert out["mean_auc"] == pytest.approx(roc_auc_score(targets, p1)) == pytest.approx(0.75)
    out = classification_metrics(
        np.stack([1 - p1, p1], 1), np.zeros(4, int), ("neg", "pos"), multilabel=False
    )
    assert math.isnan(out["mean_auc"]) and out["accuracy"] == 0.75


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="targets must hold only 0 and 1"):
        auc_per_class(np.zeros((2, 1)), np.array([[2], [0]]))
    with pytest.raises(ValueError, match=r"scores must be \(N, 3\)"):
        classification_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ("a", "b", "c"), multilabel=True)
    with pytest.raises(ValueError, match="pred and target"):
        dice_iou(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))


def test_dice_and_iou_hand_computed_with_empty_masks():
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    pred[0, 0, :2, :2] = True  # 4 px
    target[0, 0, :2, :3] = True  # 6 px, overlap 4
    # class 1, image 0: both empty -> 1; class 2, image 0: only the prediction -> 0
    pred[0, 2, 0, 0] = True
    target[1, 0, 3, :] = True  # image 1 class 0: missed entirely
    pred[1, 1] = True
    target[1, 1] = True  # perfect
    dice, iou = dice_iou(pred, target)
    assert dice.dtype == torch.float64 and dice.shape == (2, 3)
    expected_dice = torch.tensor([[2 * 4 / 10, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    expected_iou = torch.tensor([[4 / 6, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(dice, expected_dice)
    torch.testing.assert_close(iou, expected_iou)
    out = segmentation_metrics(dice, iou, ("heart", "lung", "clavicle"))
    assert out["dice/heart"] == pytest.approx((0.8 + 0.0) / 2)  # mean over images
    assert out["iou/lung"] == 1.0
    assert out["mean_dice"] == pytest.approx((0.4 + 1.0 + 0.5) / 3)
    assert out["mean_iou"] == pytest.approx((1 / 3 + 1.0 + 0.5) / 3)


def test_monai_dice_equals_ours_on_constructed_masks(seed):
    """issue 22.5: ``backend="monai"`` (monai.metrics.DiceMetric / MeanIoU) gives our numbers: the empty-mask
    cases of the hand-computed test, and random masks of every overlap."""
    pytest.importorskip("monai")
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(6, 3, 16, 16, generator=g) < torch.rand(6, 3, 1, 1, generator=g)
    target = torch.rand(6, 3, 16, 16, generator=g) < torch.rand(6, 3, 1, 1, generator=g)
    pred[0, 0], target[0, 0] = False, False  # both empty: 1
    pred[1, 1], target[1, 1] = True, False  # only the prediction: 0
    pred[2, 2], target[2, 2] = False, True  # only the truth: 0
    pred[3, 0] = target[3, 0]  # perfect: 1
    ours = dice_iou(pred, target)
    theirs = dice_iou(pred, target, backend="monai")
    for a, b in zip(ours, theirs):
        assert b.dtype == torch.float64 and b.shape == (6, 3)
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)  # MONAI counts in float32
    assert ours[0][0, 0] == theirs[0][0, 0] == 1 and ours[1][0, 0] == theirs[1][0, 0] == 1
    assert theirs[0][1, 1] == theirs[0][2, 2] == 0 and theirs[0][3, 0] == 1
    names = ("a", "b", "c")
    assert segmentation_metrics(*theirs, names) == pytest.approx(segmentation_metrics(*ours, names), rel=1e-6)
    with pytest.raises(ValueError, match="backend must be one of adam_ext, monai, got 'sklearn'"):
        dice_iou(pred, target, backend="sklearn")


def test_dice_backend_is_a_validated_finetune_option():
    from adam_ext.downstream.config import FinetuneConfig, validate

    validate(FinetuneConfig(root="d", task="seg", dice_backend="monai"))
    with pytest.raises(ValueError, match="dice_backend"):
        validate(FinetuneConfig(root="d", task="seg", dice_backend="medpy"))


def test_soft_dice_loss_is_zero_for_a_perfect_prediction_and_finite_on_empty_classes():
    target = torch.zeros(2, 2, 8, 8)
    target[:, 0, 2:5, 2:5] = 1
    assert soft_dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < soft_dice_loss(torch.full_like(target, 0.5), target).item() < 1


def test_summarize_uses_sample_std_and_skips_nan():
    s = summarize([0.7, 0.8, 0.9, math.nan])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1)
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([math.nan])["n"] == 0


def test_ttest_matches_scipy_and_is_nan_when_undefined():
    a, b = [0.71, 0.74, 0.69, 0.73], [0.78, 0.80, 0.77, 0.81]
    expected = stats.ttest_ind(a, b)
    out = ttest(a, b)
    assert out["t"] == pytest.approx(expected.statistic) and out["p"] == pytest.approx(expected.pvalue)
    assert math.isnan(ttest([0.5], [0.6, 0.7])["p"])
    assert math.isnan(ttest([0.5, 0.5], [0.5, 0.5])["p"])
