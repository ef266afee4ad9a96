"""Small test videos and ffmpeg/ffprobe oracles, shared by the test modules.

Frames made by ``numbered_frame`` carry their frame number as 8 big black/white cells along
the top edge, so order and losses can be checked after lossy codecs (``frame_number``).
"""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from surgseg.encode import VideoWriter

WIDTH, HEIGHT, FRAMES = 96, 64, 12

# name → (VideoWriter codec, file suffix, ffprobe codec_name)
FORMATS: dict[str, tuple[str, str, str]] = {
    "h264-mp4": ("libx264", ".mp4", "h264"),
    "h264-ts": ("libx264", ".ts", "h264"),
    "mpeg4-avi": ("mpeg4", ".avi", "mpeg4"),
    "mjpeg-avi": ("mjpeg", ".avi", "mjpeg"),
    "vp9-webm": ("libvpx-vp9", ".webm", "vp9"),
    "ffv1-mkv": ("ffv1-rgb", ".mkv", "ffv1"),
}

_BITS = 8


def numbered_frame(index: int, *, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """An RGB frame whose top band encodes ``index`` (0..255) in binary, over a gradient.

    The gradient runs red left→right and green top→bottom, so rotations and flips show.
    """
    x = np.linspace(0, 200, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 200, height, dtype=np.float32)[:, None]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.broadcast_to(x, (height, width))
    image[..., 1] = np.broadcast_to(y, (height, width))
    image[..., 2] = 60
    band, cell = height // 4, width // _BITS
    for bit in range(_BITS):
        image[:band, bit * cell : (bit + 1) * cell] = 255 if index >> bit & 1 else 0
    return image


def frame_number(image: np.ndarray) -> int:
    """Read back the number written by ``numbered_frame`` (un-rotated RGB image)."""
    height, width = image.shape[:2]
    band, cell = height // 4, width // _BITS
    value = 0
    for bit in range(_BITS):
        patch = image[
            band // 4 : band * 3 // 4, bit * cell + cell // 4 : (bit + 1) * cell - cell // 4
        ]
        value |= int(patch.mean() > 128) << bit
    return value


def write_video(
    path: Path,
    *,
    fmt: str = "h264-mp4",
    frames: int = FRAMES,
    width: int = WIDTH,
    height: int = HEIGHT,
    fps: float = 25,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    noise: int = 0,
) -> Path:
    """Write ``numbered_frame(0..frames-1)`` with a codec of ``FORMATS``; ``path``'s suffix is
    replaced by the format's. ``pts`` (in ``time_base``) makes a variable-frame-rate file.
    ``noise`` adds seeded uniform noise of that amplitude, so packets get as large as a
    camera's (several MPEG-TS packets each) while the numbers stay readable."""
    codec, suffix, _ = FORMATS[fmt]
    path = Path(path).with_suffix(suffix)
    with VideoWriter(
        path, width=width, height=height, fps=fps, time_base=time_base, codec=codec
    ) as writer:
        for i in range(frames if pts is None else len(pts)):
            image = numbered_frame(i, width=width, height=height)
            if noise:
                grain = np.random.default_rng(i).integers(-noise, noise + 1, image.shape)
                image = np.clip(image + grain, 0, 255).astype(np.uint8)
            writer.write(image, None if pts is None else pts[i])
    return path


def write_rotated_video(path: Path, src: Path, rotation: int) -> Path:
    """Remux ``src`` into ``path`` (same container) with a display matrix rotating it
    ``rotation`` degrees counter-clockwise (ffprobe shows ``rotation``)."""
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        out_stream.set_display_rotation(rotation)
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return Path(path)


def write_audio_only(path: Path, *, seconds: float = 0.5) -> Path:
    """An AAC sine tone in ``path`` (e.g. ``.m4a``): a container without a video stream."""
    rate = 44100
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def write_png(path: Path) -> Path:
    """A single still image."""
    cv2.imwrite(str(path), cv2.cvtColor(numbered_frame(3), cv2.COLOR_RGB2BGR))
    return Path(path)


def write_text(path: Path) -> Path:
    """A text file with a video suffix, if you like."""
    Path(path).write_text("this is not a video\n" * 50)
    return Path(path)


def truncated_copy(src: Path, dst: Path, *, keep: float) -> Path:
    """Copy the first ``keep`` fraction (0..1) of ``src``'s bytes to ``dst``."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def cut_in_packet(src: Path, dst: Path, packet: int) -> Path:
    """Copy ``src`` up to the middle of its video packet ``packet`` (file order) to ``dst``: a
    file whose writing or copying stopped there."""
    pos, size = packet_spans(src)[packet]
    Path(dst).write_bytes(Path(src).read_bytes()[: pos + size // 2])
    return Path(dst)


def faststart_copy(src: Path, dst: Path, *, start: float | None = None) -> Path:
    """Remux ``src`` into the MP4/MOV ``dst`` with its index (moov) first, as ffmpeg's
    ``-movflags +faststart`` writes it: cut short, such a file still opens. ``start`` (s)
    cuts the beginning off without re-encoding: the copy starts at the keyframe before it,
    and an edit list hides the frames up to it."""
    seek = [] if start is None else ["-ss", str(start)]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *seek, "-i", str(src), "-c", "copy",
         "-movflags", "+faststart", str(dst)],
        check=True,
    )  # fmt: skip
    return Path(dst)


def trim_edit_list(src: Path, dst: Path, seconds: float) -> Path:
    """Copy the MP4 ``src`` to ``dst`` with its video edit list ending after ``seconds``: the
    frames after it stay in the file, hidden, as a player's trim without re-encoding leaves
    them. ``src`` has one track with a one-entry version-0 ``elst`` (as ffmpeg writes it)."""
    data = bytearray(Path(src).read_bytes())
    mvhd, elst = data.find(b"mvhd"), data.find(b"elst")
    assert data[mvhd + 4] == 0 and data[elst + 4] == 0 and data.count(b"elst") == 1
    assert int.from_bytes(data[elst + 8 : elst + 12], "big") == 1
    timescale = int.from_bytes(data[mvhd + 16 : mvhd + 20], "big")
    data[elst + 12 : elst + 16] = round(seconds * timescale).to_bytes(4, "big")
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def header_only_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` up to a few bytes into its first video packet: headers and no frame."""
    pos, _ = packet_spans(src)[0]
    Path(dst).write_bytes(Path(src).read_bytes()[: pos + 8])
    return Path(dst)


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pos, p.size) for p in container.demux(stream) if p.size]


