"""Segmentation datasets: one class per on-disk layout behind one contract.

Every dataset yields ``(image H×W×3 uint8 RGB, mask H×W uint8 class index)`` with 255 = ignore,
and names the video and frame of each item so metrics can be split per video and predictions
written in a submission layout. ``build_dataset`` picks a layout by name; ``preflight`` checks
every item's files before a long run starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from PIL import Image

from surgseg.errors import DatasetError
from surgseg.tasks import IGNORE_INDEX, TASKS

# EndoVis 2017 cross-validation folds of the community (validation videos of each fold).
ENDOVIS2017_FOLDS = {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}

KINDS = ("endovis2015", "endovis2017", "generic", "synthetic")


@dataclass(frozen=True)
class Crop:
    """A fixed crop of every frame: ``height×width`` at (``top``, ``left``) of a
    ``full_height×full_width`` frame. Geometry between frame and crop lives only here."""

    top: int
    left: int
    height: int
    width: int
    full_height: int
    full_width: int

    def check(self, size: tuple[int, int], path: str | Path) -> None:
        """Raise DatasetError unless a frame of ``size`` (height, width) is the full size."""
        if tuple(size) != (self.full_height, self.full_width):
            raise DatasetError(
                f"frame is {size[1]}×{size[0]}, the crop expects "
                f"{self.full_width}×{self.full_height}",
                path,
            )

    def apply(self, image: np.ndarray, path: str | Path) -> np.ndarray:
        """Cut the crop out of a full frame read from ``path``."""
        self.check(image.shape[:2], path)
        return image[self.top : self.top + self.height, self.left : self.left + self.width]

    def undo(self, mask: np.ndarray) -> np.ndarray:
        """Place a mask of the crop's size into a zero frame of the full size."""
        out = np.zeros((self.full_height, self.full_width, *mask.shape[2:]), mask.dtype)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = mask
        return out


# 1280×1024 camera image inside the 1920×1080 EndoVis 2017 frames (challenge instructions).
ENDOVIS2017_CROP = Crop(
    top=28, left=320, height=1024, width=1280, full_height=1080, full_width=1920
)


class SegmentationSet(torch.utils.data.Dataset):
    """Base class of the dataset layouts.

    Attributes:
        root: the dataset folder.
        task: the task whose labels the masks hold.
        class_names: name of each class index.
        crop: the crop applied to every frame, or None.
    """

    root: Path
    task: str
    class_names: tuple[str, ...]
    crop: Crop | None = None
    video_prefix: ClassVar[str] = ""  # folder name of video number n: f"{prefix}{n}"

    @classmethod
    def find_videos(cls, root: Path) -> list[str]:
        """Names of the videos found under ``root``, in natural order: by default the folders
        whose names start with ``video_prefix``."""
        return natural_sorted(p.name for p in root.glob(f"{cls.video_prefix}*") if p.is_dir())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def video_of(self, i: int) -> str:
        """Video / sequence id of item ``i``."""
        raise NotImplementedError

    def name_of(self, i: int) -> str:
        """Frame file name of item ``i`` (e.g. ``frame005.png``)."""
        raise NotImplementedError

    def check(self, i: int) -> None:
        """Raise DatasetError naming the file if item ``i`` is unusable.

        The default loads the item and checks sizes and label values; layouts whose files can
        be checked more cheaply override it.
        """
        image, mask = self[i]
        where = self.root / self.video_of(i) / self.name_of(i)
        check_pair(image.shape[:2], mask, num_classes=self.num_classes, path=where)


def check_pair(
    image_size: tuple[int, int], mask: np.ndarray, *, num_classes: int, path: str | Path
) -> None:
    """Raise DatasetError if ``mask`` differs in size from the image or holds a value that is
    neither a class index nor 255."""
    check_size(image_size, mask, path)
    check_values(mask, [*range(num_classes), IGNORE_INDEX], path)


def check_size(image_size: tuple[int, int], mask: np.ndarray, path: str | Path) -> None:
    """Raise DatasetError if ``mask`` is not (height, width) ``image_size``."""
    if tuple(image_size) != mask.shape[:2]:
        raise DatasetError(
            f"mask is {mask.shape[1]}×{mask.shape[0]}, image is {image_size[1]}×{image_size[0]}",
            path,
        )


