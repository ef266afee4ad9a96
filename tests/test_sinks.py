import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
from _video_utils import ffprobe_frame_times, ffprobe_stream

from surgseg.errors import ConfigError
from surgseg.sinks import (
    CuesWriter,
    Ffv1MaskWriter,
    OverlayWriter,
    PngMaskWriter,
    draw_overlay,
    open_mask_writer,
    read_masks,
)
from surgseg.tasks import palette


def _masks(n: int, height: int = 48, width: int = 70) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 8, (height, width), dtype=np.uint8) for _ in range(n)]


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


def test_overlay_video_frame_count_and_even_size(tmp_path):
    height, width = 47, 69
    path = tmp_path / "overlay.mp4"
    time_base = Fraction(1, 1000)
    with OverlayWriter(
        path, width=width, height=height, time_base=time_base, fps=25, palette=palette(8)
    ) as writer:
        for i, mask in enumerate(_masks(5, height, width)):
            image = np.full((height, width, 3), 30 * i, np.uint8)
            writer.write(image, mask, [_instrument()], pts=i * 40)
    probe = ffprobe_stream(path)
    assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
    assert (probe["width"], probe["height"], probe["nb_read_frames"]) == (70, 48, 5)
    assert ffprobe_frame_times(path) == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16], abs=1e-6)
