"""Augmentation presets: every configured op builds, masks stay nearest-neighbour, 255
survives, and image and mask stay aligned."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from surgseg.apps import CONF_DIR
from surgseg.augment import TransformedSet, build_transform, instantiate_ops
from surgseg.checkpoint import IMAGENET_MEAN, IMAGENET_STD

SIZE = (48, 64)
# Colour of each label; 255 (ignore) is black, like the image fill.
PALETTE = np.random.default_rng(0).integers(30, 256, (256, 3)).astype(np.uint8)
PALETTE[255] = 0


def _ops(name: str) -> list[A.BasicTransform]:
    cfg = OmegaConf.merge(
        {"input_size": list(SIZE), "crop_size": list(SIZE), "crop_scale": [0.25, 1.0]},
        {"augment": OmegaConf.load(Path(CONF_DIR) / f"augment/{name}.yaml")},
    )
    return instantiate_ops(OmegaConf.to_container(cfg, resolve=True)["augment"]["ops"])


def _sample(h: int = 90, w: int = 120) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 20:70] = 1
    mask[50:80, 30:60] = 2
    mask[20:60, 80:110] = 3
    mask[:, :6] = 255
    return PALETTE[mask], mask


class _Pairs:
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


@pytest.mark.parametrize("name", ["train", "eval"])
def test_presets_build_and_output_tensors(name: str):
    ops = _ops(name)
    assert ops and all(isinstance(op, A.BasicTransform) for op in ops)
    transform = build_transform(ops, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0)
    image, mask = TransformedSet(_Pairs([_sample()]), transform)[0]
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_masks_resampled_nearest_and_aligned_with_image():
    """With the images also resampled nearest, image == PALETTE[mask] must hold exactly after
    every spatial op of the training preset, whatever the draw."""
    spatial = [op for op in _ops("train") if isinstance(op, A.DualTransform)]
    assert {type(op).__name__ for op in spatial} >= {
        "RandomResizedCrop",
        "Rotate",
        "HorizontalFlip",
    }
    for op in spatial:
        if hasattr(op, "interpolation"):
            op.interpolation = cv2.INTER_NEAREST
        op.p = 1.0 if isinstance(op, A.Rotate) else op.p
    transform = A.Compose(spatial, seed=1)
    image, mask = _sample()
    saw_fill = False
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert out["mask"].shape == SIZE
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 3, 255}
        np.testing.assert_array_equal(out["image"], PALETTE[out["mask"]])
        saw_fill |= bool((out["mask"] == 255).any())
    assert saw_fill


def test_eval_preset_keeps_ignore_and_normalizes():
    transform = build_transform(_ops("eval"), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    image, mask = _sample(96, 128)
    out = transform(image=image, mask=mask)
    assert set(np.unique(out["mask"].numpy()).tolist()) == {0, 1, 2, 3, 255}
    assert (out["mask"][:, :2] == 255).all()  # the ignore band, halved in width
    expected = cv2.resize(image, SIZE[::-1], interpolation=cv2.INTER_LINEAR) / 255.0
    expected = (expected - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_seeded_transform_repeats():
    image, mask = _sample()
    a = build_transform(_ops("train"), mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=3)
    b = build_transform(_ops("train"), mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=3)
    for _ in range(3):
        x, y = a(image=image, mask=mask), b(image=image, mask=mask)
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
