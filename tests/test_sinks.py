import io
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from _video_utils import ffmpeg_rgb_frames, ffprobe_frame_times, ffprobe_stream
from PIL import Image

from surgseg import sinks
from surgseg.errors import ConfigError
from surgseg.sinks import (
    PNG_PARAMS,
    CuesWriter,
    Ffv1MaskWriter,
    OverlayWriter,
    PngMaskWriter,
    draw_legend,
    draw_overlay,
    encode_png,
    legend_names,
    open_mask_writer,
    overlay_size,
    read_masks,
)
from surgseg.synthetic import SyntheticSurgery
from surgseg.tasks import INSTRUMENT_TYPES, palette


def _masks(n: int, height: int = 48, width: int = 70) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 8, (height, width), dtype=np.uint8) for _ in range(n)]


def _label_map(seed: int = 0, height: int = 120, width: int = 200) -> np.ndarray:
    """A parts mask as the model gives them: a few instruments, long runs of few labels."""
    surgery = SyntheticSurgery(width=width, height=height, fps=25, seed=seed, num_instruments=3)
    return surgery.render(0).parts


def _instrument(**changes) -> dict:
    inst = {"id": 7, "entry": [2.0, 40.0], "tip": [50.0, 12.0], "axis": [0.86, -0.5]}
    return {**inst, "entry_on_border": True, **changes}


