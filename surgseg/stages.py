"""The segmentation stages, their options, and the one place a run's outputs are opened.

Offline processing (``surgseg.infer``), live streaming (``surgseg.live``) and the benchmark
(``surgseg.bench``) are all built from these stages on the generic ``surgseg.pipeline``::

    decode ─▶ upload ─▶ segment ─▶ download ─▶ locate ─▶ track ─▶ render ─▶ write
    PyAV      frames    pre-process, engine,  results   cue        ids      PNG bytes,  files,
    (source)  to the    upsample, argmax      to host   geometry   across   overlay     muxers
              device    (GPU, async)          (1 sync)  (k)        frames   frame (k)

Stages marked (k) are stateless per frame and run on ``workers`` threads with results put
back in frame order: render in those threads (OpenCV releases the GIL for its heavy work),
locate in as many worker processes driven by them (``surgseg.cue_workers``: the cue
geometry holds the GIL for about half of its time, so threads of it would not scale; the
segment stage then writes its results into the workers' shared arena, read there without a
copy). The tracker and the muxers are stateful and run in one thread each. With
``cues.refine_tips`` a refine_tips stage follows locate: the model on a crop around each tip,
then the geometry again (``surgseg.tip_refine``). Frames travel in ``Batch``es of
``batch_size``.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from surgseg.atomic import Output
from surgseg.cue_workers import SharedArena, shared_pool
from surgseg.cues import FieldOfView, Instrument, find_instruments
from surgseg.decode import Frame, VideoInfo
from surgseg.errors import ConfigError
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.pipeline import Pipeline, Stage, charge_cpu
from surgseg.predictor import Pending, Prediction, Predictor, Uploaded
from surgseg.sinks import (
    CuesWriter,
    Ffv1MaskWriter,
    OverlayWriter,
    PngMaskWriter,
    open_mask_writer,
)
from surgseg.tasks import palette
from surgseg.tip_refine import crop_predictor, refine
from surgseg.tracking import Smoothing, Tracker


@dataclass
class Rendered:
    """One frame's outputs, encoded and ready to be written in order."""

    mask: Any = None  # what the mask writer's ``write_encoded`` takes (PNG bytes, FFV1 mask)
    overlay: np.ndarray | None = None
    cue_line: str = ""


@dataclass
class Batch:
    """Frames travelling through the stages; each stage fills in its field."""

    frames: list[Frame]
    released: float = field(default_factory=time.perf_counter)  # when the source let it go
    uploaded: Uploaded | None = None
    pending: Pending | None = None
    predictions: list[Prediction] | None = None
    found: list[list[Instrument]] | None = None  # per frame, untracked
    instruments: list[list[dict[str, Any]]] | None = None  # per frame, tracked, JSON-ready
    rendered: list[Rendered] | None = None

    def __len__(self) -> int:
        return len(self.frames)


