"""The generic concurrent pipeline: order, backpressure, drop policies, stop, errors."""

from __future__ import annotations

import random
import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from surgseg.pipeline import Pipeline, Stage


def _no_stage_threads() -> bool:
    names = {"source", "a", "b", "slow", "boom", "pool"}
    return not any(t.name.split("_")[0] in names for t in threading.enumerate())


def test_results_come_out_in_source_order_with_random_delays():
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.004) for _ in range(60)]

    def jitter(item):
        time.sleep(delays[item])
        return item

    pipe = Pipeline(range(60), [Stage("a", jitter), Stage("b", jitter, queue_size=1)])
    assert list(pipe) == list(range(60))
    assert pipe.stats["a"].items == pipe.stats["b"].items == 60
    assert pipe.stats["a"].busy_s >= sum(delays) * 0.9
    assert _no_stage_threads()


def test_slow_sink_bounds_items_in_flight():
    produced, consumed = [], []
    in_flight = []

    def source():
        for i in range(40):
            produced.append(i)
            in_flight.append(len(produced) - len(consumed))
            yield i

    pipe = Pipeline(source(), [Stage("a", lambda x: x, queue_size=2)], queue_size=3)
    for item in pipe:
        time.sleep(0.003)  # the slow sink
        consumed.append(item)
    assert consumed == list(range(40))
    # source queue 3 + stage queue 2 + one item inside the stage + one in the caller + the new one
    assert max(in_flight) <= 3 + 2 + 1 + 1 + 1
    assert pipe.stats["source"].max_queued <= 3
    assert pipe.stats["a"].max_queued <= 2
    assert pipe.stats["source"].dropped == 0


@pytest.mark.parametrize("drop", ["keep_latest", "drop_new"])
def test_drop_policies_never_block_the_source(drop):
    def fast_source():
        for i in range(50):
            time.sleep(0.001)
            yield i

    def slow(item):
        time.sleep(0.01)
        return item

    pipe = Pipeline(fast_source(), [Stage("slow", slow)], queue_size=1, drop=drop)
    out = list(pipe)
    stats = pipe.stats["source"]
    assert stats.dropped > 10
    assert len(out) + stats.dropped == 50
    assert out == sorted(out) and len(set(out)) == len(out)
    if drop == "keep_latest":  # the newest item always gets through
        assert out[-1] == 49


def test_stale_items_are_dropped_unprocessed():
    seen = []

    def record(item):
        seen.append(item)
        return item

    pipe = Pipeline(range(20), [Stage("a", record, stale=lambda i: i % 3 == 0)])
    out = list(pipe)
    assert out == seen == [i for i in range(20) if i % 3]
    assert pipe.stats["a"].dropped == 7 and pipe.stats["a"].items == 13
    assert _no_stage_threads()


@pytest.mark.parametrize("where", ["source", "a", "b"])
def test_an_exception_in_any_stage_reaches_the_caller_and_stops_all(where):
    def maybe_fail(name):
        def fn(item):
            if name == where and item == 5:
                raise ValueError(f"bad item in {name}")
            return item

        return fn

    def source():
        for i in range(1000):
            if where == "source" and i == 5:
                raise ValueError("bad item in source")
            yield i

    pipe = Pipeline(source(), [Stage("a", maybe_fail("a")), Stage("b", maybe_fail("b"))])
    seen = []
    with pytest.raises(ValueError, match=f"bad item in {where}"):
        for item in pipe:
            seen.append(item)
    assert seen == list(range(len(seen))) and len(seen) <= 5
    assert _no_stage_threads()


def test_stop_event_ends_iteration_quietly_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stop = threading.Event()
    pipe = Pipeline(endless(), [Stage("a", lambda x: x)], stop=stop)
    seen = []
    for item in pipe:
        seen.append(item)
        if item == 20:
            stop.set()
    assert seen[:21] == list(range(21))
    assert closed.is_set() and _no_stage_threads()


def test_keyboard_interrupt_in_the_caller_stops_all_threads():
    pipe = Pipeline(iter(range(10**9)), [Stage("slow", lambda x: time.sleep(0.001) or x)])
    with pytest.raises(KeyboardInterrupt):
        for item in pipe:
            if item == 10:
                raise KeyboardInterrupt
    assert _no_stage_threads()


def test_closing_the_iterator_early_stops_all_threads():
    results = iter(Pipeline(iter(range(10**9)), [Stage("a", lambda x: x)]))
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    results.close()
    assert _no_stage_threads()


