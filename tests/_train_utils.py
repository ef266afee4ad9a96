"""Tiny in-memory segmentation data for the trainer tests: noisy frames with a bright
rectangle labelled 1, a strip of ignore pixels, and albumentations flips."""

from __future__ import annotations

import functools

import albumentations as A
import numpy as np
import torch

from surgseg.augment import TransformedSet, build_transform
from surgseg.checkpoint import CheckpointMeta
from surgseg.tasks import class_names

SIZE = (64, 80)


class Rectangles(torch.utils.data.Dataset):
    """``n`` frames of ``SIZE``; optionally raises KeyboardInterrupt on the ``interrupt_at``-th
    item read (counting from 0), like a Ctrl-C while loading data."""

    def __init__(self, n: int, *, seed: int = 0, interrupt_at: int | None = None):
        rng = np.random.default_rng(seed)
        h, w = SIZE
        self.images = rng.integers(0, 90, (n, h, w, 3), dtype=np.uint8)
        self.masks = np.zeros((n, h, w), np.uint8)
        for image, mask in zip(self.images, self.masks, strict=True):
            top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[top : top + h // 3, left : left + w // 3] = 1
            image[mask == 1] += 140
            mask[-2:, :] = 255
        self.interrupt_at = interrupt_at
        self.reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.reads == self.interrupt_at:
            raise KeyboardInterrupt
        self.reads += 1
        return self.images[i], self.masks[i]


def rectangles(n: int, *, augment: bool = True, seed: int = 0, **kwargs) -> TransformedSet:
    meta = tiny_meta()
    ops = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if augment else []
    transform = build_transform(ops, mean=meta.mean, std=meta.std, seed=seed)
    return TransformedSet(Rectangles(n, seed=seed, **kwargs), transform)


def tiny_meta() -> CheckpointMeta:
    return CheckpointMeta(
        task="binary",
        class_names=list(class_names("binary")),
        # Output stride 32 keeps the CPU tests fast; the trainer does not depend on it.
        model={"depth": 18, "output_stride": 32, "head": "fcn", "aux_loss": True},
        input_size=SIZE,
    )


def train_kwargs(**overrides) -> dict:
    """Arguments of a fast, deterministic ``train`` call on the CPU."""
    kwargs = dict(
        meta=tiny_meta(),
        train_set=rectangles(8),
        val_set=rectangles(4, augment=False, seed=1),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        epochs=4,
        batch_size=4,
        warmup_steps=2,
        grad_clip=5.0,
        dice_weight=0.5,
        seed=3,
        progress=False,
    )
    kwargs.update(overrides)
    return kwargs


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process of a gloo data-parallel run (``torch.multiprocessing.spawn`` target): joins
    the group the way ``torchrun`` describes it, trains, and saves its own final weights."""
    import os

    from surgseg.distributed import close_distributed, init_distributed
    from surgseg.train import train

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    device = init_distributed("cpu")
    try:
        result = train(**train_kwargs(out_dir=f"{out}/run", epochs=2, device=device))
        torch.save(
            {"state_dict": result["model"].state_dict(), "val_miou": result["val_miou"]},
            f"{out}/rank{rank}.pt",
        )
    finally:
        close_distributed()