def batched(frames: Iterable[Frame], size: int) -> Iterator[Batch]:
    """Group ``frames`` into batches of ``size`` (the last one may be shorter)."""
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    frames = iter(frames)
    try:
        while chunk := [f for _, f in zip(range(size), frames, strict=False)]:
            yield Batch(chunk)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def cue_record(frame: Frame, instruments: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``cues.jsonl`` line of one frame: where it is in the video, whether the decoder
    flagged it (``corrupt``) or lost frames just before it (``gap``), and its instruments."""
    return {"index": frame.index, "pts": frame.pts, "time_s": round(frame.time_s, 6),
            "corrupt": frame.corrupt, "gap": frame.gap, "instruments": instruments}  # fmt: skip


_VIEW_KEYS = itertools.count()  # one per Locate (video): names its field of view to workers


# --- device stages -----------------------------------------------------------------------------


def predict(predictor: Predictor) -> Callable[[Batch], Batch]:
    """Upload, segment and download in one step: a live feed's single model stage, where a
    queue between the steps would hold frames its drop policy cannot reach."""

    def run(batch: Batch) -> Batch:
        uploaded = predictor.upload([f.image for f in batch.frames])
        batch.predictions = predictor.download(predictor.launch(uploaded))
        return batch

    return run


def upload(predictor: Predictor) -> Stage:
    """Stack a batch's frames in pinned memory and start the copy to the device."""

    def run(batch: Batch) -> Batch:
        batch.uploaded = predictor.upload([f.image for f in batch.frames])
        return batch

    return Stage("upload", run)


def segment(predictor: Predictor, *, into: SharedArena | None = None) -> Stage:
    """Queue pre-processing, the engine and post-processing of an uploaded batch, the results
    to land in ``into`` (the cue workers' shared memory) if given."""

    def run(batch: Batch) -> Batch:
        batch.pending = predictor.launch(batch.uploaded, into=into)
        batch.uploaded = None
        return batch

    return Stage("segment", run)


def download(predictor: Predictor) -> Stage:
    """Wait for a batch's uint8 masks and confidence on the host."""

    def run(batch: Batch) -> Batch:
        batch.predictions = predictor.download(batch.pending)
        batch.pending = None
        return batch

    return Stage("download", run)


# --- pose cues ---------------------------------------------------------------------------------


class Locate:
    """Cue geometry of every frame of a batch: stateless but for the video's field of view,
    found once from its first frame (``view="auto"``) and then shared, read-only.

    With ``processes`` (by default when ``workers`` > 1) the geometry runs in the worker
    processes of ``surgseg.cue_workers`` (masks passed through shared memory, results
    identical): ``find_instruments`` holds the GIL for about half of its time, so threads
    of it do not scale. Each of the stage's ``workers`` threads then drives one process, and
    ``arena`` is where the segment stage should leave the masks for them (else None). With
    one worker it runs in the stage's thread, with nothing to copy.
    """

    def __init__(self, *, task: str, options: CueOptions, workers: int = 1,
                 processes: bool | None = None):  # fmt: skip
        self.task = task
        self.options = options
        self.view: FieldOfView | None = None
        self._view_lock = threading.Lock()
        self._view_key = next(_VIEW_KEYS)
        self.processes = workers > 1 if processes is None else processes
        self._pool = shared_pool(workers) if self.processes else None  # started now
        self.arena = None if self._pool is None else self._pool.arena

    def _view(self, image: np.ndarray) -> FieldOfView:
        with self._view_lock:
            if self.view is None:
                auto = self.options.view == "auto"
                self.view = (FieldOfView.from_image(image) if auto
                             else FieldOfView(shape=image.shape[:2]))  # fmt: skip
            return self.view

    def __call__(self, batch: Batch) -> Batch:
        batch.found = self.find(batch.predictions, batch.frames[0].image)
        return batch

    def find(self, predictions: Sequence[Prediction],
             image: np.ndarray) -> list[list[Instrument]]:  # fmt: skip
        """The instruments of each prediction of one video (``image``: one of its frames)."""
        o = self.options
        view = self._view(image)
        params = {"min_area": o.min_area, "border_band": o.border_band, "tip_band": o.tip_band,
                  "split": o.split, "tip_probability": o.tip_probability}  # fmt: skip
        if self._pool is None:
            return [find_instruments(p.mask, task=self.task, confidence=p.confidence,
                                     view=view, **params)
                    for p in predictions]  # fmt: skip
        found, cpu = self._pool.locate(
            [p.mask for p in predictions], [p.confidence for p in predictions],
            view=view, view_key=self._view_key, task=self.task, **params)  # fmt: skip
        charge_cpu(cpu)  # the worker process's CPU time counts as the stage's
        return found


class RefineTips:
    """Cues found again with each tip read from the model's segmentation of a crop around it
    (``surgseg.tip_refine``; ``cues.refine_tips``): a device step, then the locate stage's
    geometry on the refined masks (in its worker processes, through their arena)."""

    def __init__(self, predictor: Predictor, locate: Locate):
        self.crops = crop_predictor(predictor)
        self.input_size = predictor.input_size
        self.locate = locate

    def __call__(self, batch: Batch) -> Batch:
        images = [f.image for f in batch.frames]
        arena = self.locate.arena
        refined = refine(images, batch.predictions, batch.found, crops=self.crops,
                         first_input_size=self.input_size,
                         empty=None if arena is None else arena.empty)  # fmt: skip
        batch.found = self.locate.find(refined, images[0])
        return batch


class Track:
    """Stable instrument ids across frames (sequential: one tracker per video)."""

    def __init__(self, options: CueOptions):
        self.tracker = Tracker(max_distance=options.track_max_distance,
                               max_missed=options.track_max_missed,
                               smoothing=Smoothing() if options.smooth else None)  # fmt: skip

    def __call__(self, batch: Batch) -> Batch:
        batch.instruments = [[inst.to_dict() for inst in self.tracker.update(found)]
                             for found in batch.found]  # fmt: skip
        batch.found = None
        return batch


def cue_stages(predictor: Predictor, options: CueOptions, *, workers: int, queue_size: int = 2,
               processes: bool | None = None) -> list[Stage]:  # fmt: skip
    """The locate (k workers: threads driving as many worker processes when k > 1, unless
    ``processes`` is False), refine_tips (with ``options.refine_tips``) and track stages."""
    locate = Locate(task=predictor.meta.task, options=options, workers=workers,
                    processes=processes)  # fmt: skip
    stages = [Stage("locate", locate, queue_size, workers=workers)]
    if options.refine_tips:
        stages.append(Stage("refine_tips", RefineTips(predictor, locate), queue_size))
    return [*stages, Stage("track", Track(options), queue_size)]


# --- outputs -----------------------------------------------------------------------------------


class LineWriter(Output):
    """Cue lines to a text stream (standard output unless ``stream`` is given), flushed line by
    line; closing leaves the stream open."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream

    def write_line(self, line: str) -> None:
        stream = self._stream or sys.stdout  # looked up per line: it may be redirected
        stream.write(line + "\n")
        stream.flush()


class Outputs(Output):
    """A run's open outputs: masks (PNG files or FFV1 video), cue lines (``cues.jsonl`` or a
    stream), overlay video.

    ``render`` is the stateless part (thread-safe): mask encoding, overlay drawing, the cue
    line. ``write`` is the sequential part: files and muxers, in frame order. ``close``
    finishes every output; ``abort`` drops what is not finished.
    """

    def __init__(self, *, masks: PngMaskWriter | Ffv1MaskWriter | None = None,
                 cues: CuesWriter | LineWriter | None = None,
                 overlay: OverlayWriter | None = None):  # fmt: skip
        self.masks, self.cues, self.overlay = masks, cues, overlay
        self._masks_written = 0

    def render(self, frame: Frame, prediction: Prediction, instruments: list[dict[str, Any]],
               *, extra: dict[str, Any] | None = None) -> Rendered:  # fmt: skip
        """Encode one frame's outputs (any thread); ``extra`` fields end its cue line."""
        record = cue_record(frame, instruments)
        out = Rendered(cue_line=json.dumps(record if extra is None else {**record, **extra}))
        if self.masks is not None:
            out.mask = self.masks.encode(prediction.mask)
        if self.overlay is not None:
            out.overlay = self.overlay.render(frame.image, prediction.mask, instruments)
        return out

    def write(self, frame: Frame, rendered: Rendered) -> None:
        """Write one frame's rendered outputs (one thread, frame order). FFV1 masks are
        numbered by their position in the file: a live feed's dropped frames leave no gap."""
        if self.masks is not None:
            ffv1 = isinstance(self.masks, Ffv1MaskWriter)
            index = self._masks_written if ffv1 else frame.index
            self.masks.write_encoded(index, frame.pts, rendered.mask)
            self._masks_written += 1
        if self.cues is not None:
            self.cues.write_line(rendered.cue_line)
        if self.overlay is not None:
            self.overlay.write_rendered(rendered.overlay, frame.pts)

    def _each(self) -> list[Output]:
        return [o for o in (self.masks, self.cues, self.overlay) if o is not None]

    def close(self) -> None:
        for output in self._each():
            output.close()

    def abort(self) -> None:
        for output in self._each():
            output.abort()


