"""Concurrent stages joined by bounded queues.

A stage is a function, a thread that applies it to every item, and a bounded output queue::

    source ──q──▶ stage 1 ──q──▶ stage 2 ──q──▶ … ──q──▶ the caller iterating the Pipeline

Decoding (PyAV), inference (torch) and writing (OpenCV, PyAV) release the GIL, so the stages
overlap. Each stage has one thread and the queues are FIFO, so items come out in source order.
The queues are bounded, so memory stays bounded whatever the length of the source: a full
queue blocks its producer (backpressure), or, for a live source, drops an item by a policy:

* ``block``: wait for room (nothing is dropped);
* ``keep_latest``: drop the oldest waiting item to make room for the new one;
* ``drop_new``: drop the new item.

An exception in any stage stops every stage and is raised again in the caller. Leaving the
loop early (once the iterator is released), a ``KeyboardInterrupt`` in the caller, or setting
the ``stop`` event (which ends the iteration quietly) stop every stage too; pipelines still
running when the interpreter exits are stopped, and their threads joined, at exit. Each
stage records its busy time (inside its function, not waiting on queues), items, frames and
drops.

The second half of the module holds the segmentation stages built on ``Predictor``, shared
by ``surgseg.infer`` (offline), ``surgseg.stream`` (live) and ``surgseg.bench``.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from surgseg.cues import estimate_view, find_instruments
from surgseg.decode import Frame
from surgseg.errors import ConfigError
from surgseg.predictor import Prediction, Predictor
from surgseg.tracking import Tracker

DROP_POLICIES = ("block", "keep_latest", "drop_new")
_POLL_S = 0.05  # how often a blocked thread looks at the stop event
_END = object()  # put after the last item
_RUNNING: weakref.WeakSet[Pipeline] = weakref.WeakSet()  # pipelines whose threads run


@atexit.register
def _stop_running() -> None:
    """Stop the pipelines still running at interpreter exit and wait for their threads, so
    that no stage is inside native code (decoders, torch) while the interpreter shuts down."""
    for pipeline in list(_RUNNING):
        pipeline.stop.set()
    for pipeline in list(_RUNNING):
        for thread in pipeline._threads:
            thread.join()


@dataclass
class Stage:
    """``fn`` applied to every item in its own thread; results go to a queue of ``queue_size``.

    ``drop`` says what happens to a result when that queue is full (see ``DROP_POLICIES``).
    ``stale``, if given, is asked about each input item as the stage takes it: an item for
    which it returns True is dropped unprocessed (counted in the stage's ``dropped``).
    """

    name: str
    fn: Callable[[Any], Any]
    queue_size: int = 2
    drop: str = "block"
    stale: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if self.drop not in DROP_POLICIES:
            raise ValueError(f"drop must be one of {DROP_POLICIES}, got {self.drop!r}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")


@dataclass
class StageStats:
    """What one stage did: busy time, items and frames out, drops, peak output queue."""

    name: str
    busy_s: float = 0.0
    items: int = 0
    frames: int = 0
    dropped: int = 0
    max_queued: int = 0

    @property
    def fps(self) -> float | None:
        """Frames per second of busy time: the stage's throughput when running alone."""
        return self.frames / self.busy_s if self.busy_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        fps = self.fps
        return {
            "busy_s": round(self.busy_s, 4),
            "items": self.items,
            "frames": self.frames,
            "fps": None if fps is None else round(fps, 2),
            "ms_per_frame": round(1000 * self.busy_s / self.frames, 3) if self.frames else None,
            "dropped": self.dropped,
            "max_queued": self.max_queued,
        }


class Pipeline:
    """Run ``source`` and ``stages`` in threads; iterate for the last stage's results in order.

    Args:
        source: an iterable run in its own thread (its iterator is closed in that thread).
        stages: applied in order to every item.
        source_name: the name of the source stage in ``stats``.
        queue_size: size of the source's output queue.
        drop: the source's policy when that queue is full.
        count: the number of frames in an item (``len`` for batches); 1 by default.
        stop: set it (from any thread, or a signal handler) to stop every stage; the iteration
            then ends without error.

    A Pipeline runs once.
    """

    def __init__(
        self,
        source: Iterable[Any],
        stages: Sequence[Stage],
        *,
        source_name: str = "source",
        queue_size: int = 2,
        drop: str = "block",
        count: Callable[[Any], int] | None = None,
        stop: threading.Event | None = None,
    ):
        self._source = Stage(source_name, iter, queue_size, drop)  # its thread runs `next`
        self._iterable = source
        self._stages = list(stages)
        self._count = count or (lambda item: 1)
        self.stop = stop or threading.Event()
        everything = [self._source, *self._stages]
        self.stats = {s.name: StageStats(s.name) for s in everything}
        if len(self.stats) != len(everything):
            raise ValueError("stage names must be distinct")
        self._queues = [queue.Queue(s.queue_size) for s in everything]
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._started = False
        self._threads: list[threading.Thread] = []

    def __iter__(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError("a Pipeline runs only once")
        self._started = True
        threads = [threading.Thread(target=self._run_source, name=self._source.name, daemon=True)]
        for i, stage in enumerate(self._stages):
            args = (stage, self._queues[i], self._queues[i + 1])
            threads.append(threading.Thread(target=self._run_stage, args=args, name=stage.name,
                                            daemon=True))  # fmt: skip
        self._threads = threads
        _RUNNING.add(self)
        for thread in threads:
            thread.start()
        finished = False
        try:
            while (item := self._get(self._queues[-1])) is not _END:
                yield item
            finished = True
        finally:
            if not finished:
                self.stop.set()
            for thread in threads:
                thread.join()
            _RUNNING.discard(self)
        if self._error is not None:
            raise self._error

    def run(self) -> dict[str, StageStats]:
        """Drain the pipeline (the last stage is the sink) and return the stage stats."""
        for _ in self:
            pass
        return self.stats

    # --- threads -----------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = error
        self.stop.set()

    def _get(self, q: queue.Queue) -> Any:
        """The next item of ``q``, or ``_END`` once the pipeline stops."""
        while True:
            if self.stop.is_set():
                if self._error is not None:
                    raise self._error
                return _END
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _put(self, stage: Stage, q: queue.Queue, item: Any) -> bool:
        """Put ``item`` by the stage's drop policy; False once the pipeline stops."""
        stats = self.stats[stage.name]
        if stage.drop == "drop_new" and item is not _END:
            try:
                q.put_nowait(item)
            except queue.Full:
                stats.dropped += 1
        elif stage.drop == "keep_latest" and item is not _END:
            while True:  # this thread is the queue's only producer: room appears at once
                try:
                    q.put_nowait(item)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                        stats.dropped += 1
                    except queue.Empty:
                        pass
        else:
            while True:
                if self.stop.is_set():
                    return False
                try:
                    q.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
        stats.max_queued = max(stats.max_queued, q.qsize())
        return not self.stop.is_set()

    def _record(self, name: str, busy: float, item: Any) -> None:
        stats = self.stats[name]
        stats.busy_s += busy
        stats.items += 1
        stats.frames += self._count(item)

    def _run_source(self) -> None:
        stage, out = self._source, self._queues[0]
        iterator = iter(self._iterable)
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                item = next(iterator, _END)
                if item is _END:
                    self._put(stage, out, _END)
                    return
                self._record(stage.name, time.perf_counter() - t0, item)
                if not self._put(stage, out, item):
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _run_stage(self, stage: Stage, inbox: queue.Queue, out: queue.Queue) -> None:
        try:
            while (item := self._get(inbox)) is not _END:
                if stage.stale is not None and stage.stale(item):
                    self.stats[stage.name].dropped += 1
                    continue
                t0 = time.perf_counter()
                result = stage.fn(item)
                self._record(stage.name, time.perf_counter() - t0, result)
                if not self._put(stage, out, result):
                    return
            self._put(stage, out, _END)
        except BaseException as exc:
            self._fail(exc)


# --- segmentation stages ----------------------------------------------------------------------


@dataclass
class Batch:
    """Frames travelling through the segmentation stages; each stage fills in its field."""

    frames: list[Frame]
    released: float = field(default_factory=time.perf_counter)  # when the source let it go
    inputs: torch.Tensor | None = None  # uint8 NHWC on the predictor's device
    predictions: list[Prediction] | None = None
    instruments: list[list[dict[str, Any]]] | None = None  # per frame, JSON-ready

    def __len__(self) -> int:
        return len(self.frames)


def batched(frames: Iterable[Frame], size: int) -> Iterator[Batch]:
    """Group ``frames`` into batches of ``size`` (the last one may be shorter)."""
    frames = iter(frames)
    try:
        while chunk := [f for _, f in zip(range(size), frames, strict=False)]:
            yield Batch(chunk)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def upload(predictor: Predictor) -> Callable[[Batch], Batch]:
    """Preprocess stage: stack a batch's frames into one uint8 NHWC tensor on the device
    (pinned and copied asynchronously on CUDA). Resizing and normalizing run on the device, in
    the inference stage (``Predictor.predict_torch``)."""

    def run(batch: Batch) -> Batch:
        inputs = torch.from_numpy(np.stack([f.image for f in batch.frames]))
        if predictor.device.type == "cuda":
            inputs = inputs.pin_memory()
        batch.inputs = inputs.to(predictor.device, non_blocking=True)
        return batch

    return run


def infer(predictor: Predictor) -> Callable[[Batch], Batch]:
    """Inference stage: labels and confidence for an uploaded batch, back on the CPU."""

    def run(batch: Batch) -> Batch:
        labels, conf = predictor.predict_torch(batch.inputs)
        labels, conf = labels.cpu().numpy(), conf.cpu().numpy()
        batch.inputs = None
        batch.predictions = [Prediction(m, c) for m, c in zip(labels, conf, strict=True)]
        return batch

    return run


class PoseCues:
    """Pose-cue stage: instruments of every predicted mask, tracked across frames.

    Args:
        task: the checkpoint's task.
        view: "auto" estimates the endoscope's field of view from the first frame; "full"
            uses the whole frame.
        min_area, border_band, tip_band: see ``surgseg.cues.find_instruments``.
        track_max_distance, track_max_missed: see ``surgseg.cues.Tracker``.
    """

    def __init__(
        self,
        *,
        task: str,
        view: str = "auto",
        min_area: int = 50,
        border_band: float = 3.0,
        tip_band: float = 2.0,
        track_max_distance: float = 80.0,
        track_max_missed: int = 10,
    ):
        if view not in ("auto", "full"):
            raise ConfigError(f"cues view must be 'auto' or 'full', got {view!r}")
        self.task = task
        self.auto_view = view == "auto"
        self.view: np.ndarray | None = None
        self.params = {"min_area": min_area, "border_band": border_band, "tip_band": tip_band}
        self.tracker = Tracker(max_distance=track_max_distance, max_missed=track_max_missed)

    def frame(self, image: np.ndarray, prediction: Prediction) -> list[dict[str, Any]]:
        """The tracked instruments of one frame as JSON-ready dicts."""
        if self.auto_view and self.view is None:
            self.view = estimate_view(image)
        found = find_instruments(prediction.mask, task=self.task,
                                 confidence=prediction.confidence, view=self.view,
                                 **self.params)  # fmt: skip
        return [inst.to_dict() for inst in self.tracker.update(found)]

    def __call__(self, batch: Batch) -> Batch:
        pairs = zip(batch.frames, batch.predictions, strict=True)
        batch.instruments = [self.frame(f.image, p) for f, p in pairs]
        return batch


def cue_record(frame: Frame, instruments: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``cues.jsonl`` line of one frame."""
    return {"index": frame.index, "pts": frame.pts, "time_s": round(frame.time_s, 6),
            "instruments": instruments}  # fmt: skip


class Write:
    """Sink stage: each frame's mask, cue line and (optionally) overlay frame.

    ``masks``, ``cues`` and ``overlay`` are open ``surgseg.sinks`` writers (any may be None);
    the caller closes them.
    """

    def __init__(self, *, masks: Any = None, cues: Any = None, overlay: Any = None):
        self.masks, self.cues, self.overlay = masks, cues, overlay

    def __call__(self, batch: Batch) -> Batch:
        for frame, pred, found in zip(batch.frames, batch.predictions, batch.instruments,
                                      strict=True):  # fmt: skip
            if self.masks is not None:
                self.masks.write(frame.index, frame.pts, pred.mask)
            if self.cues is not None:
                self.cues.write(cue_record(frame, found))
            if self.overlay is not None:
                self.overlay.write(frame.image, pred.mask, found, frame.pts)
        return batch


def segmentation_pipeline(
    frames: Iterable[Frame],
    *,
    predictor: Predictor,
    cues: PoseCues,
    write: Write,
    batch_size: int = 4,
    queue_size: int = 2,
    stop: threading.Event | None = None,
) -> Pipeline:
    """The offline pipeline: decode → preprocess → inference → cues → write, in batches, with
    backpressure (nothing dropped). Iterate it for the written batches, in frame order."""
    return Pipeline(
        batched(frames, batch_size),
        [Stage("preprocess", upload(predictor), queue_size),
         Stage("inference", infer(predictor), queue_size),
         Stage("cues", cues, queue_size),
         Stage("write", write, queue_size)],
        source_name="decode",
        queue_size=queue_size,
        count=len,
        stop=stop,
    )  # fmt: skip
