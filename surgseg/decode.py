"""Decode video files to RGB frames with PyAV: timestamps from pts, rotation applied, and
damage counted rather than fatal.

Packets are demuxed and decoded one by one, so a packet that fails to decode loses only the
frames it carries; decoding goes on with the next one. What damage costs is kept in
``DecodeStats`` and on each ``Frame``: packets the decoder rejects, frames it delivers flagged
as corrupt (errors concealed), and frames missing from the stream, seen as gaps in the pts of
the delivered frames (presentation order) against the frame duration, and, once the demuxer
ends, as frames the container's index lists after the last delivered one (a truncated file).

YUV→RGB conversion and rotation run in an FFmpeg filter graph (``_ToRgb``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np

from surgseg.errors import VideoError

MAX_EVENTS = 100  # events kept in DecodeStats.events; later ones are only counted

# A pts step counts as whole frame durations when it is within this fraction of one.
_GRID_TOLERANCE = 0.1

# Display rotation (degrees counter-clockwise) → the FFmpeg filters that apply it.
_ROTATE = {
    90: (("transpose", "cclock"),),
    180: (("hflip", None), ("vflip", None)),
    270: (("transpose", "clock"),),
}


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based count of delivered frames, in presentation order.
        pts: presentation timestamp in the stream's ``time_base``; None when the stream has none.
        time_s: ``pts * time_base`` in seconds (for a stream without timestamps: the previous
            frame's time plus one nominal frame duration).
        image: H×W×3 uint8 RGB (C-contiguous), display rotation already applied.
        corrupt: the decoder flagged this frame as damaged (it concealed errors in it).
        gap: frames missing from the stream just before this one (see ``DecodeStats.missing``).
    """

    index: int
    pts: int | None
    time_s: float
    image: np.ndarray
    corrupt: bool = False
    gap: int = 0


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


@dataclass(frozen=True)
class DecodeEvent:
    """One place where decoding lost or damaged frames.

    Attributes:
        kind: ``"gap"``: ``missing`` frames are missing just before frame ``index``;
            ``"corrupt"``: frame ``index`` came out flagged as damaged; ``"error"``: the
            decoder rejected a packet (its frames, if lost, also make a gap); ``"end"``:
            ``missing`` frames are missing after the last delivered one: the file stops early
            (cut short, or its last packets rejected), see ``DecodeStats.missing``.
        pts: of frame ``index``, or of the rejected packet; for ``"end"``, where the delivered
            frames stop: the end of the last one (at a constant frame rate, the pts the next
            frame would have had); None without timestamps.
        time_s: the same in seconds.
        missing: frames missing, for a gap or the end; else 0.
        index: the ``Frame.index`` concerned; None for an error or the end.
    """

    kind: str
    pts: int | None
    time_s: float | None
    missing: int = 0
    index: int | None = None


@dataclass
class DecodeStats:
    """What decoding delivered, and what damage cost.

    Attributes:
        decoded: frames delivered.
        corrupt: decode failures: packets the decoder rejected plus frames it delivered
            flagged as damaged (``Frame.corrupt``).
        missing: frames missing between delivered ones, from gaps in their pts (``Frame.gap``),
            whatever lost them: the demuxer, a rejected packet, the decoder; plus, once the
            demuxer ends, frames missing after the last delivered one (an ``"end"`` event):
            the frames the container lists (MP4/MOV sample table, AVI header; less those an
            edit list hides) that were neither delivered nor missing between delivered ones,
            counted only when the stream's duration also ends at least one whole frame after
            the last frame's end. Containers that give no frame count or duration (MKV/WebM,
            MPEG-TS, fragmented MP4, raw streams), or a last frame without pts, leave the end
            unjudged. Where no gap could be judged (``gaps_checked`` False), frames lost
            mid-file are among those counted at a short end.
        gaps_checked: False once the pts stopped stepping by whole frame durations (variable
            frame rate) or were missing: from there on no gap is judged.
        first_error: the first decoder error and its time.
        events_omitted: events beyond the first ``MAX_EVENTS``, counted only.
        events: where frames were lost or damaged, in the order seen.
    """

    decoded: int = 0
    corrupt: int = 0
    missing: int = 0
    gaps_checked: bool = True
    first_error: str | None = None
    events_omitted: int = 0
    events: list[DecodeEvent] = field(default_factory=list)

    def record(self, event: DecodeEvent) -> None:
        """Keep ``event`` if fewer than ``MAX_EVENTS`` are kept, else count it."""
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        else:
            self.events_omitted += 1

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values, events as dicts (for ``run.json``)."""
        return asdict(self)


def damage_note(frames: Mapping[str, Any]) -> str | None:
    """What decoding lost, in a few words for a log line, from ``DecodeStats.to_dict()`` (as
    ``run.json``'s ``frames`` holds it): "9 frames missing (6 at the end, after 0.720 s),
    4 corrupt", "26 frames missing at the end (after 0.560 s)"; None when nothing was lost or
    damaged."""
    missing, corrupt = frames.get("missing") or 0, frames.get("corrupt") or 0
    parts = []
    if missing:
        text = f"{missing} frame{'s' * (missing != 1)} missing"
        ends = [e for e in frames.get("events") or () if e.get("kind") == "end"]
        if ends:
            lost, time_s = ends[-1].get("missing"), ends[-1].get("time_s")
            text += " at the end" if lost == missing else ""
            detail = [] if lost == missing else [f"{lost} at the end"]
            detail += [] if time_s is None else [f"after {time_s:.3f} s"]
            text += f" ({', '.join(detail)})" if detail else ""
        parts.append(text)
    if corrupt:
        parts.append(f"{corrupt} corrupt")
    return ", ".join(parts) or None


def _whole_steps(delta: int, step: float) -> int | None:
    """``delta`` in whole ``step``s, or None when it is off that grid (or ``step`` unknown)."""
    if step <= 0:
        return None
    steps = delta / step
    return round(steps) if abs(steps - round(steps)) <= _GRID_TOLERANCE else None


def _nominal_step(stream: av.VideoStream) -> float:
    """One frame at the stream's nominal rate, in ``time_base`` units; 0 when it has none."""
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / (rate * stream.time_base)) if rate else 0.0


