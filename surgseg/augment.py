"""Augmentation presets: albumentations ops from config, plus Normalize and ToTensorV2.

The ops are described in ``conf/augment/{train,eval}.yaml``; masks are always resampled
nearest-neighbour and padded / rotated in with 255 (ignore).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate

from surgseg.datasets import SegmentationSet


def instantiate_ops(ops: Sequence[Mapping[str, Any]]) -> list[A.BasicTransform]:
    """Build albumentations transforms from plain dicts with a ``_target_`` each."""
    return [instantiate(op) for op in ops]


def build_transform(
    ops: Sequence[A.BasicTransform],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int | None = None,
) -> A.Compose:
    """Compose ``ops`` with ImageNet-style normalization (mean/std of 0..1 pixels) and the
    HWC → CHW tensor conversion. ``seed`` seeds the Compose's own random generator."""
    return A.Compose(
        [*ops, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()],
        seed=seed,
    )


class TransformedSet(torch.utils.data.Dataset):
    """A dataset with a transform applied: items become (image float32 3×H×W, mask int64 H×W).

    Keeps ``video_of`` / ``name_of`` of the wrapped dataset.
    """

    def __init__(self, dataset: SegmentationSet, transform: A.Compose):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        out = self.transform(image=image, mask=np.ascontiguousarray(mask))
        return out["image"], out["mask"].long()

    def video_of(self, i: int) -> str:
        return self.dataset.video_of(i)

    def name_of(self, i: int) -> str:
        return self.dataset.name_of(i)
