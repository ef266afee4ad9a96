"""Live-feed processing: a video file played as a camera, each result emitted when ready.

In real time, each frame is released at its presentation time (wall clock counted from the
first frame) and the source never waits for the model. When the model falls behind, the one
waiting slot between the source and the model is managed by a drop policy:

* ``keep_latest``: a new frame replaces the waiting one (the older frame is dropped), so the
  model always works on the newest frame: the lowest latency. A frame that has already
  waited more than ``max_age`` frame intervals when the model frees up is dropped too, and the
  model takes the next frame: latency stays within ``max_age`` intervals + the model's time.
* ``drop_new``: a new frame is dropped while one is waiting, so the model works on the frame
  that has waited longest: regular sampling, higher latency.

With ``realtime=False`` frames go as fast as the model takes them and nothing is dropped (the
source waits instead). A frame's latency runs from its release to the moment its result is
handed to the caller::

    for result in surgseg.stream("case.mp4", checkpoint="model.pt", realtime=True):
        print(result.index, result.latency_s, result.cues)
"""

from __future__ import annotations

import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from surgseg.decode import DecodeStats, Frame, VideoInfo, VideoReader
from surgseg.errors import ConfigError
from surgseg.options import CueOptions, Workers
from surgseg.pipeline import Pipeline, Stage, StageStats
from surgseg.predictor import Prediction, Predictor
from surgseg.stages import Batch, cue_stages, model_record, predict
from surgseg.tip_refine import check_engine

DROP_POLICIES = ("keep_latest", "drop_new")


@dataclass
class StreamResult:
    """One frame's result, emitted as soon as it is ready."""

    index: int  # the frame's index in the video
    pts: int | None
    time_s: float  # the frame's presentation time
    mask: np.ndarray  # (H, W) uint8 class index
    confidence: np.ndarray  # (H, W) uint8: probability of the chosen class × 255
    cues: list[dict[str, Any]]  # tracked instruments, as in cues.jsonl
    latency_s: float  # from the frame's release to this result
    corrupt: bool = False  # the decoder flagged the frame as damaged
    gap: int = 0  # frames the decoder lost just before this one
    frame: Frame | None = field(default=None, repr=False)  # the decoded frame (its image too)

    @property
    def prediction(self) -> Prediction:
        """The mask and confidence as the predictor returned them."""
        return Prediction(self.mask, self.confidence)


class Pacer:
    """Releases each frame as a batch of one; in real time, at its presentation time.
    ``waited_s`` is the time spent waiting for the times of the frames released (not
    decoding): a wait cut short by ``stop`` releases no frame and is not counted, so that
    ``waited_s`` stays within the time the source spent producing the frames it released."""

    def __init__(self, *, realtime: bool, stop: threading.Event | None = None):
        self.realtime = realtime
        self.stop = stop or threading.Event()
        self.waited_s = 0.0

    def __call__(self, frames: Iterable[Frame]) -> Iterator[Batch]:
        start = None
        for frame in frames:
            if self.realtime:
                now = time.perf_counter()
                if start is None:
                    start = now - frame.time_s
                delay = start + frame.time_s - now
                if delay > 0:
                    if self.stop.wait(delay):
                        return
                    self.waited_s += time.perf_counter() - now
            yield Batch([frame])


def _older_than(seconds: float) -> Callable[[Batch], bool]:
    """True for a batch released more than ``seconds`` ago."""

    def stale(batch: Batch) -> bool:
        return time.perf_counter() - batch.released > seconds

    return stale


