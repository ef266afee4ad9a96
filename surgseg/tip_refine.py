"""Tips read from a second, finer look: the model run again on a crop around each tip.

The first pass segments the whole frame at the model's input size. There, logits at output
stride 8 of an input a quarter or a half of the frame's size cannot resolve pointed jaws: the
tip read from them falls several pixels short (README, "Pose cues", "Cues from the demo
model's masks"). ``refine`` crops the frame around each instrument's tip, segments the crop at
``ZOOM`` times the first pass's scale (``INPUT`` model pixels a side), and replaces the window
of ``WINDOW`` of the crop's size around the tip by the crop's result. ``find_instruments`` on
the result then reads every cue as before, the tips from the finer window.

The masks a run writes stay those of the first pass; only the cue reading sees the refined
ones. The cost is one ``INPUT`` × ``INPUT`` inference per instrument: with three
instruments, in pixels fed to the model, about the whole first pass again at a 256×320 input,
6 % of it at 1024×1280. A TensorRT engine runs the crops on an optimization profile of their
own (``crop_profile``), which the apps add when ``cues.refine_tips`` is on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from surgseg.cues import Instrument
from surgseg.errors import ConfigError
from surgseg.predictor import Prediction, Predictor

INPUT = 160  # model pixels a side of a tip crop
ZOOM = 2.0  # the crop's scale over the first pass's
WINDOW = 0.3  # half-size of the window taken from the crop, as a share of the crop's size
CROP_BATCH = 32  # the most crops of a TensorRT engine's crop profile


@dataclass(frozen=True)
class TipCrop:
    """The crop around a tip for frames of one size: its size and the window's half-size, in
    frame pixels (height, width)."""

    size: tuple[int, int]
    half_window: tuple[int, int]

    @classmethod
    def for_frames(cls, frame_size: tuple[int, int], input_size: Sequence[int]) -> TipCrop:
        """The crop for frames of ``frame_size`` (height, width) segmented at ``input_size``."""
        size = tuple(min(f, max(8, round(INPUT * f / (ZOOM * i))))
                     for f, i in zip(frame_size, input_size, strict=True))  # fmt: skip
        return cls(size, tuple(max(1, round(WINDOW * s)) for s in size))

    def box(self, tip: tuple[float, float], frame_size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner (y, x) of the crop centred on ``tip`` (x, y), kept in the frame."""
        return tuple(min(max(0, round(t) - s // 2), f - s)
                     for t, s, f in zip(tip[::-1], self.size, frame_size, strict=True))  # fmt: skip


def crop_profile() -> dict[str, list[int]]:
    """The TensorRT optimization profile for the crops (``engine.extra_profiles``): batches
    of 1 to ``CROP_BATCH`` crops, tuned for half that."""
    return {"min": [1, 3, INPUT, INPUT], "opt": [CROP_BATCH // 2, 3, INPUT, INPUT],
            "max": [CROP_BATCH, 3, INPUT, INPUT]}  # fmt: skip


def check_engine(predictor: Predictor) -> None:
    """A ConfigError unless ``predictor``'s engine runs inputs of the crops' size."""
    if predictor.engine.max_batch((INPUT, INPUT)) == 0:
        raise ConfigError(
            f"cues.refine_tips needs an engine that runs {INPUT}×{INPUT} crops (torch; "
            f"onnxruntime with a dynamic ONNX export; tensorrt with the crops' profile, which "
            f"the apps add); {predictor.engine.name} runs only its own input size"
        )


def crop_predictor(predictor: Predictor) -> Predictor:
    """A Predictor on the same engine that segments crops at ``INPUT`` a side."""
    check_engine(predictor)
    return Predictor(predictor.engine, predictor.meta, input_size=(INPUT, INPUT))


def refine(
    images: Sequence[np.ndarray],
    predictions: Sequence[Prediction],
    found: Sequence[Sequence[Instrument]],
    *,
    crops: Predictor,
    first_input_size: Sequence[int],
    empty: Callable[[tuple[int, ...]], np.ndarray | None] | None = None,
) -> list[Prediction]:
    """The predictions of a batch of frames with the window around each found tip taken from
    ``crops``' segmentation of a crop around it (all the batch's crops in one call, or in as
    few as the engine's ``max_batch`` for the crops allows).
    Frames without instruments keep their prediction; the others get new uint8 arrays, from
    ``empty`` where it gives one (the cue workers' arena), and the given ones are left as
    they were."""

    def new(shape: tuple[int, ...]) -> np.ndarray:
        made = None if empty is None else empty(shape)
        return np.empty(shape, np.uint8) if made is None else made

    frame_size = images[0].shape[:2]
    geometry = TipCrop.for_frames(frame_size, first_input_size)
    (ch, cw), (rh, rw) = geometry.size, geometry.half_window
    corners = [[geometry.box(inst.tip, frame_size) for inst in frame] for frame in found]
    patches = [image[y : y + ch, x : x + cw]
               for image, frame in zip(images, corners, strict=True) for y, x in frame]  # fmt: skip
    if not patches:
        return list(predictions)
    step = crops.engine.max_batch((INPUT, INPUT)) or len(patches)  # None: any number
    chunks = [crops.predict(patches[i : i + step]) for i in range(0, len(patches), step)]
    results = (result for chunk in chunks for result in chunk)
    out = []
    for prediction, frame, boxes in zip(predictions, found, corners, strict=True):
        if not boxes:
            out.append(prediction)
            continue
        mask, confidence = new(prediction.mask.shape), new(prediction.confidence.shape)
        mask[...], confidence[...] = prediction.mask, prediction.confidence
        for inst, (y, x) in zip(frame, boxes, strict=True):
            crop = next(results)
            ty, tx = round(inst.tip[1]), round(inst.tip[0])
            y0, y1 = max(y, ty - rh), min(y + ch, ty + rh + 1)
            x0, x1 = max(x, tx - rw), min(x + cw, tx + rw + 1)
            if y0 < y1 and x0 < x1:
                mask[y0:y1, x0:x1] = crop.mask[y0 - y : y1 - y, x0 - x : x1 - x]
                confidence[y0:y1, x0:x1] = crop.confidence[y0 - y : y1 - y, x0 - x : x1 - x]
        out.append(Prediction(mask, confidence))
    return out