def open_outputs(
    out_dir: str | Path | None,
    *,
    info: VideoInfo,
    options: OutputOptions,
    class_names: Sequence[str],
    cues: bool | str | Path = True,
) -> Outputs:
    """Open a run's outputs for a video described by ``info``, for a model with
    ``class_names`` (row 0 background): in ``out_dir``, ``masks/`` or ``masks.mkv`` and
    ``overlay.mp4`` as ``options`` say; the cue lines in ``out_dir/cues.jsonl`` (``cues``
    True), in the file ``cues``, on standard output (``cues="-"``) or nowhere (False).
    ``out_dir`` may be None when nothing is written there."""
    fmt = info.writer_format()
    if out_dir is None and (options.masks is not None or options.overlay or cues is True):
        raise ValueError("open_outputs needs an out_dir for masks, overlay or cues.jsonl")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    outputs = Outputs()
    try:
        if options.masks is not None:
            outputs.masks = open_mask_writer(options.masks, out_dir, threads=options.ffv1_threads,
                                             **fmt)  # fmt: skip
        if cues is True:
            outputs.cues = CuesWriter(out_dir / "cues.jsonl")
        elif cues == "-":
            outputs.cues = LineWriter()
        elif cues is not False:
            outputs.cues = CuesWriter(cues)
        if options.overlay:
            outputs.overlay = OverlayWriter(
                out_dir / "overlay.mp4", palette=palette(len(class_names)),
                class_names=class_names, scale=options.overlay_scale,
                preset=options.overlay_preset, threads=options.overlay_threads,
                legend=options.overlay_legend, **fmt)  # fmt: skip
    except BaseException:
        outputs.abort()
        raise
    return outputs


