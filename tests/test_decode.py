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
    cut_in_packet,
    drop_bytes,
    faststart_copy,
    ffmpeg_decode_log,
    ffmpeg_rgb_frames,
    ffprobe_frame_pts,
    ffprobe_frame_times,
    ffprobe_stream,
    frame_number,
    header_only_copy,
    numbered_frame,
    packet_spans,
    trim_edit_list,
    truncated_copy,
    write_audio_only,
    write_png,
    write_rotated_video,
    write_text,
    write_video,
)

from surgseg import decode
from surgseg.decode import (
    DecodeEvent,
    DecodeStats,
    Frame,
    VideoReader,
    damage_note,
    probe,
    read_frames,
)
from surgseg.encode import VideoWriter
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


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_an_avi_with_b_frames_has_no_frame_missing_before_its_first(tmp_path, codec):
    """FFmpeg starts such an AVI at its first packet's decode time, one frame before the first
    frame shown; that frame was never lost."""
    src = write_video(tmp_path / "clip", fmt="h264-mp4", frames=20)
    avi = tmp_path / "b.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c:v", codec, "-bf", "2",
                    str(avi)], check=True)  # fmt: skip
    with VideoReader(avi) as reader:
        frames = list(reader)
    assert frames[0].pts > 0  # the shift that looked like a lost frame
    assert len(frames) == 20 and reader.stats.missing == 0 and reader.stats.events == []


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
    # (two holes, but whether a hole hits slice data ffmpeg must conceal depends on where the
    # encoder put it: one run of the suite saw one concealment, by ffmpeg and by us alike)
    assert len(flagged) == stats.corrupt == ffmpeg_decode_log(bad).count("concealing") >= 1
    clean = {f.pts: f.image for f in read_frames(src)}
    assert all(np.abs(f.image.astype(int) - clean[f.pts]).mean() > 1 for f in flagged)
    # The record says when, and survives JSON.
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["decoded"] == len(frames) and record["missing"] == stats.missing
    assert record["corrupt"] == stats.corrupt and record["events_omitted"] == 0
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
    with VideoReader(cut) as reader:
        frames = list(reader)
    assert 5 < len(frames) == ffprobe_stream(cut)["nb_read_frames"] < 24
    # The last, cut-off packet may decode to a partial picture; all before it are whole.
    assert [frame_number(f.image) for f in frames[:-1]] == list(range(len(frames) - 1))
    # The AVI header still says 24 frames: those after the last delivered one are missing.
    assert reader.stats.missing == 24 - len(frames)
    assert [(e.kind, e.missing) for e in reader.stats.events][-1] == ("end", 24 - len(frames))


def _read(path: Path) -> tuple[list[Frame], DecodeStats]:
    with VideoReader(path) as reader:
        return list(reader), reader.stats


def _ends(stats: DecodeStats) -> list[DecodeEvent]:
    return [e for e in stats.events if e.kind == "end"]


def test_truncated_faststart_mp4_counts_the_frames_lost_at_the_end(tmp_path):
    # Index (moov) first, so the cut file opens and its frames decode without an error.
    src = write_video(tmp_path / "clip", fmt="h264-mp4", frames=40)
    fast = faststart_copy(src, tmp_path / "fast.mp4")
    cut = cut_in_packet(fast, tmp_path / "cut.mp4", 25)
    complete, _ = _read(fast)
    with VideoReader(cut) as reader:
        frames = list(reader)
    n, stats = len(frames), reader.stats
    assert 10 < n < 40 and reader.info.frames_reported == 40
    assert [frame_number(f.image) for f in frames] == list(range(n))
    assert stats.decoded == n and stats.corrupt == 0 and stats.first_error is None
    assert not any(f.gap for f in frames)
    # Counted, with the time where the file stops: that of the first frame it lacks.
    lost = complete[n]
    assert stats.missing == 40 - n
    assert stats.events == [DecodeEvent("end", lost.pts, lost.time_s, 40 - n)]
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["missing"] == 40 - n
    assert record["events"] == [
        {"kind": "end", "pts": lost.pts, "time_s": lost.time_s, "missing": 40 - n, "index": None}
    ]
    note = f"{40 - n} frames missing at the end (after {lost.time_s:.3f} s)"
    assert damage_note(record) == note
    assert damage_note(_read(fast)[1].to_dict()) is None


