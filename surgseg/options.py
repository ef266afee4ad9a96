"""The options of the segmentation stages, defined once: the apps' config groups ``cues``,
``outputs`` and ``workers`` are these dataclasses (registered with Hydra in
``surgseg.apps``), and the stages take them as plain typed arguments. ``PredictorSpec``
names the engine stage's model, for a process that builds its own.

This module imports nothing heavy, so that every command's start-up stays quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgseg.errors import ConfigError

if TYPE_CHECKING:
    from surgseg.checkpoint import CheckpointMeta
    from surgseg.predictor import Predictor

MASK_FORMATS = ("png", "ffv1")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")  # fmt: skip


def _opt(default: object, help: str) -> object:
    """A field with its default and the one line ``--help`` shows for it."""
    return field(default=default, metadata={"help": help})


VIEWS = ("auto", "full")


# The numeric cue settings: what each must be, and the test of it.
_CUE_RANGES = (
    ("min_area", "an integer ≥ 1", lambda v: float(v).is_integer() and v >= 1),
    ("border_band", "a number > 0", lambda v: v > 0),
    ("tip_band", "a number ≥ 0", lambda v: v >= 0),
    ("track_max_distance", "a number > 0", lambda v: v > 0),
    ("track_max_missed", "an integer ≥ 0", lambda v: float(v).is_integer() and v >= 0),
)


@dataclass
class CueOptions:
    """Pose cues of each predicted mask (``surgseg.cues.find_instruments``; definitions in the
    README) and instrument tracking across frames (``surgseg.tracking.Tracker``)."""

    min_area: int = _opt(50, "pixels; smaller components are not instruments")
    border_band: float = _opt(3.0, "pixels; instrument pixels this close to the view's edge "
                                   "are its entry")
    tip_band: float = _opt(2.0, "pixels; the tip averages the pixels this close to the farthest")
    track_max_distance: float = _opt(80.0, "pixels; matching-cost gate between a track and an "
                                           "instrument")
    track_max_missed: int = _opt(10, "frames a track survives without a match")
    smooth: bool = _opt(False, "add Kalman-smoothed entry, tip and axis per track beside the "
                               "raw ones (\"smoothed\" in each instrument)")
    view: str = _opt("auto", "auto: the endoscope's view estimated from the first frame; "
                             "full: the whole frame")
    split: bool = _opt(True, "split touching and crossing instruments of binary and parts masks "
                             "by their entries on the view's border")
    tip_probability: float | None = _opt(0.2, "extend the tip over background pixels whose "
                                              "instrument probability is at least this (the "
                                              "confidence map); null: the mask's tip")
    refine_tips: bool = _opt(False, "read each tip from the model run again on a crop around it "
                                    "at twice the first pass's scale (one 160×160 inference "
                                    "per instrument; torch, onnxruntime with a dynamic "
                                    "export, or tensorrt with a profile for the crops)")

    def __post_init__(self) -> None:
        for key, what, ok in _CUE_RANGES:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
                raise ConfigError(f"cues.{key} must be {what}, got {value!r}")
        if self.view not in VIEWS:
            raise ConfigError(f"cues.view must be one of {VIEWS}, got {self.view!r}")
        p = self.tip_probability
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float)
                              or not 0 < p < 1):  # fmt: skip
            raise ConfigError(f"cues.tip_probability must be in (0, 1) or null, got {p!r}")


@dataclass
class OutputOptions:
    """What to write for each video."""

    masks: str | None = _opt("png", "png: masks/000123.png per frame; ffv1: one lossless "
                                    "masks.mkv; null: no masks")
    overlay: bool = _opt(True, "overlay.mp4: classes, axis, entry and tip drawn on the frames")
    overlay_scale: float = _opt(0.5, "overlay size as a fraction of the frame size; 1: full "
                                     "resolution")
    overlay_preset: str = _opt("ultrafast", "x264 preset of the overlay (superfast: smaller "
                                            "files, a little more CPU)")
    overlay_threads: int = _opt(1, "x264 threads of the overlay encoder (0: x264's choice)")
    overlay_legend: bool = _opt(True, "a key of the class colours and marks in the overlay")
    ffv1_threads: int = _opt(2, "slice threads of the FFV1 mask encoder")

    def __post_init__(self) -> None:
        if self.masks is not None and self.masks not in MASK_FORMATS:
            raise ConfigError(f"outputs.masks must be one of {MASK_FORMATS}, got {self.masks!r}")
        if not 0 < self.overlay_scale <= 1:
            raise ConfigError(f"outputs.overlay_scale must be in (0, 1], got {self.overlay_scale}")
        if self.overlay_preset not in X264_PRESETS:
            raise ConfigError(f"outputs.overlay_preset must be one of {X264_PRESETS}, got "
                              f"{self.overlay_preset!r}")  # fmt: skip
        for key in ("overlay_threads", "ffv1_threads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"outputs.{key} must be an integer ≥ 0, got {value!r}")


def resolve_workers(value: int | str, *, key: str = "workers") -> int:
    """Worker threads for a (k) stage: ``auto`` is half the CPU count, between 2 and 8."""
    if value == "auto":
        return min(8, max(2, (os.cpu_count() or 2) // 2))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer or 'auto', got {value!r}")
    return value


@dataclass
class Workers:
    """Workers of the stateless per-frame stages."""

    locate: int | str = _opt("auto", "workers finding the instruments of each mask (infer, "
                                     "bench: more than 1 are worker processes; stream: "
                                     "threads); auto: half the CPU cores, 2 to 8")
    render: int | str = _opt("auto", "threads encoding PNG masks and drawing the overlay (infer, "
                                     "bench; stream writes in its own loop); auto: as locate")

    def __post_init__(self) -> None:
        self.locate = resolve_workers(self.locate, key="workers.locate")
        self.render = resolve_workers(self.render, key="workers.render")


@dataclass(frozen=True)
class PredictorSpec:
    """What ``Predictor.from_checkpoint`` needs, as plain picklable data: a process that
    builds its own predictor (a cluster worker) gets this instead of the model, and the
    process that makes it need not import torch."""

    checkpoint: Path
    engine: str = "torch"
    device: str = "cpu"
    task: str | None = None
    input_size: tuple[int, int] | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Predictor:
        """The predictor, loaded from the checkpoint."""
        from surgseg.predictor import Predictor

        return Predictor.from_checkpoint(self.checkpoint, engine=self.engine, device=self.device,
                                         task=self.task, input_size=self.input_size,
                                         **self.engine_options)  # fmt: skip

    def model_settings(self, meta: CheckpointMeta) -> dict[str, Any]:
        """What the outputs depend on of the model itself, given its checkpoint's ``meta``:
        the task and the input size it runs at."""
        return {"task": meta.task, "input_size": list(self.input_size or meta.input_size)}


CLUSTERS = ("local", "ray")


@dataclass
class RayOptions:
    """Processing on a Ray cluster (``cluster=ray``): one worker per GPU, or per
    ``cpus_per_worker`` CPUs, each holding one model; the videos go to whichever worker is
    free, longest first."""

    address: str | None = _opt(None, "null: start Ray on this machine for the run; auto: join "
                                     "the cluster `ray start` runs here; ray://HOST:10001: a "
                                     "remote cluster through Ray Client")
    workers: int | str = _opt("auto", "model workers; auto: one per GPU with device=cuda, else "
                                      "one per cpus_per_worker CPUs of the cluster")
    cpus_per_worker: int = _opt(1, "CPUs each worker reserves: its torch threads, and at most "
                                   "as many workers.locate and workers.render")
    max_retries: int = _opt(2, "times a video is retried after its worker process died; then it "
                               "is recorded as failed")

    def __post_init__(self) -> None:
        if self.workers != "auto":
            self.workers = resolve_workers(self.workers, key="ray.workers")
        for key, minimum in (("cpus_per_worker", 1), ("max_retries", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"ray.{key} must be an integer ≥ {minimum}, got {value!r}")
