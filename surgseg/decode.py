"""Decode video files to RGB frames with PyAV: timestamps from pts, rotation applied, and
corrupt stretches skipped rather than fatal.

Packets are demuxed and decoded one by one, so a packet that fails to decode loses only the
frames it carries (counted in ``DecodeStats.corrupt``); decoding goes on with the next one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np

from surgseg.errors import VideoError


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based count of delivered frames, in presentation order.
        pts: presentation timestamp in the stream's ``time_base``; None when the stream has none.
        time_s: ``pts * time_base`` in seconds (for a stream without timestamps: the previous
            frame's time plus one nominal frame duration).
        image: H×W×3 uint8 RGB, display rotation already applied.
    """

    index: int
    pts: int | None
    time_s: float
    image: np.ndarray


@dataclass
class VideoInfo:
    """What a video says about itself. ``width``/``height`` are after rotation."""

    path: Path
    container: str
    codec: str
    width: int
    height: int
    rotation: int
    fps: float | None
    time_base: Fraction
    frames_reported: int | None
    duration_s: float | None

    def writer_format(self) -> dict[str, Any]:
        """The frame geometry and timing the output writers take (``surgseg.sinks``):
        ``width``, ``height``, ``time_base`` and ``fps`` (25 when the video gives none)."""
        return {"width": self.width, "height": self.height, "time_base": self.time_base,
                "fps": self.fps or 25.0}  # fmt: skip


@dataclass
class DecodeStats:
    """Counts kept while decoding: frames delivered and packets lost to decode errors."""

    decoded: int = 0
    corrupt: int = 0
    first_error: str | None = None


def _is_still_image(container: av.container.InputContainer) -> bool:
    # FFmpeg reads single images through the image2 demuxer or one of the "<codec>_pipe" ones.
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if _is_still_image(container):
        raise VideoError("a still image, not a video", path)
    attached_pic = av.stream.Disposition.attached_pic
    streams = [s for s in container.streams.video if not s.disposition & attached_pic]
    if not streams:
        raise VideoError("no video stream (audio-only or data-only file)", path)
    return streams[0]


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoError("no such file", path)
    if path.is_dir():
        raise VideoError("is a directory, not a video file", path)
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)", path)
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"not a readable video ({e.strerror})", path) from None


class VideoReader:
    """Iterate over the frames of a video file; use as a context manager to close it.

    Opening decodes the first frame (it carries the rotation), so a file without any
    decodable frame fails here with a ``VideoError``.

    Args:
        path: any container/codec FFmpeg reads.
        thread_type: PyAV decoder threading ("AUTO" = frame + slice threads).
    """

    def __init__(self, path: str | Path, *, thread_type: str = "AUTO"):
        self.path = Path(path)
        self.stats = DecodeStats()
        self._container = _open(self.path)
        try:
            self._stream = _video_stream(self._container, self.path)
            self._stream.thread_type = thread_type
            self._frames = self._decode()
            self._first = next(self._frames, None)
            if self._first is None:
                detail = f" ({self.stats.first_error})" if self.stats.first_error else ""
                raise VideoError(f"no decodable frame{detail}", self.path)
            self.info = self._make_info(self._first)
        except BaseException:
            self._container.close()
            raise

    def _make_info(self, first: av.VideoFrame) -> VideoInfo:
        stream, container = self._stream, self._container
        rotation = round(first.rotation) % 360
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        if stream.duration:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        return VideoInfo(
            path=self.path,
            container=container.format.name,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            rotation=rotation,
            fps=float(stream.average_rate) if stream.average_rate else None,
            time_base=stream.time_base,
            frames_reported=stream.frames or None,
            duration_s=duration_s,
        )

    def _lost(self, error: av.error.FFmpegError, packet: av.Packet) -> None:
        self.stats.corrupt += 1
        if self.stats.first_error is None:
            where = "" if packet.pts is None else f" at {float(packet.pts * packet.time_base):.3f}s"
            self.stats.first_error = f"{type(error).__name__}{where}: {error.strerror}"

    def _decode(self) -> Iterator[av.VideoFrame]:
        # The demuxer ends with an empty packet per stream, which flushes the decoder.
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                self._lost(e, packet)
                continue
            yield from frames

    def __iter__(self) -> Iterator[Frame]:
        if self._first is None:
            raise RuntimeError("VideoReader can be iterated only once")
        first, self._first = self._first, None
        time_base = self._stream.time_base
        step = 1 / (self._stream.average_rate or self._stream.guessed_rate or 25)
        k = round(self.info.rotation / 90) % 4
        time = None
        for frame in itertools.chain([first], self._frames):
            if frame.pts is not None:
                time = frame.pts * time_base
            else:
                time = 0 if time is None else time + step
            image = frame.to_ndarray(format="rgb24")
            if k:
                image = np.ascontiguousarray(np.rot90(image, k))
            self.stats.decoded += 1
            yield Frame(self.stats.decoded - 1, frame.pts, float(time), image)

    def close(self) -> None:
        """Close the container (idempotent)."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def probe(path: str | Path) -> VideoInfo:
    """Open ``path``, decode its first frame and return what the video says about itself."""
    with VideoReader(path) as reader:
        return reader.info


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Yield the frames of ``path``; the file is closed when the generator ends or is closed."""
    with VideoReader(path) as reader:
        yield from reader
