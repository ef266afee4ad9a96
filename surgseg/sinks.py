"""Output sinks of a run: label masks (PNG files or one FFV1 video), pose cues (JSON lines)
and an overlay video.

Every sink writes into an explicit output path. Files that are written whole appear under
their final name only once complete (``surgseg.atomic``); ``cues.jsonl`` is streamed under
its final name so that a consumer can tail it, and the run's ``run.json``, written last,
marks the run as complete. All sinks are context managers: leaving the block normally
closes them, an exception aborts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from surgseg.atomic import Output, atomic_path
from surgseg.encode import VideoWriter
from surgseg.errors import ConfigError

MASK_FORMATS = ("png", "ffv1")


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    return np.ascontiguousarray(mask)


class PngMaskWriter(Output):
    """One lossless 8-bit grayscale PNG per frame, ``<out_dir>/masks/000123.png`` (frame
    index, 6 digits), holding the class index of each pixel. Each file is written atomically.
    """

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "masks"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, pts: int | None, mask: np.ndarray) -> None:
        """Write the mask of frame ``index`` (``pts`` is not stored)."""
        mask = _check_mask(mask)
        with atomic_path(self.dir / f"{index:06d}.png") as tmp:
            if not cv2.imwrite(str(tmp), mask):
                raise OSError(f"{tmp}: cv2.imwrite failed")


class Ffv1MaskWriter(Output):
    """All masks in one lossless gray8 FFV1 Matroska video, one mask frame per input frame.

    ``pts`` are given in the input stream's ``time_base``. Matroska stores times in
    milliseconds, so a mask's timestamp equals its frame's time rounded to the millisecond.
    Masks must be written for consecutive frame indices starting at 0 (the index of a mask is
    its position in the file). The file appears under ``path`` only when closed without error.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float,
    ):
        self.path = Path(path)
        self._fps = fps
        self._time_base = time_base
        self._writer = VideoWriter(
            self.path, width=width, height=height, fps=fps, time_base=time_base, codec="ffv1"
        )

    def write(self, index: int, pts: int | None, mask: np.ndarray) -> None:
        """Encode the mask of frame ``index`` at ``pts`` (from ``index / fps`` when None)."""
        if index != self._writer.frames_written:
            raise ValueError(f"expected frame index {self._writer.frames_written}, got {index}")
        if pts is None:
            pts = round(Fraction(index) / Fraction(self._fps) / self._time_base)
        self._writer.write(_check_mask(mask), pts)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """Drop the partial file."""
        self._writer.abort()


def open_mask_writer(
    fmt: str,
    out_dir: str | Path,
    *,
    width: int,
    height: int,
    time_base: Fraction,
    fps: float,
) -> PngMaskWriter | Ffv1MaskWriter:
    """``PngMaskWriter(out_dir)`` for "png", ``Ffv1MaskWriter(out_dir / "masks.mkv")`` for
    "ffv1"."""
    if fmt == "png":
        return PngMaskWriter(out_dir)
    if fmt == "ffv1":
        return Ffv1MaskWriter(
            Path(out_dir) / "masks.mkv", width=width, height=height, time_base=time_base, fps=fps
        )
    raise ConfigError(f"mask format must be one of {MASK_FORMATS}, got {fmt!r}")


def read_masks(path: str | Path) -> Iterator[tuple[int, float | None, np.ndarray]]:
    """Yield ``(index, time_s, mask)`` from a ``masks/`` folder of PNGs (``time_s`` is None:
    see ``cues.jsonl``) or from a ``masks.mkv`` FFV1 video, in index order."""
    path = Path(path)
    if path.is_dir():
        for file in sorted(path.glob("[0-9]*.png")):
            yield int(file.stem), None, cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        return
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            yield index, float(frame.pts * stream.time_base), frame.to_ndarray(format="gray")


def _builtin(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class CuesWriter(Output):
    """``cues.jsonl``: one JSON object per frame (``index``, ``pts``, ``time_s``,
    ``instruments``), flushed line by line so that a consumer can tail it.

    Being streamed, the file lives under its final name while it grows; ``run.json``,
    written last, is what marks a run as complete.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line and flush it."""
        self._file.write(json.dumps(record, default=_builtin) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def draw_overlay(
    image_rgb: np.ndarray,
    mask: np.ndarray,
    instruments: list[dict[str, Any]],
    palette: np.ndarray,
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw a segmentation and the instruments' pose cues over an RGB frame (a new array).

    Class colours (``palette[class]``, RGB) are blended over non-background pixels and each
    class region is outlined. For each instrument dict (``id``, ``entry`` [x, y], ``tip``
    [x, y], ``axis``, ``entry_on_border``) the axis is drawn from entry to tip, with a circle
    at the tip, a marker at the entry (a triangle when the entry is on the view border, a
    cross otherwise) and the id next to the tip. Line widths scale with the frame size.
    """
    palette = np.asarray(palette, np.uint8)
    colours = palette[mask]
    blended = cv2.addWeighted(image_rgb, 1 - alpha, colours, alpha, 0)
    out = np.where((mask > 0)[..., None], blended, image_rgb)
    height, width = mask.shape
    thick = max(1, round(min(height, width) / 240))
    for label in np.unique(mask[mask > 0]):
        contours, _ = cv2.findContours(
            (mask == label).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        colour = tuple(int(c) for c in palette[label])
        cv2.drawContours(out, contours, -1, colour, thick, cv2.LINE_AA)
    white, yellow = (255, 255, 255), (255, 220, 0)
    for inst in instruments:
        entry = tuple(round(v) for v in inst["entry"])
        tip = tuple(round(v) for v in inst["tip"])
        cv2.line(out, entry, tip, yellow, thick + 1, cv2.LINE_AA)
        cv2.circle(out, tip, 3 * thick + 2, white, thick + 1, cv2.LINE_AA)
        marker = cv2.MARKER_TRIANGLE_UP if inst["entry_on_border"] else cv2.MARKER_CROSS
        cv2.drawMarker(out, entry, yellow, marker, 6 * thick + 4, thick + 1, cv2.LINE_AA)
        if inst.get("id") is not None:
            org = (tip[0] + 4 * thick + 2, tip[1] - 4 * thick - 2)
            font_scale = 0.35 * thick + 0.05
            for colour, width in (((0, 0, 0), thick + 2), (white, thick)):  # outlined text
                cv2.putText(
                    out, str(inst["id"]), org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour,
                    width, cv2.LINE_AA,
                )  # fmt: skip
    return out


class OverlayWriter(Output):
    """``overlay.mp4``: each frame with ``draw_overlay`` applied, encoded as H.264 yuv420p.

    Odd frame sizes are padded by one edge-replicated row/column to even. ``pts`` are in the
    input stream's ``time_base``. The file appears under ``path`` only when closed without
    error.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float,
        palette: np.ndarray,
    ):
        self.path = Path(path)
        self.palette = np.asarray(palette, np.uint8)
        self._pad = (height % 2, width % 2)
        self._writer = VideoWriter(
            self.path,
            width=width + width % 2,
            height=height + height % 2,
            fps=fps,
            time_base=time_base,
            codec="libx264",
        )

    def write(
        self,
        image_rgb: np.ndarray,
        mask: np.ndarray,
        instruments: list[dict[str, Any]],
        pts: int | None = None,
    ) -> None:
        """Draw the overlay on ``image_rgb`` and encode it at ``pts``."""
        image = draw_overlay(image_rgb, mask, instruments, self.palette)
        if any(self._pad):
            bottom, right = self._pad
            image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
        self._writer.write(image, pts)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """Drop the partial file."""
        self._writer.abort()
