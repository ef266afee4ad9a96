"""Concurrent stages joined by bounded queues.

A stage is a function, a thread that applies it to every item, and a bounded output queue::

    source ──q──▶ stage 1 ──q──▶ stage 2 ──q──▶ … ──q──▶ the caller iterating the Pipeline

Decoding (PyAV), inference (torch) and writing (OpenCV, PyAV) release the GIL, so the stages
overlap. A stage has one thread, or, with ``workers`` > 1, one thread that hands items to a
pool of worker threads and puts their results back in input order; the queues are FIFO, so
items come out in source order. Workers suit stateless work that releases the GIL.
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

The segmentation stages built on this (decode → upload → segment → … → write) are in
``surgseg.stages``.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

DROP_POLICIES = ("block", "keep_latest", "drop_new")
_POLL_S = 0.05  # how often a blocked thread looks at the stop event
_END = object()  # put after the last item
_RUNNING: weakref.WeakSet[Pipeline] = weakref.WeakSet()  # pipelines whose threads run
_ITEM = threading.local()  # CPU time charged to the item in hand by ``charge_cpu``


def charge_cpu(seconds: float) -> None:
    """Count ``seconds`` of CPU time spent elsewhere on the item in hand (in a worker
    process) in the current stage's CPU time; no effect outside a stage's function."""
    if getattr(_ITEM, "cpu_s", None) is not None:
        _ITEM.cpu_s += seconds


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
    ``workers`` > 1 applies ``fn`` to up to ``2 × workers`` items at once on that many
    threads (``fn`` must then be thread-safe); results still leave in input order.
    """

    name: str
    fn: Callable[[Any], Any]
    queue_size: int = 2
    drop: str = "block"
    stale: Callable[[Any], bool] | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.drop not in DROP_POLICIES:
            raise ValueError(f"drop must be one of {DROP_POLICIES}, got {self.drop!r}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class StageStats:
    """What one stage did: busy time (summed over its workers), the CPU time of the threads
    that ran it (and of worker processes it charged with ``charge_cpu``), items and frames
    out, drops, peak output queue."""

    name: str
    workers: int = 1
    busy_s: float = 0.0
    cpu_s: float = 0.0
    items: int = 0
    frames: int = 0
    dropped: int = 0
    max_queued: int = 0

    @property
    def fps(self) -> float | None:
        """Frames per second of busy time of all workers together: the stage's throughput when
        running alone with its ``workers``, if they never waited for each other."""
        return self.workers * self.frames / self.busy_s if self.busy_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        fps = self.fps

        def per_frame(seconds: float) -> float | None:
            return round(1000 * seconds / self.frames, 3) if self.frames else None

        return {
            "workers": self.workers,
            "busy_s": round(self.busy_s, 4),
            "items": self.items,
            "frames": self.frames,
            "fps": None if fps is None else round(fps, 2),
            "ms_per_frame": per_frame(self.busy_s),
            "thread_cpu_ms_per_frame": per_frame(self.cpu_s),
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
        self.stats = {s.name: StageStats(s.name, s.workers) for s in everything}
        self._stats_lock = threading.Lock()
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
        elif not self._wait_put(q, item):
            return False
        stats.max_queued = max(stats.max_queued, q.qsize())
        return not self.stop.is_set()

    def _wait_put(self, q: queue.Queue, item: Any) -> bool:
        """Put ``item``, waiting for room; False once the pipeline stops."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _record(self, name: str, busy: float, cpu: float, item: Any) -> None:
        stats = self.stats[name]
        with self._stats_lock:
            stats.busy_s += busy
            stats.cpu_s += cpu
            stats.items += 1
            stats.frames += self._count(item)

    def _apply(self, stage: Stage, item: Any) -> Any:
        """``stage.fn(item)``, timed (wall and this thread's CPU time) into its stats."""
        t0, c0 = time.perf_counter(), time.thread_time()
        _ITEM.cpu_s = 0.0
        try:
            result = stage.fn(item)
            elsewhere = _ITEM.cpu_s
        finally:
            _ITEM.cpu_s = None
        cpu = time.thread_time() - c0 + elsewhere
        self._record(stage.name, time.perf_counter() - t0, cpu, result)
        return result

    def _run_source(self) -> None:
        stage, out = self._source, self._queues[0]
        iterator = iter(self._iterable)
        try:
            while not self.stop.is_set():
                t0, c0 = time.perf_counter(), time.thread_time()
                item = next(iterator, _END)
                if item is _END:
                    self._put(stage, out, _END)
                    return
                self._record(stage.name, time.perf_counter() - t0, time.thread_time() - c0, item)
                if not self._put(stage, out, item):
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _items(self, stage: Stage, inbox: queue.Queue) -> Iterator[Any]:
        """The stage's input items, without the stale ones, until the end or a stop."""
        while (item := self._get(inbox)) is not _END:
            if stage.stale is not None and stage.stale(item):
                self.stats[stage.name].dropped += 1
                continue
            yield item

    def _run_stage(self, stage: Stage, inbox: queue.Queue, out: queue.Queue) -> None:
        try:
            run = self._run_serial if stage.workers == 1 else self._run_workers
            if run(stage, inbox, out):
                self._put(stage, out, _END)
        except BaseException as exc:
            self._fail(exc)

    def _run_serial(self, stage: Stage, inbox: queue.Queue, out: queue.Queue) -> bool:
        """Apply the stage to every item in this thread; False once the pipeline stops."""
        return all(self._put(stage, out, self._apply(stage, item))
                   for item in self._items(stage, inbox))  # fmt: skip

    def _run_workers(self, stage: Stage, inbox: queue.Queue, out: queue.Queue) -> bool:
        """Apply the stage on ``stage.workers`` threads; False once the pipeline stops.

        A feeder thread submits the items (up to ``2 × workers`` in flight) and this thread
        passes each result on as soon as it and those before it are done.
        """
        window: queue.Queue = queue.Queue(2 * stage.workers)
        with ThreadPoolExecutor(stage.workers, thread_name_prefix=stage.name) as pool:

            def feed() -> None:
                try:
                    for item in self._items(stage, inbox):
                        if not self._wait_put(window, pool.submit(self._apply, stage, item)):
                            return
                    self._wait_put(window, _END)
                except BaseException as exc:
                    self._fail(exc)

            feeder = threading.Thread(target=feed, name=f"{stage.name}_feed", daemon=True)
            feeder.start()
            try:
                while (future := self._get(window)) is not _END:
                    if not self._put(stage, out, future.result()):
                        return False
                return True
            except BaseException as exc:
                self._fail(exc)
                raise
            finally:
                feeder.join()
                while not window.empty():
                    leftover = window.get_nowait()
                    if leftover is not _END:
                        leftover.cancel()