def percentiles_ms(values_s: Iterable[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of latencies given in seconds, in milliseconds."""
    values = np.asarray(values_s, dtype=np.float64) * 1000
    if values.size == 0:
        return dict.fromkeys(("p50", "p95", "p99", "max", "mean"))
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2), "max": round(float(values.max()), 2),
            "mean": round(float(values.mean()), 2)}  # fmt: skip


class LiveStream:
    """Iterate for ``StreamResult``s of ``video``; see ``stream``. Runs once.

    After (or during) the iteration, ``summary()`` gives the counts, latency percentiles and
    per-stage figures; ``info`` is the video's ``VideoInfo`` once iteration has started.
    ``close()`` (or leaving a ``with`` block) stops every stage.
    """

    def __init__(
        self,
        video: str | Path,
        predictor: Predictor,
        *,
        realtime: bool = True,
        drop: str = "keep_latest",
        queue_size: int = 1,
        max_age: float | None = 0.5,
        cues: CueOptions | None = None,
        workers: Workers | None = None,
        stop: threading.Event | None = None,
    ):
        if drop not in DROP_POLICIES:
            raise ConfigError(f"drop must be one of {DROP_POLICIES}, got {drop!r}")
        if max_age is not None and (
            isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age >= 0
        ):
            raise ConfigError(f"max_age must be null or a number ≥ 0, got {max_age!r}")
        if cues is not None and cues.refine_tips:
            check_engine(predictor)
        self.video = Path(video)
        self.predictor = predictor
        self.realtime = realtime
        self.drop = drop
        self.queue_size = queue_size
        self.max_age = max_age
        self.cues = cues or CueOptions()
        self.workers = workers or Workers()
        self.stop = stop or threading.Event()
        self.info: VideoInfo | None = None
        self.decode: DecodeStats | None = None  # what decoding lost, whole once complete
        self.latencies = array("d")  # seconds, 8 bytes per emitted frame
        self.complete = False  # True once the whole video went through
        self._pipeline: Pipeline | None = None
        self._pacer: Pacer | None = None
        # A weak reference: leaving a ``for`` loop early drops the only strong one, which
        # closes the generator and with it every stage.
        self._results: weakref.ref[Iterator[StreamResult]] | None = None
        self._started = 0.0
        self._wall = 0.0

    def __iter__(self) -> Iterator[StreamResult]:
        if self._results is not None:
            raise RuntimeError("a LiveStream runs only once")
        results = self._run()
        self._results = weakref.ref(results)
        return results

    def _run(self) -> Iterator[StreamResult]:
        predictor = self.predictor
        with VideoReader(self.video) as reader:
            self.info, self.decode = reader.info, reader.stats
            stale = None
            if self.realtime and self.drop == "keep_latest" and self.max_age is not None:
                stale = _older_than(self.max_age / (self.info.fps or 25.0))
            self._pacer = Pacer(realtime=self.realtime, stop=self.stop)
            self._pipeline = Pipeline(
                self._pacer(reader),
                # Cue geometry in threads: a hop to a worker process (a copy and two wake-ups
                # per frame) buys throughput a live feed does not need, at some latency.
                [Stage("segment", predict(predictor), queue_size=1, stale=stale),
                 *cue_stages(predictor, self.cues, workers=self.workers.locate, queue_size=1,
                             processes=False)],
                source_name="decode",
                queue_size=self.queue_size,
                drop=self.drop if self.realtime else "block",
                count=len,
                stop=self.stop,
            )  # fmt: skip
            self._started = time.perf_counter()
            batches = iter(self._pipeline)
            try:
                for batch in batches:
                    latency = time.perf_counter() - batch.released
                    self.latencies.append(latency)
                    frame, pred = batch.frames[0], batch.predictions[0]
                    yield StreamResult(frame.index, frame.pts, frame.time_s, pred.mask,
                                       pred.confidence, batch.instruments[0], latency,
                                       frame.corrupt, frame.gap, frame)  # fmt: skip
            finally:
                self._wall = time.perf_counter() - self._started
                # Stop every stage and join its thread now (a no-op once the pipeline ended),
                # so that the counts and times the summary reads no longer move.
                batches.close()
            self.complete = not self.stop.is_set()

    def close(self) -> None:
        """Stop every stage and end the iteration."""
        self.stop.set()
        results = self._results() if self._results is not None else None
        if results is not None:
            results.close()

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stage_stats(self) -> dict[str, StageStats]:
        """The pipeline's stage stats, the decode stage's busy time without the waits for
        the frames' times (in real time): its decoding time only."""
        stats = dict(self._pipeline.stats) if self._pipeline is not None else {}
        source = stats.get("decode")
        if source is not None and self._pacer is not None:
            # Each counted wait lies within the busy time of the frame it released, once
            # the stages have stopped; while they run, a frame's wait is counted a moment
            # before its busy time.
            busy = max(0.0, source.busy_s - self._pacer.waited_s)
            stats["decode"] = replace(source, busy_s=busy)
        return stats

    def summary(self) -> dict[str, Any]:
        """Frames released, emitted, dropped and in flight; latency percentiles (ms); the
        model (task, classes and their mask values, input size, engine, device); stage
        figures; what decoding lost (``DecodeStats.to_dict()``: frames cut off the end
        counted once the video went through).

        Every released frame is emitted, dropped or in flight: ``frames_released`` =
        ``frames_emitted`` + ``frames_dropped`` + ``frames_in_flight``. In flight are the
        frames in the stages (waiting for the model or in it, or for the cue stages) when
        the summary is taken: 0 once the whole video went through; after a stop (``break``,
        ``close()``, the ``stop`` event, Ctrl-C, an error) the frames the stop cut off,
        neither emitted nor dropped by the drop policy.
        """
        # Read in the order frames pass the counters (emitted, then dropped, then released:
        # a frame is counted released before it can be dropped or emitted), so that a
        # summary taken while the stream runs never counts more out than in.
        counters = self._pipeline.stats if self._pipeline is not None else {}
        emitted = len(self.latencies)
        dropped = sum(counters[name].dropped for name in ("decode", "segment")
                      if name in counters)  # fmt: skip
        released = counters["decode"].frames if "decode" in counters else 0
        stats = self._stage_stats()
        wall = self._wall or (time.perf_counter() - self._started if self._started else 0.0)
        fps = self.info.fps if self.info is not None else None
        return {
            "input": str(self.video),
            "realtime": self.realtime,
            "drop": self.drop if self.realtime else None,
            "frames_released": released,
            "frames_emitted": emitted,
            "frames_dropped": dropped,
            "frames_in_flight": released - emitted - dropped,
            "video_fps": fps,
            "frame_interval_ms": round(1000 / fps, 3) if fps else None,
            "emitted_fps": round(emitted / wall, 2) if wall > 0 else None,
            "latency_ms": percentiles_ms(self.latencies),
            "wall_s": round(wall, 3),
            "complete": self.complete,  # False: stopped early (stop, close(), Ctrl-C, error)
            "decode": self.decode.to_dict() if self.decode is not None else None,
            "model": model_record(self.predictor),
            "stages": {name: s.to_dict() for name, s in stats.items()},
        }


def stream(
    video: str | Path,
    *,
    checkpoint: str | Path | None = None,
    predictor: Predictor | None = None,
    engine: str = "torch",
    device: str = "cpu",
    task: str | None = None,
    input_size: tuple[int, int] | None = None,
    realtime: bool = True,
    drop: str = "keep_latest",
    queue_size: int = 1,
    max_age: float | None = 0.5,
    cues: CueOptions | None = None,
    workers: Workers | None = None,
    stop: threading.Event | None = None,
    **engine_options: Any,
) -> LiveStream:
    """Play ``video`` as a live source and segment it frame by frame (batch 1).

    Give either ``checkpoint`` (loaded with ``engine`` on ``device``) or a ready ``predictor``.

    Args:
        realtime: release frames at their presentation times and drop frames by ``drop`` when
            the model falls behind; False: as fast as possible, nothing dropped.
        drop: ``keep_latest`` or ``drop_new`` (see the module docstring).
        queue_size: frames that may wait for the model.
        max_age: with ``keep_latest``, drop a frame that waited longer than this many frame
            intervals for the model (None: never).
        cues: pose-cue and tracking parameters.
        workers: worker threads of the cue geometry stage (threads, not the offline
            pipeline's worker processes: a live feed needs latency more than throughput).
        stop: set it to end the stream.

    Returns a ``LiveStream``: iterate it for ``StreamResult``s, then call ``summary()``.
    """
    if (checkpoint is None) == (predictor is None):
        raise ConfigError("give exactly one of checkpoint and predictor")
    if predictor is None:
        predictor = Predictor.from_checkpoint(checkpoint, engine=engine, device=device,
                                              task=task, input_size=input_size,
                                              **engine_options)  # fmt: skip
    return LiveStream(video, predictor, realtime=realtime, drop=drop, queue_size=queue_size,
                      max_age=max_age, cues=cues, workers=workers, stop=stop)  # fmt: skip
