"""Segmentation metrics accumulated over a whole set: a confusion matrix (rows = ground
truth, columns = prediction, ignore pixels left out) and the EndoVis 2017 per-frame IoU.

Both live in tensors (``confusion``, ``frame_stats``) on the device of the data given to
``update``, which a distributed trainer can ``all_reduce`` with a sum before ``compute``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from surgseg.tasks import IGNORE_INDEX


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _nanmean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def _listed(x: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in x]


class SegmentationMetrics:
    """Confusion-matrix metrics over all updates.

    Args:
        num_classes: classes 0..num_classes-1; class 0 is background.
        ignore_index: target value left out of every metric.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        # [sum of per-frame IoU, number of frames]
        self.frame_stats = torch.zeros(2, dtype=torch.float64)

    def to(self, device: str | torch.device) -> SegmentationMetrics:
        """Move the state tensors (e.g. to the GPU before an all_reduce)."""
        self.confusion = self.confusion.to(device)
        self.frame_stats = self.frame_stats.to(device)
        return self

    def reset(self) -> None:
        self.confusion.zero_()
        self.frame_stats.zero_()

    @torch.no_grad()
    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add predictions and ground truth, (N, H, W) or (H, W) class indices."""
        pred, target = _as_tensor(pred), _as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if target.dim() == 2:
            pred, target = pred[None], target[None]
        c = self.num_classes
        self.to(pred.device)  # the state follows the data, so no batch leaves its device
        pred = pred.to(torch.int64).flatten(1)
        target = target.to(pred.device, torch.int64).flatten(1)
        valid = target != self.ignore_index
        if (target[valid] >= c).any() or (target[valid] < 0).any():
            raise ValueError(f"target holds values outside 0..{c - 1} and {self.ignore_index}")
        if (pred >= c).any() or (pred < 0).any():
            raise ValueError(f"pred holds values outside 0..{c - 1}")
        frame = torch.arange(pred.shape[0], device=pred.device)[:, None].expand_as(pred)
        code = (frame * c + target) * c + pred
        per_frame = torch.bincount(code[valid], minlength=pred.shape[0] * c * c)
        per_frame = per_frame.view(-1, c, c)
        self.confusion += per_frame.sum(0)
        self.frame_stats[0] += _frame_iou(per_frame).sum()
        self.frame_stats[1] += per_frame.shape[0]

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the counts of ``other`` (same number of classes) to this one."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge metrics of different class counts")
        self.confusion += other.confusion.to(self.confusion.device)
        self.frame_stats += other.frame_stats.to(self.frame_stats.device)

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python values; a class absent from both prediction and ground
        truth has IoU/Dice None and is left out of the means.

        Keys: ``iou``, ``dice`` (per class), ``miou``/``mdice`` (foreground classes),
        ``miou_all`` (all classes), ``pixel_accuracy``, ``frame_iou`` (EndoVis 2017: per
        frame, the mean IoU of foreground classes present in ground truth or prediction, 1 for
        a frame where both are empty; averaged over frames), ``frames``, ``pixels``, and for
        two classes ``sensitivity``, ``specificity``, ``balanced_accuracy`` of class 1.
        """
        cm = self.confusion.cpu().numpy().astype(np.float64)
        tp = np.diag(cm)
        gt, pr = cm.sum(1), cm.sum(0)
        iou = _ratio(tp, gt + pr - tp)
        dice = _ratio(2 * tp, gt + pr)
        total = cm.sum()
        frame_sum, frames = self.frame_stats.cpu().tolist()
        out: dict[str, Any] = {
            "iou": _listed(iou),
            "dice": _listed(dice),
            "miou": _nanmean(iou[1:]),
            "mdice": _nanmean(dice[1:]),
            "miou_all": _nanmean(iou),
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "frame_iou": frame_sum / frames if frames else None,
            "frames": int(frames),
            "pixels": int(total),
        }
        if self.num_classes == 2:
            (tn, fp), (fn, tp1) = cm
            sens, spec = _ratio(np.array([tp1, tn]), np.array([tp1 + fn, tn + fp]))
            out["sensitivity"], out["specificity"] = _listed(np.array([sens, spec]))
            out["balanced_accuracy"] = _nanmean(np.array([sens, spec]))
        return out


def _frame_iou(per_frame: torch.Tensor) -> torch.Tensor:
    """Per-frame mean IoU over the foreground classes present in ground truth or prediction
    (1 where there is none), from (N, C, C) confusion matrices."""
    tp = per_frame.diagonal(dim1=1, dim2=2)[:, 1:].double()
    union = per_frame.sum(2)[:, 1:] + per_frame.sum(1)[:, 1:] - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    count = present.sum(1)
    return torch.where(
        count > 0, iou.sum(1) / count.clamp(min=1), torch.ones_like(count, dtype=iou.dtype)
    )