def test_png_masks_round_trip(tmp_path):
    masks = _masks(5)
    with PngMaskWriter(tmp_path) as writer:
        for i, mask in enumerate(masks):
            writer.write(i * 2, None, mask)
    files = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert files == ["000000.png", "000002.png", "000004.png", "000006.png", "000008.png"]
    assert cv2.imread(str(tmp_path / "masks" / "000002.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    read = list(read_masks(tmp_path / "masks"))
    assert [(i, t) for i, t, _ in read] == [(i * 2, None) for i in range(5)]
    for (_, _, got), mask in zip(read, masks, strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, mask)


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


@pytest.mark.parametrize("kind", ["labels", "random", "odd"])
def test_encode_png_is_lossless_8_bit_grey(kind):
    mask = {
        "labels": _label_map(),
        "random": _masks(1)[0],
        "odd": _label_map(seed=3, height=47, width=69),
    }[kind]
    data = encode_png(mask)
    assert _png_header(data) == (mask.shape[1], mask.shape[0], 8, 0)  # 8-bit, greyscale
    via_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert via_opencv.dtype == np.uint8
    np.testing.assert_array_equal(via_opencv, mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), mask)


@pytest.mark.skipif(not hasattr(cv2, "IMWRITE_PNG_FILTER"), reason="OpenCV < 4.12")
def test_png_settings_beat_opencv_defaults_on_label_maps():
    masks = [_label_map(seed, 270, 480) for seed in range(3)]
    ours = sum(len(encode_png(m)) for m in masks)
    default = sum(len(cv2.imencode(".png", m)[1]) for m in masks)
    assert ours < 0.9 * default
    assert cv2.IMWRITE_PNG_STRATEGY_RLE in PNG_PARAMS


def test_png_encoded_on_threads_equals_sequential_write(tmp_path):
    masks = [_label_map(seed) for seed in range(6)]
    with PngMaskWriter(tmp_path / "a") as writer:
        for i, mask in enumerate(masks):
            writer.write(i, None, mask)
    with PngMaskWriter(tmp_path / "b") as writer, ThreadPoolExecutor(3) as pool:
        for i, data in enumerate(pool.map(writer.encode, masks)):
            writer.write_encoded(i, None, data)
    for i, mask in enumerate(masks):
        a, b = (tmp_path / d / "masks" / f"{i:06d}.png" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        np.testing.assert_array_equal(cv2.imread(str(b), cv2.IMREAD_UNCHANGED), mask)


def test_png_failed_write_leaves_no_file(tmp_path, monkeypatch):
    writer = PngMaskWriter(tmp_path)
    data = writer.encode(_label_map())

    def half_then_fail(path: Path, data: bytes) -> int:
        with path.open("wb") as file:
            file.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        writer.write_encoded(3, None, data)
    assert list((tmp_path / "masks").iterdir()) == []


def test_png_rejects_non_label_masks():
    with pytest.raises(ValueError, match="2-D uint8"):
        encode_png(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="2-D uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint8))


def test_ffv1_masks_round_trip_with_input_timestamps(tmp_path):
    masks = _masks(6)
    time_base = Fraction(1, 12800)
    pts = [0, 512, 1100, 1536, 4010, 4608]  # irregular, in the input stream's time base
    path = tmp_path / "masks.mkv"
    with Ffv1MaskWriter(path, width=70, height=48, time_base=time_base, fps=25) as writer:
        for i, (p, mask) in enumerate(zip(pts, masks, strict=True)):
            writer.write(i, p, mask)
    probe = ffprobe_stream(path)
    assert (probe["codec_name"], probe["pix_fmt"]) == ("ffv1", "gray")
    assert (probe["width"], probe["height"], probe["nb_read_frames"]) == (70, 48, 6)
    expected_times = [round(float(p * time_base), 3) for p in pts]  # Matroska keeps ms
    assert ffprobe_frame_times(path) == pytest.approx(expected_times, abs=1e-9)
    read = list(read_masks(path))
    assert [i for i, _, _ in read] == list(range(6))
    assert [t for _, t, _ in read] == pytest.approx(expected_times, abs=1e-9)
    for (_, _, got), mask in zip(read, masks, strict=True):
        np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize(("slices", "threads"), [(4, 1), (6, 2), (12, 0)])
def test_ffv1_slices_and_threads_stay_lossless(tmp_path, slices, threads):
    masks = [_label_map(seed, 64, 96) for seed in range(4)] + _masks(2, 64, 96)
    path = tmp_path / "masks.mkv"
    kwargs = {"width": 96, "height": 64, "time_base": Fraction(1, 25), "fps": 25}
    with Ffv1MaskWriter(path, slices=slices, threads=threads, **kwargs) as writer:
        for i, payload in enumerate(map(writer.encode, masks)):
            writer.write_encoded(i, i, payload)
    assert ffprobe_frame_times(path) == pytest.approx([i / 25 for i in range(6)], abs=1e-3)
    for (_, _, got), mask in zip(read_masks(path), masks, strict=True):
        np.testing.assert_array_equal(got, mask)


def test_ffv1_needs_consecutive_indices(tmp_path):
    with (
        pytest.raises(ValueError, match="expected frame index 1"),
        Ffv1MaskWriter(
            tmp_path / "m.mkv", width=8, height=8, time_base=Fraction(1, 25), fps=25
        ) as writer,
    ):
        writer.write(0, 0, np.zeros((8, 8), np.uint8))
        writer.write(2, 2, np.zeros((8, 8), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_open_mask_writer(tmp_path):
    kwargs = {"width": 70, "height": 48, "time_base": Fraction(1, 25), "fps": 25}
    with open_mask_writer("png", tmp_path, **kwargs) as writer:
        assert isinstance(writer, PngMaskWriter)
    with open_mask_writer("ffv1", tmp_path, **kwargs) as writer:
        assert isinstance(writer, Ffv1MaskWriter)
        writer.write(0, None, _masks(1)[0])
    assert ffprobe_stream(tmp_path / "masks.mkv")["nb_read_frames"] == 1
    with pytest.raises(ConfigError, match="'jpeg'"):
        open_mask_writer("jpeg", tmp_path, **kwargs)


@pytest.mark.parametrize("kind", ["ffv1", "overlay"])
def test_exception_inside_with_leaves_no_file(tmp_path, kind):
    out = tmp_path / "out"
    kwargs = {"width": 70, "height": 48, "time_base": Fraction(1, 25), "fps": 25}
    with pytest.raises(KeyError):
        if kind == "ffv1":
            with Ffv1MaskWriter(out / "masks.mkv", **kwargs) as writer:
                writer.write(0, 0, _masks(1)[0])
                raise KeyError("boom")
        else:
            with OverlayWriter(out / "overlay.mp4", palette=palette(8), **kwargs) as writer:
                writer.write(np.zeros((48, 70, 3), np.uint8), _masks(1)[0], [], 0)
                raise KeyError("boom")
    assert list(out.iterdir()) == []


def test_cues_lines_are_flushed_before_close(tmp_path):
    path = tmp_path / "cues.jsonl"
    with CuesWriter(path) as writer:
        for i in range(3):
            writer.write(
                {
                    "index": i,
                    "pts": np.int64(i * 512),
                    "time_s": i * 0.04,
                    "instruments": [_instrument(tip=np.array([1.5, 2.5]))],
                }
            )
            lines = path.read_text().splitlines()  # read by another handle, before close
            assert len(lines) == i + 1
            record = json.loads(lines[-1])
            assert record["index"] == i and record["pts"] == i * 512
            assert record["instruments"][0]["tip"] == [1.5, 2.5]
    assert [json.loads(line)["time_s"] for line in path.read_text().splitlines()] == [
        0.0,
        0.04,
        0.08,
    ]


def test_draw_overlay_changes_mask_and_tip_pixels_only():
    image = np.full((48, 70, 3), 100, np.uint8)
    mask = np.zeros((48, 70), np.uint8)
    mask[30:44, 40:66] = 2
    colours = palette(3)
    plain = draw_overlay(image, mask, [], colours)
    assert plain.shape == image.shape and plain.dtype == np.uint8
    inside = plain[34:40, 46:60].reshape(-1, 3)
    expected = np.round(0.55 * 100 + 0.45 * colours[2].astype(float))
    assert np.abs(inside - expected).max() <= 1
    far = (slice(0, 20), slice(0, 30))
    np.testing.assert_array_equal(plain[far], image[far])
    np.testing.assert_array_equal(image, 100)  # input untouched
    tip = (10, 20)  # x, y
    drawn = draw_overlay(image, mask, [_instrument(entry=[0.0, 0.0], tip=list(tip))], colours)
    changed = np.any(drawn != plain, axis=2)
    assert changed[tip[1] - 6 : tip[1] + 7, tip[0] - 6 : tip[0] + 7].any()
    assert changed[0:5, 0:5].any()  # entry marker
    assert changed[10, 5]  # on the axis, half way from entry to tip
    assert not changed[40:, :30].any()


def test_full_resolution_overlay_keeps_odd_frames_padded(tmp_path):
    height, width = 47, 69
    path = tmp_path / "overlay.mp4"
    time_base = Fraction(1, 1000)
    with OverlayWriter(
        path, width=width, height=height, time_base=time_base, fps=25, palette=palette(8),
        scale=1.0,
    ) as writer:  # fmt: skip
        for i, mask in enumerate(_masks(5, height, width)):
            image = np.full((height, width, 3), 30 * i, np.uint8)
            writer.write(image, mask, [_instrument()], pts=i * 40)
    probe = ffprobe_stream(path)
    assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
    assert (probe["width"], probe["height"], probe["nb_read_frames"]) == (70, 48, 5)
    assert ffprobe_frame_times(path) == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16], abs=1e-6)


def _overlay(path: Path, width: int, height: int, **options) -> OverlayWriter:
    kwargs = {"time_base": Fraction(1, 1000), "fps": 25, "palette": palette(4)}
    return OverlayWriter(path, width=width, height=height, **{**kwargs, **options})


def test_overlay_size_is_scaled_to_even_numbers():
    assert overlay_size(1920, 1080, 0.5) == (960, 540)
    assert overlay_size(1920, 1080, 1.0) == (1920, 1080)
    assert overlay_size(69, 47, 1.0) == (69, 47)  # padded when encoded, not resampled
    assert overlay_size(69, 47, 0.5) == (34, 24)
    assert overlay_size(1280, 1024, 0.3) == (384, 308)
    assert overlay_size(9, 9, 0.01) == (2, 2)


@pytest.mark.parametrize(("width", "height", "scale"), [(200, 120, 0.5), (69, 47, 0.5)])
def test_scaled_overlay_keeps_input_timestamps(tmp_path, width, height, scale):
    path = tmp_path / "overlay.mp4"
    pts = [0, 40, 95, 120, 200]  # irregular, ms
    with _overlay(path, width, height, scale=scale, palette=palette(8)) as writer:
        for i, (p, mask) in enumerate(zip(pts, _masks(5, height, width), strict=True)):
            image = np.full((height, width, 3), 30 * i, np.uint8)
            writer.write(image, mask, [_instrument()], pts=p)
    probe = ffprobe_stream(path)
    assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
    assert (probe["width"], probe["height"]) == overlay_size(width, height, scale)
    assert probe["nb_read_frames"] == 5
    assert ffprobe_frame_times(path) == pytest.approx([p / 1000 for p in pts], abs=1e-6)


def test_overlay_geometry_follows_the_scale(tmp_path):
    """The tip circle drawn at half scale is centred on the tip's half-scale position."""
    image, mask = np.full((120, 200, 3), 90, np.uint8), np.zeros((120, 200), np.uint8)
    inst = _instrument(entry=[10.0, 10.0], tip=[121.0, 41.0], entry_on_border=False)
    writer = _overlay(tmp_path / "o.mp4", 200, 120, legend=False)
    plain = writer.render(image, mask, [])
    drawn = writer.render(image, mask, [{**inst, "id": None}])
    writer.abort()
    assert drawn.shape == (60, 100, 3)
    changed = np.any(drawn != plain, axis=2)
    # only the axis and the tip circle lie right of x = 50; their pixels centre on the tip
    ys, xs = np.nonzero(changed[:, 50:] & (np.abs(np.arange(60) - 20.5)[:, None] < 8))
    assert (xs.mean() + 50, ys.mean()) == pytest.approx((60.25, 20.25), abs=1.5)
    assert not changed[:, 70:].any()  # nothing at the full-scale tip x = 121 → 60 + circle


def test_render_is_thread_safe_and_write_is_render_then_encode(tmp_path):
    height, width = 120, 200
    masks = [_label_map(seed, height, width) for seed in range(8)]
    surgery = SyntheticSurgery(width=width, height=height, fps=25, seed=0, num_instruments=3)
    images = [surgery.render(i).image for i in range(8)]
    found = [[_instrument(id=i)] for i in range(8)]
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    with _overlay(a, width, height) as writer:
        for i in range(8):
            writer.write(images[i], masks[i], found[i], pts=40 * i)
    with _overlay(b, width, height) as writer, ThreadPoolExecutor(4) as pool:
        rendered = list(pool.map(writer.render, images, masks, found))
        for i, frame in enumerate(rendered):
            np.testing.assert_array_equal(frame, writer.render(images[i], masks[i], found[i]))
            writer.write_rendered(frame, 40 * i)
    size = overlay_size(width, height, 0.5)
    np.testing.assert_array_equal(
        ffmpeg_rgb_frames(a, width=size[0], height=size[1]),
        ffmpeg_rgb_frames(b, width=size[0], height=size[1]),
    )


def test_overlay_rejects_bad_options_and_sizes(tmp_path):
    for scale in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="scale"):
            _overlay(tmp_path / "o.mp4", 64, 48, scale=scale)
    with pytest.raises(ConfigError, match="'fastest'"):
        _overlay(tmp_path / "o.mp4", 64, 48, preset="fastest")
    with pytest.raises(ValueError, match="3 class names for 4 colours"):
        _overlay(tmp_path / "o.mp4", 64, 48, class_names=["a", "b", "c"])
    with _overlay(tmp_path / "o.mp4", 64, 48) as writer:
        with pytest.raises(ValueError, match="frame and mask"):
            writer.render(np.zeros((48, 64, 3), np.uint8), np.zeros((40, 64), np.uint8), [])
        with pytest.raises(ValueError, match="overlay frame"):
            writer.write_rendered(np.zeros((48, 64, 3), np.uint8), 0)
        writer.write_rendered(np.zeros((24, 32, 3), np.uint8), 0)
    assert list(tmp_path.iterdir()) == [tmp_path / "o.mp4"]


def test_legend_names_and_layout():
    assert legend_names(("background", "tool")) == ["background", "instrument"]
    assert legend_names(("background", *INSTRUMENT_TYPES))[1] == "bipolar forceps"
    parts, opaque = draw_legend(("background", "shaft", "wrist", "clasper"), palette(4),
                                height=540)  # fmt: skip
    types, _ = draw_legend(legend_names(("background", *INSTRUMENT_TYPES)), palette(8),
                           height=540)  # fmt: skip
    assert types.shape[0] > parts.shape[0]  # one row per class
    assert types.shape[1] > parts.shape[1]  # "monopolar curved scissors" is wider
    assert parts.shape[0] < 540 // 3 and parts.shape[1] < 960 // 4  # a corner, at 960×540
    colours = {tuple(c) for c in parts.reshape(-1, 3)}
    assert {tuple(int(v) for v in c) for c in palette(4)[1:]} <= colours  # swatches
    assert ((opaque > 0) == parts.any(axis=2)).all()
    bigger, _ = draw_legend(("background", "shaft", "wrist", "clasper"), palette(4), height=1080)
    assert bigger.shape[0] > parts.shape[0]


def test_legend_is_drawn_once_per_writer_and_pasted_top_left(tmp_path, monkeypatch):
    height, width = 240, 400
    image = np.full((height, width, 3), 120, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    with_legend = _overlay(tmp_path / "a.mp4", width, height)
    without = _overlay(tmp_path / "b.mp4", width, height, legend=False)
    monkeypatch.setattr(sinks, "draw_legend", lambda *a, **k: pytest.fail("drawn again"))
    a, b = with_legend.render(image, mask, []), without.render(image, mask, [])
    with_legend.abort()
    without.abort()
    patch, opaque = draw_legend(("background", "shaft", "wrist", "clasper"), palette(4),
                                height=120)  # fmt: skip
    h, w = patch.shape[:2]
    np.testing.assert_array_equal(a[h:], b[h:])
    np.testing.assert_array_equal(a[:, w:], b[:, w:])
    corner = a[:h, :w]
    np.testing.assert_array_equal(corner[opaque > 0], patch[opaque > 0])
    assert np.abs(corner[opaque == 0].astype(int) - 48).max() <= 1  # 0.4 × 120: darkened box


def test_legend_larger_than_the_frame_is_clipped(tmp_path):
    with _overlay(tmp_path / "o.mp4", 40, 32, scale=1.0, palette=palette(8)) as writer:
        frame = writer.render(np.zeros((32, 40, 3), np.uint8), np.zeros((32, 40), np.uint8), [])
        assert frame.shape == (32, 40, 3) and frame.any()
        writer.write_rendered(frame, 0)


def test_draw_overlay_outlines_all_classes_in_one_pass():
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 10:40] = 1
    mask[10:50, 40:70] = 2
    colours = palette(3)
    out = draw_overlay(image, mask, [], colours)
    np.testing.assert_array_equal(out[30, 9], colours[1])  # background | shaft, outside
    np.testing.assert_array_equal(out[30, 10], colours[1])  # background | shaft, inside
    np.testing.assert_array_equal(out[30, 39], colours[2])  # shaft | wrist: the higher label
    np.testing.assert_array_equal(out[30, 40], colours[2])
    np.testing.assert_array_equal(out[30, 70], colours[2])  # wrist | background, outside
    np.testing.assert_array_equal(out[30, 8], image[30, 8])  # beyond the outline
    expected = np.round(0.55 * 100 + 0.45 * colours[1].astype(float))
    assert np.abs(out[30, 20] - expected).max() <= 1  # inside: blended


def test_draw_overlay_accepts_labels_beyond_the_palette():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:15] = 255  # the ignore label
    out = draw_overlay(np.full((20, 30, 3), 200, np.uint8), mask, [], palette(2))
    assert (out[8:12, 8:12] == round(0.55 * 200)).all()  # blended with black
