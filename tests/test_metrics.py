"""SegmentationMetrics against scikit-learn, and the EndoVis 2017 per-frame IoUs by hand."""

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


def _frames(*rows: str) -> np.ndarray:
    """4×4 label frames written as strings of digits, four rows each."""
    digits = [[int(c) for c in row] for row in rows]
    return np.array(digits, np.uint8).reshape(-1, 4, 4)


# Worked by hand: each frame's IoUs are written out beside it.
BINARY_TRUTH = _frames(
    "0011", "0011", "0000", "0000",  # tool: 4 px
    "0000", "0000", "0000", "0000",  # no tool
    "0000", "0000", "0000", "0000",  # no tool
)  # fmt: skip
BINARY_PRED = _frames(
    "0111", "0010", "0000", "0000",  # 4 px, 3 right: IoU 3 / 5 = 0.6
    "0000", "0000", "0000", "0000",  # nothing either: challenge 0, frame_iou 1
    "1000", "1000", "0000", "0000",  # 2 px of tool where none is: challenge 0, frame_iou 0
)  # fmt: skip


def test_binary_challenge_iou_by_hand():
    m = SegmentationMetrics(2, task="binary")
    m.update(BINARY_PRED, BINARY_TRUTH)
    out = m.compute()
    # The organisers: every frame counts; no tool in the truth scores 0, whatever is predicted.
    assert out["challenge_iou"] == pytest.approx((0.6 + 0 + 0) / 3)
    assert out["challenge_frames"] == 3
    # Shvets et al.: nothing in either scores 1; a tool where none is scores 0.
    assert out["frame_iou"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert out["frames"] == 3


def test_parts_challenge_iou_counts_background_by_hand():
    truth = _frames(
        "1100", "1100", "2200", "0000",
        "0000", "0000", "0000", "0000",
    )  # fmt: skip
    pred = _frames(
        "1110", "1000", "2230", "0000",
        "0000", "0000", "0000", "0000",
    )  # fmt: skip
    # Frame 1: background: truth 10 px, predicted 9, both 8 → 8/11; shaft: 4 and 4, both 3
    # → 3/5; wrist: 2 and 2, both 2 → 1; clasper only predicted: not scored.
    # Frame 2: background only, all right → 1 for the challenge (background is scored) and 1
    # for frame_iou (nothing in either).
    m = SegmentationMetrics(4, task="parts")
    m.update(pred, truth)
    out = m.compute()
    assert out["challenge_iou"] == pytest.approx(((8 / 11 + 3 / 5 + 1) / 3 + 1) / 2)
    assert out["challenge_frames"] == 2
    assert out["frame_iou"] == pytest.approx(((3 / 5 + 1) / 2 + 1) / 2)


def test_types_challenge_iou_skips_frames_without_instrument_by_hand():
    truth = _frames(
        "1100", "1100", "0066", "0066",
        "0000", "0000", "0000", "0000",
        "0000", "0000", "0000", "0000",
    )  # fmt: skip
    pred = _frames(
        "1100", "6600", "0066", "0060",  # type 1: 4 and 2, both 2 → 0.5; type 6: 4, 5, 3 → 0.5
        "0000", "0300", "0000", "0000",  # no instrument, one predicted
        "0000", "0000", "0000", "0000",  # nothing in either
    )  # fmt: skip
    m = SegmentationMetrics(8, task="types")
    m.update(pred, truth)
    out = m.compute()
    # The organisers score types without background and skip frames with no type present.
    assert out["challenge_iou"] == pytest.approx(0.5) and out["challenge_frames"] == 1
    assert out["frame_iou"] == pytest.approx((0.5 + 0 + 1) / 3) and out["frames"] == 3
    # Ignore pixels count for nothing: marking the wrong type-6 pixel as ignore makes it 3/4.
    truth[0, 1, 0:2] = [255, 255]
    m = SegmentationMetrics(8, task="types")
    m.update(pred[:1], truth[:1])
    assert m.compute()["challenge_iou"] == pytest.approx((1.0 + 3 / 4) / 2)


def test_frame_iou_of_frames_without_instrument():
    m = SegmentationMetrics(3)
    empty = np.zeros((2, 2), np.uint8)
    m.update(empty, empty)  # nothing in prediction or ground truth: 1
    assert m.compute()["frame_iou"] == 1.0
    assert m.compute()["challenge_iou"] is None  # not counted by the challenge (no class 1, 2)
    m.reset()
    m.update(np.array([[1, 0]]), np.array([[0, 0]]))  # empty ground truth, tool predicted: 0
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
