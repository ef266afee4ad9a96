"""Segmentation metrics accumulated over a whole set: a confusion matrix (rows = ground
truth, columns = prediction, ignore pixels left out) and two per-frame IoUs of the MICCAI
EndoVis 2017 robotic instrument segmentation challenge, each averaged over frames:

``challenge_iou``, as the organisers' evaluation script scored the test set (the challenge's
own table, Allan et al. 2019):
  - binary: the instrument class's IoU; a frame whose ground truth has no instrument scores 0,
    whatever the prediction;
  - parts, types: the mean IoU of the classes present in the frame's ground truth, among the
    classes the challenge scored: for parts background, shaft, wrist, clasper (its parts
    mapping lists Background); for types the seven instrument types (no background). Classes
    only predicted add nothing. A frame with none of these classes in its ground truth is not
    counted.

``frame_iou``, as Shvets et al.'s ``evaluate.py`` (ternaus/robot-surgery-segmentation, the
2017 winners) scores it, the figure of their cross-validation table (binary 83.6, parts 65.5,
types 34.6):
  - a frame with no instrument in its ground truth scores 1 if none is predicted, else 0;
  - otherwise binary: the instrument IoU; parts, types: the mean IoU of the foreground classes
    present in the ground truth.

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


def challenge_classes(num_classes: int, task: str | None = None) -> list[int]:
    """The classes whose IoU the EndoVis 2017 challenge averaged per frame: for ``parts``
    background and the three parts, otherwise the foreground classes."""
    return list(range(num_classes)) if task == "parts" else list(range(1, num_classes))


class SegmentationMetrics:
    """Confusion-matrix metrics over all updates.

    Args:
        num_classes: classes 0..num_classes-1; class 0 is background.
        task: the task the classes belong to (``binary``, ``parts``, ``types``); it decides
            which classes ``challenge_iou`` scores (see :func:`challenge_classes`). With two
            classes the binary rule applies whatever the task.
        ignore_index: target value left out of every metric.
    """

    def __init__(
        self, num_classes: int, *, task: str | None = None, ignore_index: int = IGNORE_INDEX
    ):
        self.num_classes = num_classes
        self.task = task
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        # [sum of frame_iou, frames, sum of challenge_iou, frames the challenge counted]
        self.frame_stats = torch.zeros(4, dtype=torch.float64)

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
        score, counted = _challenge_iou(per_frame, challenge_classes(c, self.task))
        self.frame_stats[2] += score[counted].sum()
        self.frame_stats[3] += counted.sum()

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the counts of ``other`` (same number of classes) to this one."""
        if other.num_classes != self.num_classes or other.task != self.task:
            raise ValueError("cannot merge metrics of different classes")
        self.confusion += other.confusion.to(self.confusion.device)
        self.frame_stats += other.frame_stats.to(self.frame_stats.device)

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python values; a class absent from both prediction and ground
        truth has IoU/Dice None and is left out of the means.

        Keys: ``iou``, ``dice`` (per class), ``miou``/``mdice`` (foreground classes),
        ``miou_all`` (all classes), ``pixel_accuracy``, ``challenge_iou`` (the EndoVis 2017
        organisers' per-frame IoU averaged over the frames they counted, see the module
        docstring), ``challenge_frames`` (those frames), ``frame_iou`` (Shvets et al.'s
        per-frame IoU averaged over all frames), ``frames``, ``pixels``, and for two classes
        ``sensitivity``, ``specificity``, ``balanced_accuracy`` of class 1.
        """
        cm = self.confusion.cpu().numpy().astype(np.float64)
        tp = np.diag(cm)
        gt, pr = cm.sum(1), cm.sum(0)
        iou = _ratio(tp, gt + pr - tp)
        dice = _ratio(2 * tp, gt + pr)
        total = cm.sum()
        frame_sum, frames, challenge_sum, challenge_frames = self.frame_stats.cpu().tolist()
        out: dict[str, Any] = {
            "iou": _listed(iou),
            "dice": _listed(dice),
            "miou": _nanmean(iou[1:]),
            "mdice": _nanmean(dice[1:]),
            "miou_all": _nanmean(iou),
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "challenge_iou": challenge_sum / challenge_frames if challenge_frames else None,
            "challenge_frames": int(challenge_frames),
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
    """Shvets et al.'s per-frame IoU from (N, C, C) confusion matrices: with instrument in
    the ground truth, the mean IoU of the foreground classes present there (the binary IoU
    for two classes); without, 1 if nothing is predicted either, else 0."""
    tp = per_frame.diagonal(dim1=1, dim2=2)[:, 1:].double()
    truth, predicted = per_frame.sum(2)[:, 1:], per_frame.sum(1)[:, 1:]
    present = truth > 0
    iou = torch.where(present, tp / (truth + predicted - tp).clamp(min=1), torch.zeros_like(tp))
    count = present.sum(1)
    empty = (predicted.sum(1) == 0).to(iou.dtype)
    return torch.where(count > 0, iou.sum(1) / count.clamp(min=1), empty)


def _challenge_iou(
    per_frame: torch.Tensor, classes: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The EndoVis 2017 organisers' per-frame IoU from (N, C, C) confusion matrices, and
    which frames they counted (see the module docstring)."""
    tp = per_frame.diagonal(dim1=1, dim2=2).double()
    truth, predicted = per_frame.sum(2), per_frame.sum(1)
    iou = tp / (truth + predicted - tp).clamp(min=1)
    if per_frame.shape[1] == 2:  # binary: the instrument's IoU, 0 without one in the truth
        score = torch.where(truth[:, 1] > 0, iou[:, 1], torch.zeros_like(iou[:, 1]))
        return score, torch.ones_like(score, dtype=torch.bool)
    present = truth[:, classes] > 0
    count = present.sum(1)
    score = torch.where(present, iou[:, classes], torch.zeros_like(iou[:, classes])).sum(1)
    return score / count.clamp(min=1), count > 0
