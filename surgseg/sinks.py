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
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from surgseg.atomic import Output, atomic_path, naming
from surgseg.encode import VideoWriter
from surgseg.errors import ConfigError
from surgseg.options import MASK_FORMATS, X264_PRESETS
from surgseg.tasks import TASKS

FFV1_SLICES, FFV1_THREADS = 4, 2  # 2 slice threads: half the wall time, same core-ms


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    return np.ascontiguousarray(mask)


# Label maps are long runs of few values: zlib's run-length strategy without a PNG row filter
# is both the fastest and the smallest setting for them (scripts/bench_frame_costs.py).
# OpenCV < 4.12 has no filter option and always uses the SUB filter (larger, slower files).
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
PNG_PARAMS += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def encode_png(mask: np.ndarray) -> bytes:
    """A label mask (2-D uint8) as the bytes of a lossless 8-bit grey PNG. Thread-safe."""
    ok, data = cv2.imencode(".png", _check_mask(mask), PNG_PARAMS)
    if not ok:
        raise ValueError(f"PNG encoding failed for a {mask.shape} mask")
    return data.tobytes()


class PngMaskWriter(Output):
    """One lossless 8-bit grayscale PNG per frame, ``<out_dir>/masks/000123.png`` (frame
    index, 6 digits), holding the class index of each pixel. Each file is written atomically.

    ``encode`` (stateless, thread-safe) and ``write_encoded`` split ``write`` so that masks
    can be encoded on worker threads.
    """

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "masks"
        self.dir.mkdir(parents=True, exist_ok=True)

    def encode(self, mask: np.ndarray) -> bytes:
        """The PNG bytes of ``mask`` (``encode_png``)."""
        return encode_png(mask)

    def write_encoded(self, index: int, pts: int | None, data: bytes) -> None:
        """Write the PNG bytes of frame ``index`` (``pts`` is not stored), atomically."""
        with atomic_path(self.dir / f"{index:06d}.png") as tmp:
            tmp.write_bytes(data)

    def write(self, index: int, pts: int | None, mask: np.ndarray) -> None:
        """Encode and write the mask of frame ``index``."""
        self.write_encoded(index, pts, self.encode(mask))


class Ffv1MaskWriter(Output):
    """All masks in one lossless gray8 FFV1 Matroska video, one mask frame per input frame.

    ``pts`` are given in the input stream's ``time_base``. Matroska stores times in
    milliseconds, so a mask's timestamp equals its frame's time rounded to the millisecond.
    Masks must be written for consecutive frame indices starting at 0 (the index of a mask is
    its position in the file). The file appears under ``path`` only when closed without error.

    Encoding is sequential (one encoder); ``slices`` cut each frame into independently coded
    slices that up to ``threads`` encoder threads share (0: FFmpeg's choice). ``encode`` only
    checks a mask, so that both mask writers split ``write`` the same way.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float,
        slices: int = FFV1_SLICES,
        threads: int = FFV1_THREADS,
    ):
        self.path = Path(path)
        self._fps = fps
        self._time_base = time_base
        self._writer = VideoWriter(
            self.path,
            width=width,
            height=height,
            fps=fps,
            time_base=time_base,
            codec="ffv1",
            options={"slices": str(slices)},
            threads=threads,
        )

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` checked (2-D uint8) and contiguous."""
        return _check_mask(mask)

    def write_encoded(self, index: int, pts: int | None, mask: np.ndarray) -> None:
        """Encode the mask of frame ``index`` at ``pts`` (from ``index / fps`` when None)."""
        if index != self._writer.frames_written:
            raise ValueError(f"expected frame index {self._writer.frames_written}, got {index}")
        if pts is None:
            pts = round(Fraction(index) / Fraction(self._fps) / self._time_base)
        with naming(self.path):
            self._writer.write(mask, pts)

    def write(self, index: int, pts: int | None, mask: np.ndarray) -> None:
        """Check and encode the mask of frame ``index``."""
        self.write_encoded(index, pts, self.encode(mask))

    def close(self) -> None:
        with naming(self.path):
            self._writer.close()

    def abort(self) -> None:
        """Drop the partial file."""
        with naming(self.path):
            self._writer.abort()


