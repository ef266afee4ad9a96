import json
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
    drop_bytes,
    ffmpeg_decode_log,
    ffmpeg_rgb_frames,
    ffprobe_frame_pts,
    ffprobe_frame_times,
    ffprobe_stream,
    frame_number,
    header_only_copy,
    packet_spans,
    truncated_copy,
    write_audio_only,
    write_png,
    write_rotated_video,
    write_text,
    write_video,
)

from surgseg import decode
from surgseg.decode import Frame, VideoReader, probe, read_frames
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
    assert stats.corrupt == stats.missing == 0 and stats.first_error is None
    assert stats.events == [] and stats.gaps_checked
    assert not any(f.corrupt or f.gap for f in frames)
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
    with VideoReader(path) as reader:
        frames = list(reader)
    assert [f.time_s for f in frames] == pytest.approx([p / 1000 for p in pts], abs=1e-9)
    assert [frame_number(f.image) for f in frames] == list(range(len(pts)))
    # Irregular steps are variable frame rate, not lost frames.
    assert reader.stats.missing == 0 and reader.stats.events == []
    assert not any(f.gap for f in frames)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_matches_ffmpeg_autorotate(tmp_path, rotation):
    src = write_video(tmp_path / "clip", fmt="h264-mp4")
    path = write_rotated_video(tmp_path / f"rot{rotation}.mp4", src, rotation)
    info = probe(path)
    assert info.rotation == rotation
    size = (HEIGHT, WIDTH) if rotation == 180 else (WIDTH, HEIGHT)
    assert (info.height, info.width) == size
    with VideoReader(path) as reader:
        frames = np.stack([f.image for f in reader])
    assert reader.stats.missing == reader.stats.corrupt == 0 and reader.stats.events == []
    expected = ffmpeg_rgb_frames(path, width=info.width, height=info.height)
    assert frames.shape == expected.shape == (12, *size, 3)
    assert np.abs(frames.astype(int) - expected).mean() < 1.0
    unrotated = np.rot90(frames, -rotation // 90, axes=(1, 2))
    assert [frame_number(im) for im in unrotated] == list(range(12))


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj422p", "yuv444p", "yuv420p10le"])
@pytest.mark.parametrize("size", ["256x144", "200x120"])
def test_images_match_ffmpeg_exactly(tmp_path, pix_fmt, size):
    # 200 pixels is not a multiple of the 64 the conversion pads rows to.
    path = tmp_path / f"{pix_fmt}.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:d=0.2",
         "-pix_fmt", pix_fmt, "-c:v", "libx264", str(path)],
        check=True,
    )  # fmt: skip
    frames = list(read_frames(path))
    width, height = map(int, size.split("x"))
    assert all(f.image.flags.c_contiguous for f in frames)
    images = np.stack([f.image for f in frames])
    assert np.array_equal(images, ffmpeg_rgb_frames(path, width=width, height=height))


def test_frame_size_can_change_mid_stream(tmp_path):
    first = write_video(tmp_path / "a", fmt="h264-ts", frames=6)
    second = write_video(tmp_path / "b", fmt="h264-ts", frames=6, width=128, height=96)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    frames = list(read_frames(joined))
    assert [f.image.shape for f in frames] == [(HEIGHT, WIDTH, 3)] * 6 + [(96, 128, 3)] * 6
    assert [frame_number(f.image) for f in frames] == [*range(6), *range(6)]


def test_corrupt_middle_loses_only_broken_frames(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(8, 11))
    with VideoReader(bad) as reader:
        frames = list(reader)
    numbers = [frame_number(f.image) for f in frames]
    assert numbers == [*range(8), *range(11, 24)]
    stats = reader.stats
    assert stats.corrupt == 3 and stats.missing == 3
    assert stats.decoded == len(frames) == ffprobe_stream(bad)["nb_read_frames"] == 21
    assert "InvalidDataError" in stats.first_error
    assert [f.index for f in frames] == list(range(21))
    assert [f.pts for f in frames] == numbers
    assert [f.gap for f in frames] == [0] * 8 + [3] + [0] * 12
    assert not any(f.corrupt for f in frames)
    assert [(e.kind, e.pts, e.missing, e.index) for e in stats.events] == [
        *[("error", p, 0, None) for p in (8, 9, 10)],
        ("gap", 11, 3, 8),
    ]


