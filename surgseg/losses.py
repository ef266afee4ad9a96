"""Training loss: cross-entropy that skips the ignore label (optionally weighted per class), an
optional soft Dice term, and the auxiliary head's loss (torchvision's ``out + 0.5·aux``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from surgseg.tasks import IGNORE_INDEX


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``1 - mean over classes of (2·|P∩T| + s) / (|P| + |T| + s)`` on softmax probabilities.

    Pixels labelled ``ignore_index`` count for neither side. A class absent from both the
    target and the prediction scores 1, so a perfect prediction has a loss of 0.

    Args:
        logits: (N, C, H, W) raw scores.
        target: (N, H, W) integer labels.
    """
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), logits.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


class SegmentationLoss(nn.Module):
    """Loss on a torchvision-style output dict ``{"out": logits, "aux": logits?}``.

    ``CE(out) + dice_weight·Dice(out) + aux_weight·(CE(aux) + dice_weight·Dice(aux))``, with
    ``ignore_index`` pixels left out everywhere. ``class_weights`` (one per class) weigh each
    pixel's cross-entropy by its true class, normalized by the weights of the pixels counted.
    """

    def __init__(
        self,
        *,
        aux_weight: float = 0.5,
        dice_weight: float = 0.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        self.class_weights = (
            None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        )
        self.aux_weight = aux_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = self.class_weights
        loss = F.cross_entropy(
            logits,
            target,
            weight=None if weights is None else weights.to(logits.device),
            ignore_index=self.ignore_index,
        )
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(
                logits, target, ignore_index=self.ignore_index
            )
        return loss

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        loss = self._single(outputs["out"], target)
        if "aux" in outputs and self.aux_weight:
            loss = loss + self.aux_weight * self._single(outputs["aux"], target)
        return loss