def open_mask_writer(
    fmt: str,
    out_dir: str | Path,
    *,
    width: int,
    height: int,
    time_base: Fraction,
    fps: float,
    threads: int = FFV1_THREADS,
) -> PngMaskWriter | Ffv1MaskWriter:
    """``PngMaskWriter(out_dir)`` for "png", ``Ffv1MaskWriter(out_dir / "masks.mkv")`` for
    "ffv1" (``threads``: its encoder's slice threads)."""
    if fmt == "png":
        return PngMaskWriter(out_dir)
    if fmt == "ffv1":
        return Ffv1MaskWriter(
            Path(out_dir) / "masks.mkv",
            width=width,
            height=height,
            time_base=time_base,
            fps=fps,
            threads=threads,
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
        self.write_line(json.dumps(record, default=_builtin))

    def write_line(self, line: str) -> None:
        """Append one JSON line (encoded by the caller) and flush it."""
        with naming(self.path):
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with naming(self.path):
            self._file.close()


_WHITE, _YELLOW, _BLACK = (255, 255, 255), (255, 220, 0), (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _thickness(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 240))


def _colour_lut(palette: np.ndarray) -> np.ndarray:
    """256×1×3 table for ``cv2.LUT``: ``palette`` rows, black for labels beyond it."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: len(palette), 0] = palette
    return lut


def draw_overlay(
    image_rgb: np.ndarray,
    mask: np.ndarray,
    instruments: list[dict[str, Any]],
    palette: np.ndarray,
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw a segmentation and the instruments' pose cues over an RGB frame (a new array).

    ``mask`` holds the class of each pixel (2-D uint8). Class colours (``palette[class]``,
    RGB; black for labels beyond the palette, such as 255) are blended over non-background
    pixels. Class boundaries are outlined in one pass for all classes: a pixel is on an
    outline when its neighbourhood holds more than one label, and takes the colour of the
    highest label there. For each instrument dict (``id``, ``entry`` [x, y], ``tip`` [x, y],
    ``entry_on_border``, ``tip_in_view``) the axis is drawn from entry to tip, with a circle at
    the tip when it is in view, a
    marker at the entry (a triangle when the entry is on the view border, a cross otherwise)
    and the id next to the tip. Line widths scale with the frame size. Thread-safe.
    """
    out = image_rgb.copy()
    _draw(out, _check_mask(mask), instruments, _colour_lut(np.asarray(palette, np.uint8)), alpha)
    return out


def _draw(out: np.ndarray, mask: np.ndarray, instruments: list[dict[str, Any]],
          lut: np.ndarray, alpha: float) -> None:  # fmt: skip
    """``draw_overlay`` in place, with few full-frame temporaries (they cost page faults when
    allocated and hold the GIL when freed)."""
    height, width = mask.shape
    thick = _thickness(height, width)
    radius = max(1, round(thick / 2))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    high, low = cv2.dilate(mask, kernel), cv2.erode(mask, kernel)
    colours = cv2.merge((high, high, high))
    cv2.LUT(colours, lut, dst=colours)
    outline = cv2.compare(high, low, cv2.CMP_NE, dst=low)
    cv2.copyTo(cv2.addWeighted(out, 1 - alpha, colours, alpha, 0), mask, out)
    cv2.copyTo(colours, outline, out)
    for inst in instruments:
        entry = tuple(round(v) for v in inst["entry"])
        tip = tuple(round(v) for v in inst["tip"])
        cv2.line(out, entry, tip, _YELLOW, thick + 1, cv2.LINE_AA)
        if inst.get("tip_in_view", True):  # a tip cut off by the view's border gets no circle
            cv2.circle(out, tip, 3 * thick + 2, _WHITE, thick + 1, cv2.LINE_AA)
        marker = cv2.MARKER_TRIANGLE_UP if inst["entry_on_border"] else cv2.MARKER_CROSS
        cv2.drawMarker(out, entry, _YELLOW, marker, 6 * thick + 4, thick + 1, cv2.LINE_AA)
        if inst.get("id") is not None:
            org = (tip[0] + 4 * thick + 2, tip[1] - 4 * thick - 2)
            _outlined_text(out, str(inst["id"]), org, 0.35 * thick + 0.05, thick)


def _outlined_text(image: np.ndarray, text: str, org: tuple[int, int], scale: float,
                   thick: int) -> None:  # fmt: skip
    for colour, width in ((_BLACK, thick + 2), (_WHITE, thick)):
        cv2.putText(image, text, org, _FONT, scale, colour, width, cv2.LINE_AA)


def legend_names(class_names: Sequence[str]) -> list[str]:
    """How the legend names classes: underscores as spaces, the binary task's "tool" as
    "instrument"."""
    return ["instrument" if n == "tool" else n.replace("_", " ") for n in class_names]


def draw_legend(class_names: Sequence[str], palette: np.ndarray, *, height: int
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The overlay's key, sized for a frame ``height`` pixels high: an RGB patch and its
    opaque pixels (uint8, nonzero where the patch covers the frame fully).

    One row per class except background (its colour and ``legend_names``), then the marks
    drawn per instrument: triangle = entry on the view border, cross = entry estimated
    (not on the border), circle = tip (with the instrument id next to it).
    """
    palette = np.asarray(palette, np.uint8)
    scale = max(0.35, 0.8 * height / 1080)
    thick = max(1, round(scale * 1.5))
    text_h = cv2.getTextSize("Ag", _FONT, scale, thick)[0][1]
    row, pad, icon = round(1.9 * text_h), round(0.8 * text_h), round(1.3 * text_h)
    names = legend_names(class_names)[1:]
    names += ["entry on view border", "entry estimated", "tip, id"]
    text_w = max(cv2.getTextSize(name, _FONT, scale, thick)[0][0] for name in names)
    patch = np.zeros((pad + row * len(names) + pad // 2, 3 * pad + icon + text_w, 3), np.uint8)
    classes = len(names) - 3
    for i, name in enumerate(names):
        top = pad + i * row
        centre = (pad + icon // 2, top + text_h // 2)
        if i < classes:
            colour = tuple(int(c) for c in palette[i + 1])
            cv2.rectangle(patch, (pad, top), (pad + icon, top + text_h), colour, cv2.FILLED)
        elif i < classes + 2:
            marker = (cv2.MARKER_TRIANGLE_UP, cv2.MARKER_CROSS)[i - classes]
            cv2.drawMarker(patch, centre, _YELLOW, marker, icon, thick, cv2.LINE_AA)
        else:
            cv2.circle(patch, centre, icon // 2, _WHITE, thick, cv2.LINE_AA)
        cv2.putText(patch, name, (2 * pad + icon, top + text_h), _FONT, scale, _WHITE, thick,
                    cv2.LINE_AA)  # fmt: skip
    opaque = cv2.compare(patch.max(axis=2), 0, cv2.CMP_GT)
    return patch, opaque


def _paste_legend(image: np.ndarray, patch: np.ndarray, opaque: np.ndarray) -> None:
    """Darken the top-left corner under the legend box and draw the legend there (in place;
    clipped to the image)."""
    h, w = min(patch.shape[0], image.shape[0]), min(patch.shape[1], image.shape[1])
    corner = image[:h, :w]
    cv2.addWeighted(corner, 0.4, patch[:h, :w], 0.6, 0, dst=corner)
    cv2.copyTo(patch[:h, :w], opaque[:h, :w], corner)


def overlay_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) at which the overlay is drawn: the frame size at ``scale`` 1, else the
    scaled size rounded to even numbers (H.264 yuv420p needs them)."""
    if scale == 1:
        return width, height
    return 2 * max(1, round(width * scale / 2)), 2 * max(1, round(height * scale / 2))


class OverlayWriter(Output):
    """``overlay.mp4``: frames drawn by ``draw_overlay`` with a legend, encoded as H.264
    yuv420p, each at its input frame's pts (in the input stream's ``time_base``).

    The overlay is drawn at ``scale`` × the frame size (``overlay_size``): the frame is
    resized with INTER_AREA, the mask with INTER_NEAREST and the instruments' coordinates
    mapped to match, so line widths and text follow the overlay's size. ``scale=1`` keeps the
    full resolution (odd sizes then get one edge-replicated row/column). ``preset`` and
    ``threads`` are x264's; ``alpha`` is the opacity of the class colours. ``class_names``
    (row 0 background) label the legend (``legend=True``, drawn once here and pasted in the
    top-left corner of each frame); by default those of the task with as many classes as
    ``palette`` has rows.

    ``render`` (stateless, thread-safe) and ``write_rendered`` (sequential: encode and mux)
    split ``write`` so that frames can be drawn on worker threads. The file appears under
    ``path`` only when closed without error.
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
        class_names: Sequence[str] | None = None,
        scale: float = 0.5,
        preset: str = "ultrafast",
        threads: int = 1,
        legend: bool = True,
        alpha: float = 0.45,
    ):
        if not 0 < scale <= 1:
            raise ConfigError(f"overlay scale must be in (0, 1], got {scale}")
        if preset not in X264_PRESETS:
            raise ConfigError(f"overlay preset must be one of {X264_PRESETS}, got {preset!r}")
        self.path = Path(path)
        self.palette = np.asarray(palette, np.uint8)
        self.alpha = alpha
        self._lut = _colour_lut(self.palette)
        if class_names is None:
            names = [n for n in TASKS.values() if len(n) == len(self.palette)]
            class_names = names[0] if names else [f"class {i}" for i in range(len(self.palette))]
        if len(class_names) != len(self.palette):
            raise ValueError(f"{len(class_names)} class names for {len(self.palette)} colours")
        self.frame_size = (width, height)
        self.size = overlay_size(width, height, scale)
        self._legend = (
            draw_legend(class_names, self.palette, height=self.size[1]) if legend else None
        )
        self._writer = VideoWriter(
            self.path,
            width=self.size[0] + self.size[0] % 2,
            height=self.size[1] + self.size[1] % 2,
            fps=fps,
            time_base=time_base,
            codec="libx264",
            options={"preset": preset},
            threads=threads,
        )

    def render(
        self, image_rgb: np.ndarray, mask: np.ndarray, instruments: list[dict[str, Any]]
    ) -> np.ndarray:
        """The overlay frame (RGB, ``size``) of a frame, its mask and its instruments, whose
        coordinates are in frame pixels. Thread-safe."""
        if image_rgb.shape[:2] != mask.shape or mask.shape != self.frame_size[::-1]:
            raise ValueError(
                f"expected a {self.frame_size[::-1]} frame and mask, got {image_rgb.shape} and "
                f"{mask.shape}"
            )
        mask = _check_mask(mask)
        if self.size == self.frame_size:
            out = image_rgb.copy()
        else:
            out = cv2.resize(image_rgb, self.size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST)
            sx, sy = (s / f for s, f in zip(self.size, self.frame_size, strict=True))
            instruments = [
                {
                    **inst,
                    "entry": _scaled(inst["entry"], sx, sy),
                    "tip": _scaled(inst["tip"], sx, sy),
                }
                for inst in instruments
            ]
        _draw(out, mask, instruments, self._lut, self.alpha)
        if self._legend is not None:
            _paste_legend(out, *self._legend)
        return out

    def write_rendered(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Encode a frame from ``render`` at ``pts``. Not thread-safe: call in frame order."""
        if frame.shape[:2] != self.size[::-1]:
            raise ValueError(f"expected a {self.size[::-1]} overlay frame, got {frame.shape}")
        bottom, right = self.size[1] % 2, self.size[0] % 2
        if bottom or right:
            frame = cv2.copyMakeBorder(frame, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
        with naming(self.path):
            self._writer.write(frame, pts)

    def write(
        self,
        image_rgb: np.ndarray,
        mask: np.ndarray,
        instruments: list[dict[str, Any]],
        pts: int | None = None,
    ) -> None:
        """Render the overlay of a frame and encode it at ``pts``."""
        self.write_rendered(self.render(image_rgb, mask, instruments), pts)

    def close(self) -> None:
        with naming(self.path):
            self._writer.close()

    def abort(self) -> None:
        """Drop the partial file."""
        with naming(self.path):
            self._writer.abort()


def _scaled(point: Sequence[float], sx: float, sy: float) -> list[float]:
    """A point in frame pixels (centres at integers) in the pixels of a frame resized by
    (sx, sy)."""
    return [(point[0] + 0.5) * sx - 0.5, (point[1] + 0.5) * sy - 0.5]
