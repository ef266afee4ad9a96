"""SegmentationMetrics against scikit-learn, and the EndoVis per-frame IoU by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    recall_score,
)

from surgseg.metrics import SegmentationMetrics


def _random(num_classes: int, seed: int, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, shape).astype(np.uint8)
    target[rng.random(shape) < 0.1] = 255
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
    pred[target == 255] = rng.integers(0, num_classes, (target == 255).sum())
    return pred.astype(np.uint8), target


@pytest.mark.parametrize("num_classes", [2, 4, 8])
def test_matches_sklearn(num_classes: int):
    metrics = SegmentationMetrics(num_classes)
    preds, targets = [], []
    for seed in range(3):
        pred, target = _random(num_classes, seed)
        metrics.update(pred, target)
        preds.append(pred.ravel())
        targets.append(target.ravel())
    p, t = np.concatenate(preds), np.concatenate(targets)
    keep = t != 255
    p, t = p[keep], t[keep]
    labels = list(range(num_classes))
    np.testing.assert_array_equal(metrics.confusion.numpy(), confusion_matrix(t, p, labels=labels))
    out = metrics.compute()
    np.testing.assert_allclose(out["iou"], jaccard_score(t, p, labels=labels, average=None))
    np.testing.assert_allclose(out["dice"], f1_score(t, p, labels=labels, average=None))
    iou = jaccard_score(t, p, labels=labels, average=None)
    assert out["miou"] == pytest.approx(iou[1:].mean())
    assert out["miou_all"] == pytest.approx(iou.mean())
    assert out["pixel_accuracy"] == pytest.approx((p == t).mean())
    assert out["pixels"] == keep.sum() and out["frames"] == 9
    if num_classes == 2:
        assert out["sensitivity"] == pytest.approx(recall_score(t, p, pos_label=1))
        assert out["specificity"] == pytest.approx(recall_score(t, p, pos_label=0))
        assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    else:
        assert "sensitivity" not in out


def test_merge_and_torch_input_equal_one_pass():
    a, b, whole = SegmentationMetrics(4), SegmentationMetrics(4), SegmentationMetrics(4)
    p1, t1 = _random(4, 1)
    p2, t2 = _random(4, 2)
    a.update(torch.from_numpy(p1), torch.from_numpy(t1))
    b.update(p2[0], t2[0])  # a single H×W frame
    b.update(p2[1:], t2[1:])
    whole.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    a.merge(b)
    assert torch.equal(a.confusion, whole.confusion)
    assert torch.allclose(a.frame_stats, whole.frame_stats)
    assert a.compute() == whole.compute()
    a.reset()
    assert a.confusion.sum() == 0 and a.compute()["frame_iou"] is None


def test_frame_iou_by_hand():
    m = SegmentationMetrics(3)
    empty = np.zeros((2, 2), np.uint8)
    m.update(empty, empty)  # nothing in prediction or ground truth: 1
    assert m.compute()["frame_iou"] == 1.0
    m.reset()
    # class 1: inter 1, union 2 → 0.5; class 2 only predicted → 0; mean 0.25
    pred = np.array([[1, 1], [2, 0]], np.uint8)
    target = np.array([[1, 0], [0, 0]], np.uint8)
    m.update(pred, target)
    assert m.compute()["frame_iou"] == pytest.approx(0.25)
    # second frame: class 2 perfect, ignore pixel not counted → 1; average (0.25 + 1) / 2
    m.update(np.array([[2, 1], [0, 0]]), np.array([[2, 255], [0, 0]]))
    assert m.compute()["frame_iou"] == pytest.approx(0.625)
    assert m.compute()["frames"] == 2
    # empty ground truth, tool predicted → 0
    m.reset()
    m.update(np.array([[1, 0]]), np.array([[0, 0]]))
    assert m.compute()["frame_iou"] == 0.0


def test_absent_classes_are_none_and_left_out_of_means():
    m = SegmentationMetrics(3)
    m.update(np.array([[0, 1]]), np.array([[0, 1]]))
    out = m.compute()
    assert out["iou"] == [1.0, 1.0, None] and out["miou"] == 1.0 and out["mdice"] == 1.0


def test_rejects_bad_labels():
    m = SegmentationMetrics(2)
    with pytest.raises(ValueError, match="target"):
        m.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 3, np.uint8))
    with pytest.raises(ValueError, match="differ"):
        m.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
