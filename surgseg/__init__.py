"""surgseg: surgical instrument segmentation and pose cues for endoscopic video.

The names below are imported on first use, so that ``import surgseg.decode`` (and every
command's start-up) loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "CheckpointMeta": "surgseg.checkpoint",
    "load_checkpoint": "surgseg.checkpoint",
    "save_checkpoint": "surgseg.checkpoint",
    "build_model": "surgseg.model",
    "Prediction": "surgseg.predictor",
    "Predictor": "surgseg.predictor",
    "stream": "surgseg.live",
}

__all__ = [
    "CheckpointMeta",
    "Prediction",
    "Predictor",
    "__version__",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "stream",
]

if TYPE_CHECKING:
    from surgseg.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from surgseg.live import stream
    from surgseg.model import build_model
    from surgseg.predictor import Prediction, Predictor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surgseg' has no attribute {name!r}")