class _Gaps:
    """Frames missing before each delivered frame, judged on its pts step from the previous
    one (presentation order) in units of the previous frame's duration: the duration the
    container or parser gives the frame, else the stream's nominal rate. A step of n whole
    durations means n - 1 frames missing, once a step of exactly one duration has been seen
    (so a nominal rate that does not fit the stream cannot pass for loss). A step off that
    grid (variable frame rate), or a frame without pts, stops the judging for good. Frames
    missing before the first one count when it starts whole durations of its own after both
    the stream's start time and the first packet's pts (``first_pts``): an AVI with B-frames
    starts at the first packet's decode time, one frame before any frame is shown.
    """

    def __init__(self, stream: av.VideoStream, first_pts: int | None = None):
        self._nominal = _nominal_step(stream)
        self._starts = [t for t in (stream.start_time, first_pts) if t is not None]
        self._last: int | None = None
        self._step = 0.0
        self._confirmed = False
        self.checked = True

    def missing_before(self, pts: int | None, duration: int) -> int:
        """Frames missing just before the frame at ``pts`` that lasts ``duration``."""
        if pts is None:
            self.checked = False
        if not self.checked:
            return 0
        last, step = self._last, self._step
        self._last, self._step = pts, float(duration) or self._nominal
        if last is None:
            steps = [_whole_steps(pts - t, float(duration)) or 0 for t in self._starts]
            return max(min(steps, default=0), 0)
        steps = _whole_steps(pts - last, step)
        if steps is None or steps < 1:
            self.checked = False
            return 0
        self._confirmed |= steps == 1
        return steps - 1 if self._confirmed else 0


def _missing_at_end(
    stream: av.VideoStream, stats: DecodeStats, pts: int | None, duration: int
) -> tuple[int, int]:
    """Frames missing after the last delivered frame (at ``pts``, lasting ``duration``), and
    where they would start: the end of that frame, in ``time_base``. (0, 0) unless both the
    container's frame count and its duration say so (see ``DecodeStats.missing``)."""
    listed, length, start = stream.frames, stream.duration, stream.start_time
    if not listed or not length or start is None or pts is None:
        return 0, 0
    step = duration or _nominal_step(stream)
    if step <= 0:
        return 0, 0
    end = pts + step
    unseen = listed - stats.decoded - stats.missing
    if unseen < 1 or (start + length - end) / step + _GRID_TOLERANCE < 1:
        return 0, 0
    # Frames an edit list hides (a cut made without re-encoding) are listed but never shown.
    # Read only here, on a file already short: the index holds an entry per frame.
    unseen -= sum(entry.is_discard for entry in stream.index_entries)
    return max(unseen, 0), round(end)


