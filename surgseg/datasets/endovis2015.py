"""EndoVis 2015 robotic instrument segmentation, as distributed::

    DatasetN/Video.avi
    DatasetN/Segmentation.avi                        one mask video for all instruments,
    DatasetN/Left_Instrument_Segmentation.avi        and/or one per instrument; all mask
    DatasetN/Right_Instrument_Segmentation.avi       videos present are combined by max

Masks are videos whose grey levels 0/70/160 mean background/manipulator/shaft. Lossy coding
blurs those levels, so every pixel is snapped to the nearest level (thresholds 35 and 115).

Labels per task: binary: manipulator or shaft → 1; parts: shaft → SHAFT, manipulator →
CLASPER (2015 has no wrist label; its "manipulator" is the jaw end of the tool). There are
no instrument types in 2015.

All frames are decoded once, at construction, and kept in memory (about 1.7 MB per 720×576
frame with its label, so ~1.9 GB for a 1100-frame video); ``step`` keeps every n-th frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from surgseg.datasets import InMemorySet, video_names
from surgseg.decode import read_frames
from surgseg.errors import DatasetError
from surgseg.tasks import CLASPER, SHAFT, TASKS

LEVELS = (0, 70, 160)  # background, manipulator, shaft
_NEAREST_LEVEL = np.array(
    [min(LEVELS, key=lambda level: abs(v - level)) for v in range(256)], np.uint8
)
_LABELS = {"binary": {70: 1, 160: 1}, "parts": {70: CLASPER, 160: SHAFT}}
MASK_VIDEOS = (
    "Segmentation.avi",
    "Left_Instrument_Segmentation.avi",
    "Right_Instrument_Segmentation.avi",
)


def snap_levels(gray: np.ndarray) -> np.ndarray:
    """Snap grey values to the nearest of ``LEVELS``."""
    return _NEAREST_LEVEL[gray]


def _levels(path: Path, step: int) -> list[np.ndarray]:
    return [
        snap_levels(cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY))
        for f in read_frames(path)
        if f.index % step == 0
    ]


class EndoVis2015(InMemorySet):
    """The EndoVis 2015 robotic videos, decoded into memory.

    Args:
        root: folder holding ``DatasetN`` folders.
        task: ``binary`` or ``parts``.
        videos: dataset numbers or folder names; default all ``Dataset*`` folders.
        step: keep every ``step``-th frame (1 = all).
    """

    video_prefix = "Dataset"

    def __init__(
        self,
        root: str | Path,
        *,
        task: str,
        videos: Sequence[str | int] | None = None,
        step: int = 1,
    ):
        self.root = Path(root)
        if task not in _LABELS:
            raise DatasetError(f"EndoVis 2015 has labels for {list(_LABELS)}, not {task!r}", root)
        if step < 1:
            raise DatasetError(f"step must be >= 1, got {step}", root)
        self.task = task
        self.class_names = TASKS[task]
        lut = np.zeros(256, np.uint8)
        for level, label in _LABELS[task].items():
            lut[level] = label
        names = video_names(videos, self.video_prefix)
        if names is None:
            names = self.find_videos(self.root)
        super().__init__()
        for video in names:
            folder = self.root / video
            if not folder.is_dir():
                raise DatasetError("video folder not found", folder)
            frames = [
                (f.index, f.image) for f in read_frames(folder / "Video.avi") if f.index % step == 0
            ]
            mask_videos = [folder / n for n in MASK_VIDEOS if (folder / n).is_file()]
            if not mask_videos:
                raise DatasetError(f"no mask video (one of {list(MASK_VIDEOS)})", folder)
            levels = None
            for path in mask_videos:
                snapped = _levels(path, step)
                if len(snapped) != len(frames):
                    raise DatasetError(
                        f"{len(snapped)} mask frames for {len(frames)} video frames", path
                    )
                if snapped[0].shape != frames[0][1].shape[:2]:
                    raise DatasetError("mask video and Video.avi differ in frame size", path)
                levels = snapped if levels is None else list(map(np.maximum, levels, snapped))
            self.images += [image for _, image in frames]
            self.masks += [lut[m] for m in levels]
            self.items += [(video, index) for index, _ in frames]
