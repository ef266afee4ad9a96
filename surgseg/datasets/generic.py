"""Any dataset laid out as two folders with matching file stems::

    images/<stem>.png|jpg|…     RGB frames
    masks/<stem>.png            8-bit label images (grey levels or palette indices)

A ``class_map`` turns mask values into class indices (or class names of the task); 255 stays
ignore. Mask values that are neither in the map nor 255 are an error. Sub-folders of
``images/`` are videos (``images/<video>/<stem>.png`` with ``masks/<video>/<stem>.png``);
files directly in ``images/`` belong to the video named after the dataset folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from surgseg.datasets import (
    SegmentationSet,
    check_size,
    check_values,
    image_size,
    natural_sorted,
    read_image,
    read_mask,
    video_names,
)
from surgseg.errors import DatasetError
from surgseg.tasks import IGNORE_INDEX, TASKS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class GenericSet(SegmentationSet):
    """Images and masks in two folders.

    Args:
        root: folder holding ``images/`` and ``masks/``.
        task: the task whose classes the map names.
        class_map: {mask value: class index or class name}; default identity for the task's
            class indices.
        videos: names of sub-folders of ``images/`` to use; default all.
        mask_suffix: suffix of the mask files.
    """

    @classmethod
    def find_videos(cls, root: Path) -> list[str]:
        return natural_sorted({video for video, _ in _find_images(root)})

    def __init__(
        self,
        root: str | Path,
        *,
        task: str,
        class_map: Mapping[int, int | str] | None = None,
        videos: Sequence[str | int] | None = None,
        mask_suffix: str = ".png",
    ):
        self.root = Path(root)
        self.task = task
        self.class_names = TASKS[task]
        if class_map is None:
            class_map = {i: i for i in range(self.num_classes)}
        self.lut = np.full(256, IGNORE_INDEX, np.uint8)
        for value, cls in class_map.items():
            self.lut[_mask_value(value, self.root)] = self._class_index(cls)
        self.values = sorted({*map(int, class_map), IGNORE_INDEX})
        self.mask_suffix = mask_suffix
        images, masks = self.root / "images", self.root / "masks"
        for folder in (images, masks):
            if not folder.is_dir():
                raise DatasetError(f"no {folder.name}/ folder", folder)
        items = _find_images(self.root)
        names = video_names(videos, "")
        if names is not None:
            missing = sorted(set(names) - {video for video, _ in items})
            if missing:
                raise DatasetError(f"no images of videos {missing}", images)
            items = [(video, rel) for video, rel in items if video in names]
        self.items = items

    def _class_index(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if cls not in self.class_names:
                raise DatasetError(
                    f"class_map names unknown class {cls!r}; task {self.task!r} has "
                    f"{list(self.class_names)}",
                    self.root,
                )
            return self.class_names.index(cls)
        if not 0 <= cls < self.num_classes and cls != IGNORE_INDEX:
            raise DatasetError(
                f"class_map maps to {cls}, task {self.task!r} has {self.num_classes} classes",
                self.root,
            )
        return cls

    def __len__(self) -> int:
        return len(self.items)

    def video_of(self, i: int) -> str:
        return self.items[i][0]

    def name_of(self, i: int) -> str:
        return self.items[i][1].name

    def _paths(self, i: int) -> tuple[Path, Path]:
        rel = self.items[i][1]
        mask = (self.root / "masks" / rel).with_suffix(self.mask_suffix)
        return self.root / "images" / rel, mask

    def _raw_mask(self, i: int) -> tuple[np.ndarray, Path]:
        path = self._paths(i)[1]
        mask = read_mask(path)
        check_values(mask, self.values, path)
        return mask, path

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self._paths(i)[0])
        mask, path = self._raw_mask(i)
        check_size(image.shape[:2], mask, path)
        return image, self.lut[mask]

    def check(self, i: int) -> None:
        """The image's size from its header; the mask exists, has that size and only mapped
        values."""
        mask, path = self._raw_mask(i)
        check_size(image_size(self._paths(i)[0]), mask, path)


def _find_images(root: Path) -> list[tuple[str, Path]]:
    """(video, path relative to images/) of every image file, sorted."""
    items = []
    for path in natural_sorted(str(p) for p in (root / "images").rglob("*")):
        rel = Path(path).relative_to(root / "images")
        if rel.suffix.lower() in IMAGE_SUFFIXES and Path(path).is_file():
            items.append((rel.parts[0] if len(rel.parts) > 1 else root.name, rel))
    return items


def _mask_value(value: int | str, root: Path) -> int:
    try:
        value = int(value)
    except ValueError:
        raise DatasetError(f"class_map key {value!r} is not a mask value", root) from None
    if not 0 <= value <= 255:
        raise DatasetError(f"class_map key {value} is not an 8-bit mask value", root)
    return value