def check_values(mask: np.ndarray, allowed: Sequence[int], path: str | Path) -> None:
    """Raise DatasetError naming the values of the uint8 ``mask`` that are not ``allowed``."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = np.setdiff1d(present, allowed)
    if bad.size:
        raise DatasetError(f"mask values {bad.tolist()} are not allowed here", path)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB; DatasetError if missing or unreadable."""
    if not path.is_file():
        raise DatasetError("image not found", path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError("not a readable image", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Read a label image as H×W uint8 (palette PNGs give their indices, grey RGB its level);
    DatasetError if missing, unreadable or not single-valued per pixel."""
    if not path.is_file():
        raise DatasetError("mask not found", path)
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except OSError:
        raise DatasetError("not a readable mask image", path) from None
    if mask.ndim == 3:
        if mask.shape[2] == 4:
            mask = mask[..., :3]
        if not (mask == mask[..., :1]).all():
            raise DatasetError("mask is a colour image; labels must be grey levels", path)
        mask = mask[..., 0]
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.dtype != np.uint8:
        raise DatasetError(f"mask must be 8-bit, got {mask.dtype}", path)
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    if not path.is_file():
        raise DatasetError("image not found", path)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError:
        raise DatasetError("not a readable image", path) from None
    return height, width


def video_names(videos: Sequence[str | int] | None, prefix: str) -> list[str] | None:
    """Folder names of ``videos``: an int ``n`` means ``f"{prefix}{n}"``, a string is kept."""
    if videos is None:
        return None
    return [f"{prefix}{v}" if isinstance(v, int) else str(v) for v in videos]


class InMemorySet(SegmentationSet):
    """A layout decoded into memory at construction: ``images``, ``masks`` and ``items``
    ((video, frame index) per item) filled by the subclass."""

    frame_digits: ClassVar[int] = 4  # frame names are f"frame{index:0{frame_digits}d}.png"

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.items: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]

    def video_of(self, i: int) -> str:
        return self.items[i][0]

    def name_of(self, i: int) -> str:
        return f"frame{self.items[i][1]:0{self.frame_digits}d}.png"


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Sort names so that ``x2`` comes before ``x10``."""
    return sorted(
        names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    )


def _classes() -> dict[str, type[SegmentationSet]]:
    from surgseg.datasets.endovis2015 import EndoVis2015
    from surgseg.datasets.endovis2017 import EndoVis2017
    from surgseg.datasets.generic import GenericSet
    from surgseg.datasets.synthetic_clips import SyntheticClips

    return {
        "endovis2015": EndoVis2015,
        "endovis2017": EndoVis2017,
        "generic": GenericSet,
        "synthetic": SyntheticClips,
    }


def dataset_root(root: str | Path) -> Path:
    """``root`` (``~`` expanded) if it is a folder; else DatasetError naming it."""
    root = Path(root).expanduser()
    if root.is_file():
        raise DatasetError("is a file, not a dataset folder", root)
    if not root.is_dir():
        raise DatasetError("dataset folder not found", root)
    return root


def build_dataset(
    kind: str,
    *,
    root: str | Path,
    task: str,
    videos: Sequence[str | int] | None = None,
    split: str | None = None,
    val_videos: Sequence[str | int] | None = None,
    fold: int | None = None,
    **kwargs: Any,
) -> SegmentationSet:
    """Open the dataset layout ``kind`` (one of ``KINDS``) at ``root`` for ``task``.

    Args:
        videos: videos to use, by folder name or number (``3`` → ``instrument_dataset_3`` for
            EndoVis 2017, ``Dataset3`` for 2015); default all found.
        split: ``val`` (``val_videos``), ``train`` (``videos`` without ``val_videos``) or
            None: ``val`` when validation videos are named (``val_videos`` or ``fold``), else
            all of ``videos``; for EndoVis 2017 also ``test``: the released test set
            (``EndoVis2017Test``) at ``root``, ``videos`` of 1..10 (default all found).
        val_videos: the validation videos, for ``split``.
        fold: EndoVis 2017 only: ``val_videos = ENDOVIS2017_FOLDS[fold]`` among videos 1..8,
            and ``split`` defaults to ``val``; with ``split="test"`` the test frames of those
            videos (the ones the fold's model did not train on, as the challenge asks).
        kwargs: options of the layout's class (``crop`` for EndoVis 2017, ``class_map`` for
            generic, ``step`` for EndoVis 2015).
    """
    classes = _classes()
    if kind not in classes:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {list(KINDS)}", root)
    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r}; choose one of {sorted(TASKS)}", root)
    root = dataset_root(root)
    cls = classes[kind]
    if fold is not None:
        if kind != "endovis2017":
            raise DatasetError(f"fold is for endovis2017 only, not {kind}", root)
        if fold not in ENDOVIS2017_FOLDS:
            raise DatasetError(f"fold must be one of {list(ENDOVIS2017_FOLDS)}, got {fold}", root)
    if split == "test":
        if kind != "endovis2017":
            raise DatasetError(f"split 'test' is for endovis2017 only, not {kind}", root)
        from surgseg.datasets.endovis2017 import EndoVis2017Test

        held_out = None if fold is None else ENDOVIS2017_FOLDS[fold]
        names = video_names(videos if held_out is None else held_out, cls.video_prefix)
        return EndoVis2017Test(root, task=task, videos=names, **kwargs)
    if fold is not None:
        if val_videos is not None:
            raise DatasetError("give either fold or val_videos, not both", root)
        val_videos = ENDOVIS2017_FOLDS[fold]
        videos = range(1, 9) if videos is None else videos
    if val_videos is not None:
        split = split or "val"  # never the training videos by default
    names = video_names(videos, cls.video_prefix)
    if split is not None:
        if split not in ("train", "val"):
            raise DatasetError(f"split must be 'train', 'val' or 'test', got {split!r}", root)
        val = video_names(val_videos, cls.video_prefix)
        if val is None:
            raise DatasetError(f"split {split!r} needs val_videos (or fold)", root)
        if split == "val":
            names = val
        else:
            pool = cls.find_videos(root) if names is None else names
            names = [n for n in pool if n not in val]
    return cls(root, task=task, videos=names, **kwargs)


def preflight(dataset: SegmentationSet, *, workers: int = 4) -> None:
    """Check every item's files before training or evaluation; raise DatasetError naming the
    first bad file (in item order).

    Costs about one pass over the masks (each is decoded once to see its values; about 40 ms
    per 1920×1080 mask on one core); images are checked from their headers where the layout
    keeps them as files. ``workers`` threads share the work.
    """
    if len(dataset) == 0:
        raise DatasetError("no items in this split", dataset.root)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(dataset.check, range(len(dataset))):
            pass


__all__ = [
    "ENDOVIS2017_CROP",
    "ENDOVIS2017_FOLDS",
    "KINDS",
    "Crop",
    "SegmentationSet",
    "build_dataset",
    "check_pair",
    "check_size",
    "check_values",
    "natural_sorted",
    "preflight",
    "read_image",
    "read_mask",
]