def model_record(predictor: Predictor) -> dict[str, Any]:
    """What a run's record says of its model: task, each class's name and mask value, the
    input size, the engine and the device (as in ``run.json``)."""
    meta = predictor.meta
    return {"task": meta.task,
            "classes": {name: value for value, name in enumerate(meta.class_names)},
            "input_size": list(predictor.input_size), "engine": predictor.engine.name,
            "device": str(predictor.device)}  # fmt: skip


def write_stages(outputs: Outputs, *, workers: int) -> list[Stage]:
    """The render (k workers) and write stages of ``outputs``."""

    def render(batch: Batch) -> Batch:
        batch.rendered = [outputs.render(f, p, i) for f, p, i in
                          zip(batch.frames, batch.predictions, batch.instruments, strict=True)]
        return batch  # fmt: skip

    def write(batch: Batch) -> Batch:
        for frame, rendered in zip(batch.frames, batch.rendered, strict=True):
            outputs.write(frame, rendered)
        batch.rendered = None
        return batch

    return [Stage("render", render, workers=workers), Stage("write", write)]


def segmentation_pipeline(
    frames: Iterable[Frame],
    *,
    predictor: Predictor,
    cues: CueOptions,
    outputs: Outputs | None,
    batch_size: int = 4,
    workers: Workers | None = None,
    queue_size: int = 2,
    stop: threading.Event | None = None,
) -> Pipeline:
    """The offline pipeline over ``frames``: every stage, with backpressure (nothing
    dropped). Iterate it for the written batches, in frame order; ``outputs`` None stops
    after the track stage."""
    workers = workers or Workers()
    cue = cue_stages(predictor, cues, workers=workers.locate)
    stages = [upload(predictor), segment(predictor, into=cue[0].fn.arena),
              download(predictor), *cue]  # fmt: skip
    if outputs is not None:
        stages += write_stages(outputs, workers=workers.render)
    for stage in stages:
        stage.queue_size = queue_size
    return Pipeline(batched(frames, batch_size), stages, source_name="decode",
                    queue_size=queue_size, count=len, stop=stop)  # fmt: skip

