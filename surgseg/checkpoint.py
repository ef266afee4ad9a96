"""One self-contained checkpoint file: weights, model config, task, classes, input size,
normalization and training provenance. Inference needs nothing but its path.

A delivered model file (``best.pt``, the demo's ``model.pt``) holds just that; a resumable one
(``last.pt``) also holds the training state, about twice the weights again with Adam."""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgseg.atomic import write_bytes
from surgseg.errors import CheckpointError
from surgseg.model import build_model
from surgseg.tasks import TASKS

FORMAT = "surgseg-checkpoint"
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CheckpointMeta:
    """Everything about a trained model except its weights."""

    task: str
    class_names: list[str]
    model: dict[str, Any]  # build_model keyword arguments except num_classes
    input_size: tuple[int, int]  # (height, width) the model was trained at
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture (no weights loaded)."""
        arch = {k: v for k, v in self.model.items() if k != "backbone_weights"}
        return build_model(num_classes=self.num_classes, **arch)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    meta: CheckpointMeta,
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically. ``train_state`` (optimizer, scheduler, RNG…) makes it
    resumable and is ignored by inference; leave it out for a model file to deliver. It must
    hold only tensors and plain Python values (files are read with ``weights_only``)."""
    module = getattr(model, "module", model)  # unwrap DDP
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": asdict(meta),
        "state_dict": module.state_dict(),
        "train_state": train_state,
    }
    # Serialized in memory, then written with plain file I/O: a full disk is then an
    # OSError(ENOSPC) naming the file, not a RuntimeError from torch's zip writer.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getbuffer())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate the raw checkpoint payload; raise CheckpointError with the file name."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("is a folder, not a checkpoint file", path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            "an ONNX file, not a checkpoint: give the checkpoint it was exported from, with "
            "engine=onnxruntime engine.onnx_path=<this file>",
            path,
        )
    try:
        # weights_only: a checkpoint is data, never code. Train state must hold only tensors
        # and plain Python values. torch's warning about an old pickle protocol is no news to
        # a user who gets the error line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"not a readable checkpoint ({exc.__class__.__name__})", path
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not a surgseg checkpoint (no 'surgseg-checkpoint' format tag)", path)
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {payload.get('version')} is not supported", path)
    return payload


def load_checkpoint(
    path: str | Path, *, task: str | None = None
) -> tuple[nn.Module, CheckpointMeta]:
    """Build the model stored in ``path`` and load its weights (on the CPU, in eval mode).

    If ``task`` is given, the checkpoint must have been trained for it.
    """
    payload = read_checkpoint(path)
    raw = dict(payload["meta"])
    raw["input_size"] = tuple(raw["input_size"])
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    meta = CheckpointMeta(**raw)
    if task is not None and task != meta.task:
        raise CheckpointError(f"checkpoint was trained for task {meta.task!r}, not {task!r}", path)
    if meta.task in TASKS and tuple(meta.class_names) != TASKS[meta.task]:
        raise CheckpointError(f"class names do not match task {meta.task!r}", path)
    model = meta.build()
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1 if len(str(exc).splitlines()) > 1 else 0].strip()
        raise CheckpointError(
            f"weights do not fit the stored model config: {first}", path
        ) from None
    return model.eval(), meta
