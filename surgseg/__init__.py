"""surgseg: surgical instrument segmentation and pose cues for endoscopic video."""

from surgseg.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from surgseg.model import build_model
from surgseg.predictor import Prediction, Predictor
from surgseg.stream import stream

__version__ = "0.1.0"

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