def _ffmpeg_h264(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c:v", "libx264", "-bf", "2",
         "-g", "12", *args, "-movflags", "+faststart", str(dst)],
        check=True,
    )  # fmt: skip
    return dst


def _mp4_of_kind(tmp_path: Path, kind: str) -> Path:
    """A complete 40-frame H.264 MP4, index first, of ``kind``."""
    if kind == "variable-frame-rate":
        steps = np.random.default_rng(3).choice([20, 40, 60, 100], 39)
        pts = [0, *np.cumsum(steps).tolist()]
        src = write_video(tmp_path / "vfr", fmt="h264-mp4", pts=pts, time_base=Fraction(1, 1000))
        return faststart_copy(src, tmp_path / "fast.mp4")
    src = write_video(tmp_path / "clip", fmt="h264-mp4", frames=40)
    if kind == "our-writer":
        return faststart_copy(src, tmp_path / "fast.mp4")
    if kind == "ntsc-rate-90k-timescale":  # frame durations of 3753.75 ticks: 3753 or 3754
        return _ffmpeg_h264(src, tmp_path / "ntsc.mp4", "-r", "24000/1001",
                            "-video_track_timescale", "90000")  # fmt: skip
    b_frames = _ffmpeg_h264(src, tmp_path / "bf.mp4")  # B-frames: an edit list shifts the start
    if kind == "ffmpeg-b-frames":
        return b_frames
    if kind == "cut-without-re-encoding":  # the edit list hides the frames before 0.3 s
        return faststart_copy(b_frames, tmp_path / "cut.mp4", start=0.3)
    assert kind == "edit-list-trimmed"  # the edit list hides the frames after 1.2 s
    return trim_edit_list(b_frames, tmp_path / "trimmed.mp4", 1.2)


MP4_KINDS = ["our-writer", "ffmpeg-b-frames", "cut-without-re-encoding", "edit-list-trimmed",
             "ntsc-rate-90k-timescale", "variable-frame-rate"]  # fmt: skip


