"""Tiny fake copies of each dataset layout on disk, with labels at known places."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from surgseg.datasets import Crop
from surgseg.encode import VideoWriter

# A 16×24 crop at (2, 4) of 20×32 frames: the EndoVis 2017 geometry in miniature.
SMALL_CROP = Crop(top=2, left=4, height=16, width=24, full_height=20, full_width=32)

# EndoVis 2017 tool masks: folder → [(rows, cols, value)] in crop coordinates.
TOOLS_2017 = {
    "Left_Prograsp_Forceps_labels": [
        (slice(0, 4), slice(0, 6), 10),
        (slice(4, 6), slice(0, 6), 20),
        (slice(6, 8), slice(0, 6), 30),
    ],
    "Maryland_Bipolar_Forceps_labels": [(slice(10, 14), slice(10, 16), 10)],
    "Other_labels": [(slice(0, 4), slice(18, 24), 40)],
}


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image whose every pixel tells its position (compresses well in PNG)."""
    r, c = np.mgrid[:height, :width]
    return np.stack([(r + seed) % 256, c % 256, (r // 256 * 16 + c // 256 + 7 * seed) % 256], -1)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB or grey uint8 image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image.astype(np.uint8))


def make_endovis2017(
    root: Path, *, videos: Sequence[int] = (1, 2), frames: int = 2, crop: Crop = SMALL_CROP
) -> Path:
    """``instrument_dataset_N/{left_frames,ground_truth/<Tool>_labels}/frameXXX.png`` with the
    masks of ``TOOLS_2017`` placed inside ``crop``, and stray tool pixels outside it."""
    for v in videos:
        folder = root / f"instrument_dataset_{v}"
        for f in range(frames):
            name = f"frame{f:03d}.png"
            write_png(
                folder / "left_frames" / name, pattern(crop.full_height, crop.full_width, v + f)
            )
            for tool, regions in TOOLS_2017.items():
                mask = np.zeros((crop.height, crop.width), np.uint8)
                for rows, cols, value in regions:
                    mask[rows, cols] = value
                full = crop.undo(mask)
                full[0, 0] = 10  # outside the crop: must be cut away
                write_png(folder / "ground_truth" / tool / name, full)
    return root


# The released EndoVis 2017 test labels: one folder per task (TEST_GT) and the value each
# TOOLS_2017 folder takes in it (binary leaves "Other" out, as the training labels do).
TEST_GT = ("BinarySegmentation", "PartsSegmentation", "TypeSegmentation")
TEST_TYPES = {"Left_Prograsp_Forceps_labels": 2, "Maryland_Bipolar_Forceps_labels": 1,
              "Other_labels": 7}  # fmt: skip


def archive_of(video: int) -> str:
    """The test frame archive a video comes in."""
    return {1: "instrument_1_4_testing", 5: "instrument_5_8_testing",
            9: "instrument_9_10_testing"}[1 if video <= 4 else 5 if video <= 8 else 9]  # fmt: skip


def ev17_test_frame_names(video: int, frames: int) -> list[str]:
    """Test frames are frame225… for videos 1–8 (after their 225 training frames), frame000…
    for videos 9 and 10."""
    first = 225 if video <= 8 else 0
    return [f"frame{first + f:03d}.png" for f in range(frames)]


def write_ev17_test_frame(
    root: Path, video: int, name: str, image: np.ndarray, labels: dict[str, np.ndarray]
) -> None:
    """One frame of the test layout as released: the image in its frame archive's folder,
    the labels (``{TEST_GT folder: mask}``) under ``instrument_2017_test/instrument_2017_test``."""
    folder = f"instrument_dataset_{video}"
    write_png(root / archive_of(video) / folder / "left_frames" / name, image)
    gt = root / "instrument_2017_test" / "instrument_2017_test" / folder / "gt"
    for task_folder, mask in labels.items():
        write_png(gt / task_folder / name, mask)


def make_endovis2017_test(
    root: Path,
    *,
    videos: Sequence[int] = (1, 9),
    frames: int = 2,
    crop: Crop = SMALL_CROP,
    empty: Sequence[int] = (),
) -> Path:
    """The EndoVis 2017 test layout as its archives unpack: frames of each video under its
    archive folder, labels of every task under ``instrument_2017_test``. The tools of
    ``TOOLS_2017`` sit inside ``crop``; frames numbered in ``empty`` (0-based) have none."""
    for v in videos:
        for f, name in enumerate(ev17_test_frame_names(v, frames)):
            binary = np.zeros((crop.height, crop.width), np.uint8)
            parts, types = binary.copy(), binary.copy()
            if f not in empty:
                for tool, regions in TOOLS_2017.items():
                    for rows, cols, value in regions:
                        parts[rows, cols] = value
                        types[rows, cols] = TEST_TYPES[tool]
                        if tool != "Other_labels":
                            binary[rows, cols] = 255
            labels = dict(zip(TEST_GT, (crop.undo(m) for m in (binary, parts, types)), strict=True))
            image = pattern(crop.full_height, crop.full_width, v + f)
            write_ev17_test_frame(root, v, name, image, labels)
    return root


# EndoVis 2015 mask levels at known blocks (rows, cols) of 48×64 frames.
SHAFT_BLOCK = (slice(8, 24), slice(8, 32))
MANIPULATOR_BLOCK = (slice(24, 40), slice(32, 56))


def make_endovis2015(
    root: Path,
    *,
    video: str = "Dataset1",
    frames: int = 4,
    codec: str = "mjpeg",
    left_right: bool = False,
    noise: int = 20,
) -> Path:
    """``DatasetN/Video.avi`` and lossy mask video(s) with grey levels 160 (shaft) and 70
    (manipulator) plus uniform noise of ±``noise`` on every level."""
    folder = root / video
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = 48, 64
    shaft = np.zeros((h, w), np.int16)
    shaft[SHAFT_BLOCK] = 160
    manip = np.zeros((h, w), np.int16)
    manip[MANIPULATOR_BLOCK] = 70
    masks = {"Left_Instrument_Segmentation.avi": shaft, "Right_Instrument_Segmentation.avi": manip}
    if not left_right:
        masks = {"Segmentation.avi": shaft + manip}
    with VideoWriter(folder / "Video.avi", width=w, height=h, codec=codec) as writer:
        for f in range(frames):
            writer.write(pattern(h, w, f).astype(np.uint8))
    for name, mask in masks.items():
        with VideoWriter(folder / name, width=w, height=h, codec=codec) as writer:
            for _ in range(frames):
                noisy = np.clip(mask + rng.integers(-noise, noise + 1, mask.shape), 0, 255)
                writer.write(np.repeat(noisy.astype(np.uint8)[..., None], 3, axis=2))
    return root


def make_generic(root: Path, *, values: Sequence[int] = (0, 100, 200, 255)) -> Path:
    """``images/<video>/<stem>.png`` + ``masks/<video>/<stem>.png``: two videos, two frames,
    mask quadrants holding ``values``."""
    for video in ("vid_a", "vid_b"):
        for stem in ("000", "001"):
            write_png(root / "images" / video / f"{stem}.png", pattern(12, 16))
            mask = np.zeros((12, 16), np.uint8)
            mask[:6, :8], mask[:6, 8:], mask[6:, :8], mask[6:, 8:] = values
            write_png(root / "masks" / video / f"{stem}.png", mask)
    return root
