from fractions import Fraction

import numpy as np
import pytest
from _video_utils import ffmpeg_rgb_frames, ffprobe_frame_times

from surgseg.encode import VideoWriter
from surgseg.errors import ConfigError


def _colour_blocks(height: int = 64, width: int = 96) -> np.ndarray:
    """Flat 16×16 blocks of saturated and grey colours (chroma is subsampled 2×2)."""
    colours = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255),
               (255, 200, 0), (0, 200, 255), (128, 128, 128), (255, 60, 160), (30, 90, 40),
               (200, 30, 30), (16, 16, 16)]  # fmt: skip
    image = np.zeros((height, width, 3), np.uint8)
    for i in range(height // 16 * (width // 16)):
        y, x = divmod(i, width // 16)
        image[16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = colours[i % len(colours)]
    return image


@pytest.mark.parametrize("threads", [1, 2])
def test_h264_colours_and_times_survive_encoding(tmp_path, threads):
    """RGB → yuv420p (BT.601, limited range) as ffmpeg reads it back."""
    image = _colour_blocks()
    path = tmp_path / "v.mp4"
    with VideoWriter(
        path, width=96, height=64, fps=25, time_base=Fraction(1, 1000), threads=threads,
        options={"crf": "10"},
    ) as writer:  # fmt: skip
        for pts in (0, 40, 120):
            writer.write(image, pts)
    assert ffprobe_frame_times(path) == pytest.approx([0, 0.04, 0.12], abs=1e-6)
    frames = ffmpeg_rgb_frames(path, width=96, height=64).astype(int)
    for y in range(4):
        for x in range(6):
            block = frames[:, 16 * y + 4 : 16 * y + 12, 16 * x + 4 : 16 * x + 12]
            want = image[16 * y + 8, 16 * x + 8].astype(int)
            assert np.abs(block - want).max() <= 4, (y, x, block.mean(axis=(0, 1, 2)), want)


def test_closing_without_a_frame_writes_nothing(tmp_path):
    writer = VideoWriter(tmp_path / "v.mp4", width=32, height=32)
    with pytest.raises(ValueError, match="without a frame"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_negative_threads_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="threads"):
        VideoWriter(tmp_path / "v.mp4", width=32, height=32, threads=-1)
    assert list(tmp_path.iterdir()) == []
