"""Frames in, label masks and confidence out: a numpy entry point over a torch core.

Preprocessing (resize to the model's input size, normalize) and postprocessing (bilinear
upsampling of the logits to the frame size, softmax, argmax) run on the engine's device, so
only uint8 frames go in and only the uint8 mask and confidence come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from surgseg.checkpoint import CheckpointMeta, load_checkpoint
from surgseg.engines import Engine, create_engine
from surgseg.preprocess import Preprocess, check_input_size


@dataclass
class Prediction:
    """One frame's result at the frame's own size."""

    mask: np.ndarray  # (H, W) uint8 class index
    confidence: np.ndarray  # (H, W) float32, softmax probability of the chosen class


class Predictor:
    """Segments RGB frames with an engine.

    Args:
        engine: the inference engine.
        meta: the checkpoint's metadata (classes, normalization).
        input_size: (height, width) the frames are resized to; defaults to the training size.
    """

    def __init__(
        self,
        engine: Engine,
        meta: CheckpointMeta,
        *,
        input_size: tuple[int, int] | None = None,
    ):
        self.engine = engine
        self.meta = meta
        self.device = engine.device
        self.geometry = Preprocess(tuple(input_size or meta.input_size), meta.mean, meta.std)
        self.input_size = self.geometry.input_size

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        engine: str = "torch",
        device: str = "cpu",
        task: str | None = None,
        input_size: tuple[int, int] | None = None,
        **engine_options: Any,
    ) -> Predictor:
        """Load ``path`` and wrap it in the engine called ``engine``. An ``input_size`` other
        than the checkpoint's reaches the engine too (TensorRT profile, INT8 calibration)."""
        model, meta = load_checkpoint(path, task=task)
        if input_size is not None:
            meta = replace(meta, input_size=check_input_size(input_size))
        eng = create_engine(engine, model=model, meta=meta, device=device, **engine_options)
        return cls(eng, meta, input_size=input_size)

    def predict(self, frames: Sequence[np.ndarray]) -> list[Prediction]:
        """Segment RGB uint8 frames of one size, each (H, W, 3)."""
        batch = torch.from_numpy(np.stack(frames))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        labels, conf = self.predict_torch(batch.to(self.device, non_blocking=True))
        labels, conf = labels.cpu().numpy(), conf.cpu().numpy()
        return [Prediction(m, c) for m, c in zip(labels, conf, strict=True)]

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC frames → normalized float32 NCHW at the input size."""
        return self.geometry(frames)

    @torch.inference_mode()
    def predict_torch(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC frames on the device → (labels uint8 NHW, confidence float32 NHW)."""
        logits = self.engine.infer(self.preprocess(frames)).float()
        size = tuple(frames.shape[1:3])
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        conf, labels = logits.softmax(dim=1).max(dim=1)
        return labels.to(torch.uint8), conf
