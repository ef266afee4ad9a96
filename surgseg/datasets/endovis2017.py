"""EndoVis 2017 Robotic Instrument Segmentation, training and test layouts as distributed.

Training (``EndoVis2017``), videos 1–8, frames 000–224::

    instrument_dataset_N/left_frames/frame000.png            1920×1080 RGB
    instrument_dataset_N/ground_truth/<Tool>_labels/frame000.png

Each ``<Tool>_labels`` folder holds one grey mask per frame for one instrument, with the part
values 10/20/30 = shaft/wrist/clasper. The instrument type comes from the folder name
(``Maryland_Bipolar_Forceps_labels`` → bipolar_forceps, ``Other_labels`` → other…).

Labels per task, as in the community's preparation of the data:
- binary: any part of a tool → 1;
- parts: 10/20/30 → SHAFT/WRIST/CLASPER;
- types: every pixel > 0 of a folder → its type index (1..7, ``INSTRUMENT_TYPES`` order).
"Other" (e.g. the ultrasound probe) is background in binary and parts and class 7 in types.
Folders are applied in sorted order, so a later folder wins where two instruments overlap.

Test (``EndoVis2017Test``): frames 225–299 of videos 1–8 and all 300 frames (000–299) of
videos 9 and 10, with the labels released after the challenge, one folder per task::

    instrument_dataset_N/left_frames/frame225.png                    (the test frame archives)
    instrument_dataset_N/gt/BinarySegmentation/frame225.png          0 / 255
    instrument_dataset_N/gt/PartsSegmentation/frame225.png           0 / 10 / 20 / 30 (/ 40)
    instrument_dataset_N/gt/TypeSegmentation/frame225.png            0..7 (``INSTRUMENT_TYPES``)

The frames and the labels come in separate archives (``instrument_1_4_testing``,
``instrument_5_8_testing``, ``instrument_9_10_testing``; ``instrument_2017_test``), so each
video's ``left_frames`` and ``gt`` folders are looked for up to three levels below the root,
wherever the archives were unpacked. Parts value 40 (the "Other" probe) is background, as in
training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from surgseg.datasets import (
    ENDOVIS2017_CROP,
    Crop,
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
from surgseg.tasks import CLASPER, INSTRUMENT_TYPES, SHAFT, TASKS, WRIST

PART_VALUES = {10: SHAFT, 20: WRIST, 30: CLASPER}
OTHER = INSTRUMENT_TYPES.index("other") + 1
OTHER_PART = 40  # the "Other" instrument (e.g. the drop-in probe) in parts masks

# Label folders of the released test set, per task, and the values each may hold.
TEST_LABELS = {
    "binary": ("BinarySegmentation", (0, 255)),
    "parts": ("PartsSegmentation", (0, *PART_VALUES, OTHER_PART)),
    "types": ("TypeSegmentation", tuple(range(len(INSTRUMENT_TYPES) + 1))),
}
SEARCH_DEPTH = 3  # levels below the root where test video folders are looked for


def instrument_type(folder: str) -> int:
    """Type index (1..7) of a ground-truth folder name, matched by substring; e.g.
    ``Right_Large_Needle_Driver_labels`` → 3."""
    name = folder.lower()
    matches = [t for t, key in enumerate(INSTRUMENT_TYPES, start=1) if key in name]
    if len(matches) != 1:
        raise DatasetError(
            f"cannot tell the instrument type from folder name {folder!r}; "
            f"expected one of {list(INSTRUMENT_TYPES)} in it"
        )
    return matches[0]


def _crop(crop: bool | Crop | Mapping[str, int] | None) -> Crop | None:
    if crop is True:
        return ENDOVIS2017_CROP
    if crop is None or crop is False:
        return None
    return crop if isinstance(crop, Crop) else Crop(**crop)


class EndoVis2017(SegmentationSet):
    """The EndoVis 2017 training videos.

    Args:
        root: folder holding ``instrument_dataset_N`` folders.
        task: ``binary``, ``parts`` or ``types``.
        videos: video numbers or folder names; default all found. Folds and splits are
            chosen by ``build_dataset``.
        crop: True for the challenge's 1280×1024 crop at row 28, column 320; False for the
            full frame; or a ``Crop`` / mapping of its fields.
    """

    video_prefix = "instrument_dataset_"

    def __init__(
        self,
        root: str | Path,
        *,
        task: str,
        videos: Sequence[str | int] | None = None,
        crop: bool | Crop | Mapping[str, int] | None = True,
    ):
        self.root = Path(root)
        self.task = task
        self.class_names = TASKS[task]
        self.crop = _crop(crop)
        names = video_names(videos, self.video_prefix)
        if names is None:
            names = self.find_videos(self.root)
        self.items: list[tuple[str, str]] = []  # (video, frame name)
        self.tools: dict[str, list[tuple[Path, int]]] = {}  # video → (mask folder, type)
        for video in names:
            folder = self.root / video
            frames = folder / "left_frames"
            if not frames.is_dir():
                raise DatasetError("no left_frames folder", frames)
            gt = folder / "ground_truth"
            if not gt.is_dir():
                raise DatasetError("no ground_truth folder", gt)
            tools = []
            for d in sorted(p for p in gt.iterdir() if p.is_dir()):
                try:
                    tools.append((d, instrument_type(d.name)))
                except DatasetError as exc:
                    raise DatasetError(str(exc), d) from None
            self.tools[video] = tools
            self.items += [(video, p.name) for p in sorted(frames.glob("*.png"))]

    def __len__(self) -> int:
        return len(self.items)

    def video_of(self, i: int) -> str:
        return self.items[i][0]

    def name_of(self, i: int) -> str:
        return self.items[i][1]

    def _image_path(self, i: int) -> Path:
        video, name = self.items[i]
        return self.root / video / "left_frames" / name

    def _cut(self, image: np.ndarray, path: Path) -> np.ndarray:
        return image if self.crop is None else self.crop.apply(image, path)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._image_path(i)
        image = self._cut(read_image(path), path)
        video, name = self.items[i]
        label = np.zeros(image.shape[:2], np.uint8)
        for folder, kind in self.tools[video]:
            mask = self._cut(read_mask(folder / name), folder / name)
            if self.task == "types":
                label[mask > 0] = kind
            elif kind != OTHER:
                for value, part in PART_VALUES.items():
                    label[mask == value] = 1 if self.task == "binary" else part
        return np.ascontiguousarray(image), label

    def check(self, i: int) -> None:
        """The image's size from its header; every tool mask exists, has the image's size and
        (except Other) only the values 0/10/20/30."""
        path = self._image_path(i)
        size = image_size(path)
        if self.crop is not None:
            self.crop.check(size, path)
        video, name = self.items[i]
        for folder, kind in self.tools[video]:
            mask = read_mask(folder / name)
            check_size(size, mask, folder / name)
            if kind != OTHER:
                check_values(mask, [0, *PART_VALUES], folder / name)


def _find_video_folders(root: Path, sub: str) -> dict[str, Path]:
    """``{video name: folder}`` for each ``instrument_dataset_N`` folder holding ``sub``, up
    to ``SEARCH_DEPTH`` levels below ``root``; DatasetError if a video is found twice."""
    found: dict[str, Path] = {}
    for depth in range(SEARCH_DEPTH):
        pattern = "/".join(["*"] * depth + [f"{EndoVis2017.video_prefix}*", sub])
        for path in sorted(root.glob(pattern)):
            if not path.is_dir():
                continue
            folder = path.parent
            if found.setdefault(folder.name, folder) != folder:
                raise DatasetError(
                    f"{folder.name}/{sub} found twice: in {found[folder.name]} and in {folder}",
                    root,
                )
    return found


class EndoVis2017Test(SegmentationSet):
    """The EndoVis 2017 test videos with their released labels (see the module docstring).

    Args:
        root: the folder the test archives were unpacked into.
        task: ``binary``, ``parts`` or ``types``; picks the label folder.
        videos: video numbers or folder names; default all found (1–10).
        crop: as for ``EndoVis2017``.
    """

    video_prefix = "instrument_dataset_"

    def __init__(
        self,
        root: str | Path,
        *,
        task: str,
        videos: Sequence[str | int] | None = None,
        crop: bool | Crop | Mapping[str, int] | None = True,
    ):
        self.root = Path(root)
        self.task = task
        self.class_names = TASKS[task]
        self.crop = _crop(crop)
        folder_name, self.values = TEST_LABELS[task]
        frames = _find_video_folders(self.root, "left_frames")
        labels = _find_video_folders(self.root, "gt")
        names = video_names(videos, self.video_prefix)
        if names is None:
            names = natural_sorted(frames)
        self.items: list[tuple[str, str]] = []  # (video, frame name)
        self.frames: dict[str, Path] = {}  # video → its left_frames folder
        self.labels: dict[str, Path] = {}  # video → its label folder for the task
        for video in names:
            if video not in frames:
                raise DatasetError(f"no {video}/left_frames in this folder or below it", self.root)
            if video not in labels:
                raise DatasetError(
                    f"no {video}/gt (the released test labels) in this folder or below it",
                    self.root,
                )
            self.frames[video] = frames[video] / "left_frames"
            self.labels[video] = labels[video] / "gt" / folder_name
            if not self.labels[video].is_dir():
                raise DatasetError(f"no {folder_name} labels for task {task}", self.labels[video])
            self.items += [(video, p.name) for p in sorted(self.frames[video].glob("*.png"))]

    @classmethod
    def find_videos(cls, root: Path) -> list[str]:
        return natural_sorted(_find_video_folders(root, "left_frames"))

    def __len__(self) -> int:
        return len(self.items)

    def video_of(self, i: int) -> str:
        return self.items[i][0]

    def name_of(self, i: int) -> str:
        return self.items[i][1]

    def _paths(self, i: int) -> tuple[Path, Path]:
        video, name = self.items[i]
        return self.frames[video] / name, self.labels[video] / name

    def _cut(self, image: np.ndarray, path: Path) -> np.ndarray:
        return image if self.crop is None else self.crop.apply(image, path)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._paths(i)
        image = self._cut(read_image(image_path), image_path)
        mask = self._cut(read_mask(label_path), label_path)
        if self.task == "binary":
            label = (mask > 0).astype(np.uint8)
        elif self.task == "parts":
            label = np.zeros_like(mask)
            for value, part in PART_VALUES.items():
                label[mask == value] = part
        else:
            label = mask
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def check(self, i: int) -> None:
        """The image's size from its header; the label exists, has the image's size and only
        the values of the task's label folder."""
        image_path, label_path = self._paths(i)
        size = image_size(image_path)
        if self.crop is not None:
            self.crop.check(size, image_path)
        mask = read_mask(label_path)
        check_size(size, mask, label_path)
        check_values(mask, self.values, label_path)
