"""How frames become network input: the one owner of the input geometry and normalization.

The Predictor, INT8 calibration and the TensorRT profile all take their input size and
resizing from a ``Preprocess``, so a frame is prepared the same way wherever it goes:
uint8 RGB, resized with bilinear interpolation (``align_corners=False``, no antialiasing,
as ``torch.nn.functional.interpolate``) to ``input_size``, then ``(x / 255 − mean) / std``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from surgseg.errors import ConfigError

OUTPUT_STRIDE_MULTIPLE = 8  # the network's coarsest output stride
MIN_SIDE = 32


def check_input_size(size: Sequence[int], *, key: str = "input_size") -> tuple[int, int]:
    """``size`` as (height, width), or a ConfigError naming ``key``: two integers, each at
    least 32 and a multiple of 8 (the network's output stride)."""
    try:
        if isinstance(size, str) or any(
            isinstance(v, bool) or not isinstance(v, numbers.Real) for v in size
        ):
            raise TypeError
        values = [int(v) for v in size]
        if any(float(v) != int(v) for v in size):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be [height, width] in pixels, got {size!r}") from None
    if len(values) != 2 or any(v < MIN_SIDE or v % OUTPUT_STRIDE_MULTIPLE for v in values):
        raise ConfigError(
            f"{key} must be [height, width], each at least {MIN_SIDE} and a multiple of "
            f"{OUTPUT_STRIDE_MULTIPLE}, got {list(size)}"
        )
    return values[0], values[1]


@dataclass(frozen=True)
class Preprocess:
    """uint8 RGB frames → normalized NCHW network input.

    Attributes:
        input_size: (height, width) the frames are resized to.
        mean, std: per-channel normalization of values in 0..1 (RGB order).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # (mean × 255, std × 255) as (1, 3, 1, 1) float32 tensors, built once per device
    _stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", check_input_size(self.input_size))

    def stats(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean × 255, std × 255) as (1, 3, 1, 1) float32 tensors on ``device``, built on
        first use and then reused: a tensor built from Python numbers per batch would be a
        blocking host-to-device copy per batch. On CUDA the one copy is made from pinned
        memory without waiting, on the current stream, so even the first batch does not
        synchronize."""
        device = torch.device(device)
        cached = self._stats.get(device)
        if cached is None:
            pair = [torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
                    for v in (self.mean, self.std)]  # fmt: skip
            if device.type == "cuda":
                pair = [t.pin_memory().to(device, non_blocking=True) for t in pair]
            else:
                pair = [t.to(device) for t in pair]
            cached = self._stats[device] = (pair[0], pair[1])
        return cached

    def __call__(self, frames: torch.Tensor, *, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> torch.Tensor:  # fmt: skip
        """uint8 NHWC frames (any device) → normalized NCHW of ``dtype`` at ``input_size``.

        Resizing and normalization run in float32 on the frames' device; the result is cast
        to ``dtype`` last.
        """
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} "
                             f"{tuple(frames.shape)}")  # fmt: skip
        x = frames.permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        mean, std = self.stats(x.device)
        x = ((x - mean) / std).to(dtype)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)

    def numpy(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 (H, W, 3) images of any sizes → float32 NCHW batch, on the CPU, by the
        same resizing as ``__call__`` (used for calibration data)."""
        batch = [self(torch.from_numpy(np.ascontiguousarray(im))[None]) for im in images]
        return torch.cat(batch).numpy()