def test_workers_keep_source_order_and_run_at_once():
    rng = random.Random(1)
    delays = [rng.uniform(0, 0.01) for _ in range(80)]
    running, peak, lock = [0], [0], threading.Lock()

    def jitter(item):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(delays[item])
        with lock:
            running[0] -= 1
        return item

    pipe = Pipeline(range(80), [Stage("pool", jitter, workers=4), Stage("a", lambda x: x)])
    assert list(pipe) == list(range(80))
    stats = pipe.stats["pool"]
    assert stats.items == 80 and stats.workers == 4 and peak[0] == 4
    assert stats.busy_s >= sum(delays) * 0.9  # busy time of all workers together
    assert _no_stage_threads()


def test_a_worker_result_leaves_without_waiting_for_the_next_item():
    """A live source: each result must come out when ready, not when the next item arrives."""

    def slow_source():
        for i in range(3):
            yield i
            time.sleep(0.5)

    t0 = time.perf_counter()
    arrivals = [time.perf_counter() - t0 for _ in Pipeline(slow_source(),
                                                           [Stage("pool", abs, workers=2)])]
    assert len(arrivals) == 3 and arrivals[0] < 0.25 and arrivals[1] < 0.75  # fmt: skip


def test_an_exception_inside_a_worker_reaches_the_caller_and_stops_all():
    def fail_at_17(item):
        time.sleep(0.001)
        if item == 17:
            raise ValueError("bad item 17")
        return item

    pipe = Pipeline(iter(range(10**9)), [Stage("pool", fail_at_17, workers=3)])
    seen = []
    with pytest.raises(ValueError, match="bad item 17"):
        for item in pipe:
            seen.append(item)
    assert seen == list(range(len(seen))) and len(seen) <= 17
    assert _no_stage_threads()


@pytest.mark.parametrize("how", ["stop", "ctrl_c"])
def test_stop_and_ctrl_c_with_workers_running(how):
    stop = threading.Event()
    slow = Stage("pool", lambda x: time.sleep(0.005) or x, workers=3)
    pipe = Pipeline(iter(range(10**9)), [slow], stop=stop)
    seen = []
    with pytest.raises(KeyboardInterrupt) if how == "ctrl_c" else nullcontext():
        for item in pipe:
            seen.append(item)
            if item == 12:
                if how == "ctrl_c":
                    raise KeyboardInterrupt
                stop.set()
    assert seen[:13] == list(range(13))
    assert _no_stage_threads()


def test_stage_validation():
    with pytest.raises(ValueError, match="workers"):
        Stage("a", abs, workers=0)
    with pytest.raises(ValueError, match="drop"):
        Stage("a", abs, drop="newest")
    with pytest.raises(ValueError, match="distinct"):
        Pipeline([], [Stage("a", abs), Stage("a", abs)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_capture_inside_the_threaded_pipeline(make_checkpoint):
    """The graph is captured in the segment thread while the upload thread pins memory and
    copies; the short last batch (7 frames in batches of 3) replays the graph padded; pinned
    host buffers are reused from torch's cache, not allocated per batch."""
    from _engine_utils import sharpen_checkpoint

    from surgseg.decode import Frame
    from surgseg.options import CueOptions
    from surgseg.predictor import Predictor
    from surgseg.stages import segmentation_pipeline

    ckpt = sharpen_checkpoint(make_checkpoint("parts"))
    rng = np.random.default_rng(0)
    frames = [Frame(i, i, i / 25, rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
              for i in range(7)]  # fmt: skip
    ref = Predictor.from_checkpoint(ckpt, device="cuda").predict([f.image for f in frames])
    graphs = Predictor.from_checkpoint(ckpt, device="cuda", cuda_graphs=True)
    allocations = []
    for _ in range(3):  # later videos replay the graph captured by the first
        pipe = segmentation_pipeline(iter(frames), predictor=graphs, outputs=None,
                                     cues=CueOptions(view="full"), batch_size=3)  # fmt: skip
        predictions = [p for batch in pipe for p in batch.predictions]
        assert len(predictions) == 7
        agree = np.mean([(p.mask == r.mask).mean() for p, r in zip(predictions, ref, strict=True)])
        assert agree >= 0.995
        conf = np.mean([np.abs(p.confidence.astype(int) - r.confidence).mean()
                        for p, r in zip(predictions, ref, strict=True)])  # fmt: skip
        assert conf <= 1.0
        allocations.append(torch.cuda.host_memory_stats()["num_host_alloc"])
    assert len(graphs.engine._graphs) == 1
    assert allocations[2] == allocations[1]  # the third video allocated no pinned memory