@pytest.mark.parametrize("kind", MP4_KINDS)
def test_mp4_end_is_judged_without_false_alarm(tmp_path, kind):
    path = _mp4_of_kind(tmp_path, kind)
    complete, stats = _read(path)
    with av.open(str(path)) as container:
        listed = container.streams.video[0].frames
    if kind in ("cut-without-re-encoding", "edit-list-trimmed"):
        assert listed > len(complete), "no frame hidden: the test would prove nothing"
    # The whole file: nothing missing, whatever the edit list hides.
    assert stats.missing == 0 and stats.events == [] and stats.corrupt == 0
    assert stats.gaps_checked == (kind != "variable-frame-rate")
    # Cut short: the frames of the whole file after the last one delivered are missing.
    frames, stats = _read(cut_in_packet(path, tmp_path / "short.mp4", 2 * len(complete) // 3))
    last = [f.pts for f in complete].index(frames[-1].pts)
    after = len(complete) - 1 - last
    assert 5 < after < 30
    assert stats.decoded + stats.missing == len(complete)
    assert [(e.kind, e.missing) for e in _ends(stats)] == [("end", after)]
    assert stats.events[-1] == _ends(stats)[0]
    if kind != "variable-frame-rate":  # the end of the last frame: where the next one starts
        assert (stats.events[-1].pts, stats.events[-1].time_s) == (
            complete[last + 1].pts,
            pytest.approx(complete[last + 1].time_s),
        )


def test_end_is_judged_only_where_the_container_lists_its_frames(tmp_path):
    lost, counted = {}, {}
    for fmt in FORMATS:
        src = write_video(tmp_path / fmt, fmt=fmt, frames=24)
        if fmt == "h264-mp4":
            src = faststart_copy(src, tmp_path / "fast.mp4")
        _, stats = _read(src)
        assert stats.missing == 0 and stats.events == [], fmt
        _, stats = _read(cut_in_packet(src, tmp_path / f"cut-{fmt}{src.suffix}", 16))
        gaps = sum(e.missing for e in stats.events if e.kind == "gap")
        lost[fmt] = 24 - stats.decoded - gaps  # after the last delivered frame
        counted[fmt] = sum(e.missing for e in _ends(stats))
        assert stats.missing == gaps + counted[fmt], fmt
    assert all(lost.values())
    # MKV/WebM and MPEG-TS do not say how many frames they hold: the end is left unjudged.
    listing = {"h264-mp4", "mjpeg-avi", "mpeg4-avi"}
    assert counted == {fmt: lost[fmt] if fmt in listing else 0 for fmt in FORMATS}


@pytest.mark.parametrize("suffix", [".avi", ".mov"])
def test_a_gap_mid_file_is_counted_once(tmp_path, suffix):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(8, 11))
    if suffix == ".mov":
        bad = faststart_copy(bad, tmp_path / "bad.mov")
    frames, stats = _read(bad)
    assert len(frames) == 21 and stats.missing == 3
    assert [(e.kind, e.missing) for e in stats.events] == [("error", 0)] * 3 + [("gap", 3)]
    # Cut inside packet 18: the gap is still counted once, the frames after the cut at the end.
    frames, stats = _read(cut_in_packet(bad, tmp_path / f"cut{suffix}", 18))
    assert [frame_number(f.image) for f in frames] == [*range(8), *range(11, 18)]
    assert stats.missing == 24 - 15 == 3 + 6
    assert (
        damage_note(stats.to_dict()) == "9 frames missing (6 at the end, after 0.720 s), 4 corrupt"
    )
    assert [(e.kind, e.time_s, e.missing) for e in stats.events if e.kind != "error"] == [
        ("gap", pytest.approx(11 / 25), 3), ("end", pytest.approx(18 / 25), 6)]  # fmt: skip


def test_a_loss_no_gap_shows_is_not_put_at_the_end(tmp_path):
    # Variable frame rate: once frames are lost mid-file the pts steps stop fitting the
    # frame durations and no gap is judged; the file's count is short, but its end is whole.
    steps = np.random.default_rng(3).choice([20, 40, 60, 100], 23)
    path = tmp_path / "vfr.mov"
    with VideoWriter(path, width=WIDTH, height=HEIGHT, fps=25, time_base=Fraction(1, 1000),
                     codec="mjpeg") as writer:  # fmt: skip
        for i, pts in enumerate([0, *np.cumsum(steps).tolist()]):
            writer.write(numbered_frame(i), pts)
    bad = faststart_copy(corrupt_packets(path, tmp_path / "bad.mov", range(8, 11)),
                         tmp_path / "fast.mov")  # fmt: skip
    frames, stats = _read(bad)
    assert [frame_number(f.image) for f in frames] == [*range(8), *range(11, 24)]
    assert not stats.gaps_checked and stats.corrupt == 3
    assert stats.missing == 0 and [e.kind for e in stats.events] == ["error"] * 3
    # Cut short, the end falls short too: every frame neither delivered nor seen missing
    # counts there (the three lost mid-file with them: no gap placed them).
    frames, stats = _read(cut_in_packet(bad, tmp_path / "cut.mov", 15))
    assert [frame_number(f.image) for f in frames] == [*range(8), *range(11, 15)]
    assert stats.missing == 24 - len(frames) == 12
    assert [(e.kind, e.missing) for e in stats.events][-1] == ("end", 12)


def test_frames_rejected_at_the_end_are_counted(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(21, 24))
    frames, stats = _read(bad)
    assert [frame_number(f.image) for f in frames] == list(range(21))
    assert stats.corrupt == 3 and stats.missing == 3
    assert [(e.kind, e.pts, e.missing, e.index) for e in stats.events] == [
        *[("error", p, 0, None) for p in (21, 22, 23)],
        ("end", 21, 3, None),
    ]


def test_a_consumer_that_stops_early_gets_no_end(tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=24)
    cut = cut_in_packet(src, tmp_path / "cut.avi", 16)
    with VideoReader(cut) as reader:
        frames = list(reader)
    assert reader.stats.missing == 24 - len(frames) > 0  # read to the end: counted
    with VideoReader(cut) as reader:
        for frame in reader:
            if frame.index == 15:
                break
    assert reader.stats.missing == 0 and reader.stats.events == []


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
    "mp4_without_moov": (_mp4_without_moov, "an MP4/MOV without its index (no 'moov' box)"),
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