def test_frames_lost_at_the_start_are_counted(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi")
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(2))
    with VideoReader(bad) as reader:
        frames = list(reader)
    assert [f.pts for f in frames] == list(range(2, 12))
    assert [f.gap for f in frames] == [2] + [0] * 9
    assert reader.stats.missing == 2 and frames[0].index == 0


def _damaged_ts(tmp_path: Path) -> tuple[Path, Path]:
    """A 60-frame H.264 MPEG-TS and a copy that lost data in transmission: all the TS packets
    of frames in two places (the demuxer loses those frames), and one TS packet (188 bytes)
    inside each of two large frames further on (the decoder conceals the hole)."""
    src = write_video(tmp_path / "clip", fmt="h264-ts", frames=60, width=160, height=96, noise=12)
    spans = packet_spans(src)
    holes = [(spans[i][0], spans[j][0] - spans[i][0]) for i, j in ((20, 22), (40, 41))]
    large = [i for i, (_, size) in enumerate(spans) if size > 4 * 188]
    inside = [min(i for i in large if i > m) for m in (26, 46)]
    holes += [(spans[i][0] + 2 * 188, 188) for i in inside]
    return src, drop_bytes(src, tmp_path / "damaged.ts", holes)


def test_damaged_mpeg_ts_reports_lost_and_corrupt_frames(tmp_path):
    src, bad = _damaged_ts(tmp_path)
    clean_pts, kept_pts = ffprobe_frame_pts(src), ffprobe_frame_pts(bad)
    with VideoReader(bad) as reader:
        frames = list(reader)
        stats, time_base = reader.stats, reader.info.time_base
    # Indices stay a count of delivered frames and times come from pts, as ffprobe sees them.
    assert [f.pts for f in frames] == kept_pts
    assert [f.index for f in frames] == list(range(len(frames))) == list(range(stats.decoded))
    assert all(f.time_s == float(f.pts * time_base) for f in frames)
    # Lost frames: those of the clean file that ffprobe does not find in the damaged one,
    # counted on the delivered frame that follows them in presentation order.
    bounds = zip([-1, *kept_pts], kept_pts, strict=False)
    expected_gaps = [sum(a < p < b for p in clean_pts) for a, b in bounds]
    assert [f.gap for f in frames] == expected_gaps
    assert stats.missing == sum(expected_gaps) == len(clean_pts) - len(kept_pts) >= 3
    # Corrupt frames: those ffmpeg conceals, and they do differ from the clean file's.
    flagged = [f for f in frames if f.corrupt]
    assert len(flagged) == stats.corrupt == ffmpeg_decode_log(bad).count("concealing") == 2
    clean = {f.pts: f.image for f in read_frames(src)}
    assert all(np.abs(f.image.astype(int) - clean[f.pts]).mean() > 1 for f in flagged)
    # The record says when, and survives JSON.
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["decoded"] == len(frames) and record["missing"] == stats.missing
    assert record["corrupt"] == 2 and record["events_omitted"] == 0
    assert [(e["kind"], e["index"], e["pts"], e["missing"]) for e in record["events"]] == [
        (kind, f.index, f.pts, f.gap if kind == "gap" else 0)
        for f in frames
        for kind, flag in (("gap", f.gap), ("corrupt", f.corrupt))
        if flag
    ]
    assert all(e["time_s"] == pytest.approx(float(e["pts"] * time_base)) for e in record["events"])


def test_events_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_EVENTS", 4)
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(2, 22, 3))
    with VideoReader(bad) as reader:
        frames = list(reader)
    stats = reader.stats
    assert len(frames) == 17 and stats.corrupt == stats.missing == 7
    assert len(stats.events) == 4 and stats.events_omitted == 2 * 7 - 4
    assert stats.to_dict()["events_omitted"] == 10


def test_frame_keeps_its_four_field_constructor():
    frame = Frame(3, 120, 0.12, np.zeros((2, 2, 3), np.uint8))
    assert (frame.corrupt, frame.gap) == (False, 0)


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
    with VideoReader(raw) as reader:
        frames = list(reader)
    assert [f.pts for f in frames] == [None] * 12
    assert [frame_number(f.image) for f in frames] == list(range(12))
    assert [f.time_s for f in frames] == pytest.approx([i / 25 for i in range(12)])
    assert reader.stats.missing == 0 and not reader.stats.gaps_checked
