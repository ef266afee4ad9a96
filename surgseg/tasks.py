"""Segmentation tasks: class names, label values and display colours."""

from __future__ import annotations

import numpy as np

from surgseg.errors import ConfigError

IGNORE_INDEX = 255

# Part labels shared by the `parts` task, the synthetic generator and the EndoVis loaders.
SHAFT, WRIST, CLASPER = 1, 2, 3

# EndoVis 2017 robotic instrument types, in the challenge's label order (1..7).
INSTRUMENT_TYPES = (
    "bipolar_forceps",
    "prograsp_forceps",
    "large_needle_driver",
    "vessel_sealer",
    "grasping_retractor",
    "monopolar_curved_scissors",
    "other",
)

TASKS: dict[str, tuple[str, ...]] = {
    "binary": ("background", "tool"),
    "parts": ("background", "shaft", "wrist", "clasper"),
    "types": ("background", *INSTRUMENT_TYPES),
}

_PALETTE = np.array(
    [
        (0, 0, 0),
        (0, 200, 255),
        (255, 200, 0),
        (255, 60, 160),
        (120, 255, 80),
        (255, 120, 40),
        (160, 100, 255),
        (255, 255, 255),
    ],
    dtype=np.uint8,
)


def class_names(task: str) -> tuple[str, ...]:
    """Class names of ``task`` (index = label value); raise ConfigError for an unknown task."""
    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None


def palette(num_classes: int) -> np.ndarray:
    """RGB colour per class (row 0 is background), shape (num_classes, 3), uint8."""
    if num_classes > len(_PALETTE):
        raise ConfigError(f"no palette for {num_classes} classes")
    return _PALETTE[:num_classes]
