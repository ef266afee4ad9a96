"""Frames in, label masks and confidence out: a numpy entry point over a torch core.

Preprocessing (``surgseg.preprocess``: resize to the model's input size, normalize) and
postprocessing (bilinear upsampling of the logits to the frame size, argmax, the winning
class's softmax probability) run on the engine's device, so only uint8 frames go in and only
uint8 masks and a uint8 confidence (probability × 255) come back.

On CUDA the work is split in three steps that a pipeline runs in three threads, so copies,
compute and the host overlap:

* ``upload``: frames stacked into pinned host memory (reused from torch's pinned-memory
  cache, not allocated anew per batch) and copied to the device on a copy stream of its own;
* ``launch``: on a compute stream of its own, waits for that copy (on the GPU, not the host),
  runs pre-processing, the engine and post-processing, and queues the copy of the uint8
  results into pinned host memory; nothing here waits for the GPU. Given a
  ``SharedArena`` (``into=``), the results land there instead (page-locked on CUDA), where the
  cue worker processes read them without a copy;
* ``download``: one synchronization per batch (the results' event), then numpy views.

``predict`` chains the three for callers with numpy frames; ``predict_torch`` is the torch
core for callers with tensors already on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from surgseg.checkpoint import CheckpointMeta, load_checkpoint
from surgseg.engines import Engine, create_engine
from surgseg.errors import ConfigError
from surgseg.preprocess import Preprocess, check_input_size

if TYPE_CHECKING:
    from surgseg.cue_workers import SharedArena


@dataclass
class Prediction:
    """One frame's result at the frame's own size."""

    mask: np.ndarray  # (H, W) uint8 class index
    confidence: np.ndarray  # (H, W) uint8: softmax probability of the chosen class × 255


@dataclass
class Uploaded:
    """A batch on its way to the device: the device tensor and the event its copy records."""

    frames: torch.Tensor  # uint8 NHWC on the device
    ready: torch.cuda.Event | None = None


@dataclass
class Pending:
    """A launched batch: host tensors the results land in, and what says they have (``done``:
    anything whose ``synchronize()`` returns once they are in, such as a CUDA event)."""

    labels: torch.Tensor  # uint8 NHW on the host (pinned on CUDA)
    confidence: torch.Tensor
    done: Any = None

    def wait(self) -> list[Prediction]:
        """The predictions, once they are in."""
        if self.done is not None:
            self.done.synchronize()
        labels, conf = self.labels.numpy(), self.confidence.numpy()
        return [Prediction(m, c) for m, c in zip(labels, conf, strict=True)]


def check_frames(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """The frames as a list of (H, W, 3) uint8 arrays of one size, or a ValueError that
    says what is wrong with them."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            raise ValueError(
                f"predict takes a list of frames (or an (N, H, W, 3) array), got one array of "
                f"shape {frames.shape}: pass [frame]"
            )
        frames = list(frames)
    frames = list(frames)
    if not frames:
        raise ValueError("predict needs at least one frame")
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame {i} is a {type(frame).__name__}, not a numpy array")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"frame {i} has shape {frame.shape}; frames must be RGB (H, W, 3) "
                "(convert grey frames with np.repeat(frame[..., None], 3, axis=2))"
            )
        if frame.dtype != np.uint8:
            raise ValueError(
                f"frame {i} is {frame.dtype}; frames must be uint8 RGB in 0..255 "
                "(float images in 0..1: (image * 255).round().astype(np.uint8))"
            )
        if frame.shape != frames[0].shape:
            raise ValueError(
                f"frame {i} is {frame.shape[1]}×{frame.shape[0]}, frame 0 is "
                f"{frames[0].shape[1]}×{frames[0].shape[0]}: one batch holds one frame size"
            )
    return frames


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
        if engine.max_batch(self.input_size) == 0:
            h, w = self.input_size
            raise ConfigError(
                f"engine={engine.name} cannot run {h}×{w} inputs (input_size=[{h}, {w}]): its "
                "static ONNX export or TensorRT profile holds another size; set input_size to "
                "that, or export with dynamic=true"
            )
        cuda = self.device.type == "cuda"
        self._copy = torch.cuda.Stream(self.device) if cuda else None
        self._compute = torch.cuda.Stream(self.device) if cuda else None

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

    def predict(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[Prediction]:
        """Segment RGB uint8 frames of one size, each (H, W, 3)."""
        return self.download(self.launch(self.upload(check_frames(frames))))

    @torch.inference_mode()
    def upload(self, frames: Sequence[np.ndarray]) -> Uploaded:
        """Stack the frames and start their copy to the device."""
        first = frames[0]
        if self._copy is None:
            return Uploaded(torch.from_numpy(np.stack(frames)))
        host = torch.empty((len(frames), *first.shape), dtype=torch.uint8, pin_memory=True)
        np.stack(frames, out=host.numpy())
        with torch.cuda.stream(self._copy):
            on_device = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy)
        on_device.record_stream(self._compute)
        return Uploaded(on_device, ready)

    @torch.inference_mode()
    def launch(self, batch: Uploaded, *, into: SharedArena | None = None) -> Pending:
        """Queue segmentation of an uploaded batch and the copy of its results to the host
        (into ``into``'s shared memory where it has room, else into memory of torch's)."""
        cuda = self._compute is not None

        def host(shape: torch.Size) -> torch.Tensor:
            shared = None if into is None else into.empty(shape, pinned=cuda)
            if shared is not None:
                return torch.from_numpy(shared)
            return torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)

        if not cuda:
            labels, conf = self.predict_torch(batch.frames, out=host)
            return Pending(labels, conf)
        with torch.cuda.stream(self._compute):
            self._compute.wait_event(batch.ready)
            labels, conf = self.predict_torch(batch.frames)
            host_labels, host_conf = host(labels.shape), host(conf.shape)
            host_labels.copy_(labels, non_blocking=True)
            host_conf.copy_(conf, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._compute)
        return Pending(host_labels, host_conf, done)

    def download(self, pending: Pending) -> list[Prediction]:
        """Wait for a launched batch (the one synchronization per batch) and return it."""
        return pending.wait()

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC frames → normalized float32 NCHW at the input size."""
        return self.geometry(frames)

    @torch.inference_mode()
    def predict_torch(
        self, frames: torch.Tensor, *, out: Callable[[torch.Size], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC frames on the device → (labels uint8 NHW, confidence uint8 NHW), the
        confidence being the winning class's softmax probability × 255, rounded. ``out``, if
        given, makes the uint8 tensors (of a shape) the results are written into."""
        logits = self.engine.infer(self.preprocess(frames))
        if logits.device.type == "cpu" or logits.dtype == torch.float64:
            logits = logits.float()  # half-precision interpolation is a GPU kernel
        size = tuple(frames.shape[1:3])
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        top, labels = logits.max(dim=1)
        # softmax of the winner: 1 / Σ exp(logit − top), in float32 whatever the logits' type
        conf = torch.exp(logits.float() - top.float().unsqueeze(1)).sum(dim=1).reciprocal_()
        conf = conf.mul_(255).round_()
        if out is None:
            return labels.to(torch.uint8), conf.to(torch.uint8)
        return out(labels.shape).copy_(labels), out(conf.shape).copy_(conf)