class _ToRgb:
    """RGB arrays of decoded frames, display rotation applied, from an FFmpeg filter graph.

    The graph converts exactly as the ffmpeg CLI does (PyAV's ``to_ndarray`` does not for
    10-bit video), in slices on FFmpeg's threads without the GIL, into buffers from a pool
    that come back when the consumer drops the image: allocating a fresh 1080p array per
    frame cost more in page faults than the conversion itself. Pool rows are padded to a
    multiple of 64 pixels, so other widths (720, 1440…) are copied to a contiguous array.
    The graph is rebuilt when frames change size or format mid-stream.
    """

    def __init__(self, rotation: int):
        self._filters = _ROTATE.get(rotation, ())
        self._key: tuple | None = None
        self._graph: av.filter.Graph | None = None
        self._source: av.filter.FilterContext | None = None
        self._sink: av.filter.FilterContext | None = None

    def _configure(self, frame: av.VideoFrame) -> None:
        graph = av.filter.Graph()
        source = graph.add(
            "buffer",
            video_size=f"{frame.width}x{frame.height}",
            pix_fmt=frame.format.name,
            time_base="1/1",
            pixel_aspect="1/1",
            colorspace=str(int(frame.colorspace)),
            range=str(int(frame.color_range)),
        )
        filters = [graph.add(name, arg) for name, arg in self._filters]
        sink = graph.add("buffersink")
        graph.link_nodes(source, *filters, graph.add("format", "rgb24"), sink).configure()
        self._graph, self._source, self._sink = graph, source, sink

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)
        if key != self._key:
            self._configure(frame)
            self._key = key
        self._source.push(frame)
        image = self._sink.pull().to_ndarray()
        return image if image.flags.c_contiguous else np.ascontiguousarray(image)


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
        if _mp4_without_index(path):
            raise VideoError(
                "not a readable video: an MP4/MOV without its index (no 'moov' box), as a "
                "recording or copy cut short leaves it when the index comes last; nothing in "
                "it can be found without one (faststart files keep theirs at the start)",
                path,
            ) from None
        raise VideoError(f"not a readable video ({e.strerror})", path) from None


def _mp4_without_index(path: Path) -> bool:
    """Whether ``path`` is an ISO media file (MP4, MOV: 'ftyp' first) whose top-level boxes,
    as far as they go, hold no 'moov'."""
    with open(path, "rb") as f:
        end, offset, kinds = path.stat().st_size, 0, []
        while offset + 8 <= end:
            f.seek(offset)
            size, kind = int.from_bytes(f.read(4), "big"), f.read(4)
            if size == 1:  # a 64-bit size follows
                size = int.from_bytes(f.read(8), "big")
            kinds.append(kind)
            if size < 8:  # 0: the box runs to the end of the file; less: not a box
                break
            offset += size
    return kinds[:1] == [b"ftyp"] and b"moov" not in kinds


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
            self._first_pts: int | None = None  # of the first packet demuxed
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
        rotation = 90 * round(first.rotation / 90) % 360  # the rotations _ToRgb can apply
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
        time = None if packet.pts is None else float(packet.pts * packet.time_base)
        if self.stats.first_error is None:
            where = "" if time is None else f" at {time:.3f}s"
            self.stats.first_error = f"{type(error).__name__}{where}: {error.strerror}"
        self.stats.record(DecodeEvent("error", packet.pts, time))

    def _decode(self) -> Iterator[av.VideoFrame]:
        # The demuxer ends with an empty packet per stream, which flushes the decoder.
        for packet in self._container.demux(self._stream):
            if self._first_pts is None:
                self._first_pts = packet.pts
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
        stats, time_base = self.stats, self._stream.time_base
        step = 1 / (self._stream.average_rate or self._stream.guessed_rate or 25)
        gaps, to_rgb = _Gaps(self._stream, self._first_pts), _ToRgb(self.info.rotation)
        time = -step  # a stream without pts starts at 0
        for frame in itertools.chain([first], self._frames):
            pts = frame.pts
            time = pts * time_base if pts is not None else time + step
            index, time_s = stats.decoded, float(time)
            stats.decoded += 1
            gap = gaps.missing_before(pts, frame.duration)
            stats.gaps_checked = gaps.checked
            if gap:
                stats.missing += gap
                stats.record(DecodeEvent("gap", pts, time_s, gap, index))
            corrupt = frame.is_corrupt
            if corrupt:
                stats.corrupt += 1
                stats.record(DecodeEvent("corrupt", pts, time_s, 0, index))
            # Built in the yield, so no reference to the image outlives the consumer's.
            yield Frame(index, pts, time_s, to_rgb(frame), corrupt, gap)
        # The demuxer has ended (a consumer that stops early never gets here): judged once.
        lost, end = _missing_at_end(self._stream, stats, frame.pts, frame.duration)
        if lost:
            stats.missing += lost
            stats.record(DecodeEvent("end", end, float(end * time_base), lost))

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