def corrupt_packets(src: Path, dst: Path, packets: range, *, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with random garbage over the payload of the given video packets
    (their first 16 bytes are kept, so the container structure stays intact)."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    spans = packet_spans(src)
    for i in packets:
        pos, size = spans[i]
        start, end = pos + 16, pos + size
        data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def drop_bytes(src: Path, dst: Path, spans: list[tuple[int, int]]) -> Path:
    """Copy ``src`` to ``dst`` without the byte ``spans`` (offset, size): data lost in
    transmission, as when MPEG-TS packets (188 bytes each) go missing."""
    data = Path(src).read_bytes()
    kept, start = [], 0
    for pos, size in sorted(spans):
        kept.append(data[start:pos])
        start = pos + size
    kept.append(data[start:])
    Path(dst).write_bytes(b"".join(kept))
    return Path(dst)


def ffprobe_stream(path: Path) -> dict:
    """ffprobe's view of the first video stream, with frames counted by decoding
    (``nb_read_frames`` as an int)."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=codec_name,pix_fmt,width,height,nb_read_frames",
            "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stream = json.loads(out)["streams"][0]
    stream["nb_read_frames"] = int(stream["nb_read_frames"])
    return stream


def _ffprobe_frames(path: Path, entry: str) -> list[str]:
    """``frame=<entry>`` of each video frame ffprobe decodes, in presentation order."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v:0",
            "-show_entries", f"frame={entry}", "-of", "csv=p=0", str(path),
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.strip().rstrip(",") for line in out.split()]


def ffprobe_frame_times(path: Path) -> list[float]:
    """Presentation time (s) of each video frame, in presentation order, per ffprobe."""
    return [float(v) for v in _ffprobe_frames(path, "best_effort_timestamp_time")]


def ffprobe_frame_pts(path: Path) -> list[int]:
    """The pts of each video frame ffprobe decodes, in presentation order."""
    return [int(v) for v in _ffprobe_frames(path, "pts")]


def ffmpeg_decode_log(path: Path) -> str:
    """What the ffmpeg CLI logs (level info) while decoding ``path`` to nothing."""
    return subprocess.run(
        ["ffmpeg", "-v", "info", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip


def ffmpeg_rgb_frames(path: Path, *, width: int, height: int) -> np.ndarray:
    """All frames as N×H×W×3 RGB decoded by the ffmpeg CLI (which applies rotation metadata);
    ``width``/``height`` are the displayed size."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
