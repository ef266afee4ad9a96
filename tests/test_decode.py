import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from _video_utils import (
    FORMATS,
    HEIGHT,
    WIDTH,
    corrupt_packets,
    ffmpeg_rgb_frames,
    ffprobe_frame_times,
    ffprobe_stream,
    frame_number,
    header_only_copy,
    truncated_copy,
    write_audio_only,
    write_png,
    write_rotated_video,
    write_text,
    write_video,
)

from surgseg.decode import VideoReader, probe, read_frames
from surgseg.errors import VideoError


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_formats_match_ffprobe(tmp_path, fmt):
    path = write_video(tmp_path / "clip", fmt=fmt)
    with VideoReader(path) as reader:
        frames = list(reader)
        info, stats = reader.info, reader.stats
    expected = ffprobe_stream(path)
    assert info.codec == expected["codec_name"] == FORMATS[fmt][2]
    assert (info.width, info.height) == (expected["width"], expected["height"]) == (WIDTH, HEIGHT)
    assert len(frames) == expected["nb_read_frames"] == stats.decoded == 12
    assert stats.corrupt == 0 and stats.first_error is None
    assert [f.index for f in frames] == list(range(12))
    assert [frame_number(f.image) for f in frames] == list(range(12))
    for f in frames:
        assert f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8
        assert f.time_s == float(f.pts * info.time_base)
    assert [f.time_s for f in frames] == pytest.approx(ffprobe_frame_times(path), abs=1e-6)
    assert info.fps == pytest.approx(25)
    assert info.rotation == 0
    assert info.duration_s == pytest.approx(0.48, abs=0.05)


def test_h264_b_frames_come_out_in_presentation_order(tmp_path):
    path = write_video(tmp_path / "clip", fmt="h264-mp4", frames=24)
    with av.open(str(path)) as container:
        packet_pts = [p.pts for p in container.demux(video=0) if p.size]
    assert packet_pts != sorted(packet_pts), "no B-frames: the test would prove nothing"
    frames = list(read_frames(path))
    assert [frame_number(f.image) for f in frames] == list(range(24))
    assert [f.pts for f in frames] == sorted(packet_pts)


@pytest.mark.parametrize("fmt", ["h264-mp4", "vp9-webm"])
def test_variable_frame_rate_times_come_from_pts(tmp_path, fmt):
    pts = [0, 40, 90, 200, 210, 400, 1000]
    path = write_video(tmp_path / "vfr", fmt=fmt, pts=pts, time_base=Fraction(1, 1000))
    frames = list(read_frames(path))
    assert [f.time_s for f in frames] == pytest.approx([p / 1000 for p in pts], abs=1e-9)
    assert [frame_number(f.image) for f in frames] == list(range(len(pts)))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_matches_ffmpeg_autorotate(tmp_path, rotation):
    src = write_video(tmp_path / "clip", fmt="h264-mp4")
    path = write_rotated_video(tmp_path / f"rot{rotation}.mp4", src, rotation)
    info = probe(path)
    assert info.rotation == rotation
    size = (HEIGHT, WIDTH) if rotation == 180 else (WIDTH, HEIGHT)
    assert (info.height, info.width) == size
    frames = np.stack([f.image for f in read_frames(path)])
    expected = ffmpeg_rgb_frames(path, width=info.width, height=info.height)
    assert frames.shape == expected.shape == (12, *size, 3)
    assert np.abs(frames.astype(int) - expected).mean() < 1.0
    unrotated = np.rot90(frames, -rotation // 90, axes=(1, 2))
    assert [frame_number(im) for im in unrotated] == list(range(12))


def test_corrupt_middle_loses_only_broken_frames(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(8, 11))
    with VideoReader(bad) as reader:
        frames = list(reader)
    numbers = [frame_number(f.image) for f in frames]
    assert numbers == [*range(8), *range(11, 24)]
    assert reader.stats.corrupt == 3
    assert reader.stats.decoded == len(frames) == ffprobe_stream(bad)["nb_read_frames"] == 21
    assert "InvalidDataError" in reader.stats.first_error
    assert [f.index for f in frames] == list(range(21))
    assert [f.pts for f in frames] == numbers


def test_truncated_file_decodes_what_is_there(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    cut = truncated_copy(src, tmp_path / "cut.avi", keep=0.5)
    frames = list(read_frames(cut))
    assert 5 < len(frames) == ffprobe_stream(cut)["nb_read_frames"] < 24
    # The last, cut-off packet may decode to a partial picture; all before it are whole.
    assert [frame_number(f.image) for f in frames[:-1]] == list(range(len(frames) - 1))


def _header_only(tmp_path: Path) -> Path:
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi")
    return header_only_copy(src, tmp_path / "header_only.avi")


def _mp4_without_moov(tmp_path: Path) -> Path:
    # PyAV writes the moov atom at the end; cut it off and nothing can be read.
    src = write_video(tmp_path / "clip", fmt="h264-mp4")
    return truncated_copy(src, tmp_path / "no_moov.mp4", keep=0.5)


BAD_INPUTS = {
    "missing": (lambda d: d / "missing.mp4", "no such file"),
    "directory": (lambda d: d, "directory"),
    "zero_bytes": (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty"),
    "text": (lambda d: write_text(d / "notes.mp4"), "not a readable video"),
    "png": (lambda d: write_png(d / "still.png"), "still image"),
    "audio_only": (lambda d: write_audio_only(d / "sound.m4a"), "no video stream"),
    "header_only": (_header_only, "no decodable frame"),
    "mp4_without_moov": (_mp4_without_moov, "not a readable video"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("entry", ["probe", "reader", "read_frames"])
def test_bad_inputs_raise_one_line_video_error(tmp_path, case, entry):
    make, phrase = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(VideoError) as err:
        if entry == "probe":
            probe(path)
        elif entry == "reader":
            VideoReader(path)
        else:
            next(read_frames(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert phrase in message
    assert "\n" not in message


def test_reader_iterates_once(tmp_path):
    path = write_video(tmp_path / "clip", fmt="mpeg4-avi")
    with VideoReader(path) as reader:
        assert next(iter(reader)).index == 0
        with pytest.raises(RuntimeError):
            iter(reader).__next__()
    assert reader.stats.decoded == 1


def test_stream_without_timestamps_is_spaced_at_nominal_rate(tmp_path):
    src = write_video(tmp_path / "clip", fmt="h264-mp4")
    raw = tmp_path / "clip.h264"  # Annex B elementary stream: no container, no pts
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(src), "-c", "copy", "-bsf:v", "h264_mp4toannexb",
         str(raw)],
        check=True,
    )  # fmt: skip
    frames = list(read_frames(raw))
    assert [f.pts for f in frames] == [None] * 12
    assert [frame_number(f.image) for f in frames] == list(range(12))
    assert [f.time_s for f in frames] == pytest.approx([i / 25 for i in range(12)])
