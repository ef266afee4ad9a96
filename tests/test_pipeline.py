"""The generic concurrent pipeline: order, backpressure, drop policies, stop, errors."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from surgseg.pipeline import Pipeline, Stage


def _no_stage_threads() -> bool:
    return not any(t.name in {"source", "a", "b", "slow", "boom"} for t in threading.enumerate())


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


def test_stage_validation():
    with pytest.raises(ValueError, match="drop"):
        Stage("a", abs, drop="newest")
    with pytest.raises(ValueError, match="distinct"):
        Pipeline([], [Stage("a", abs), Stage("a", abs)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_capture_inside_the_threaded_pipeline(make_checkpoint):
    """The graph is captured in the inference thread while the upload thread pins memory and
    copies; the short last batch (7 frames in batches of 3) replays the graph padded."""
    from _engine_utils import sharpen_checkpoint

    from surgseg.decode import Frame
    from surgseg.pipeline import PoseCues, Write, segmentation_pipeline
    from surgseg.predictor import Predictor

    ckpt = sharpen_checkpoint(make_checkpoint("parts"))
    rng = np.random.default_rng(0)
    frames = [Frame(i, i, i / 25, rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
              for i in range(7)]  # fmt: skip
    ref = Predictor.from_checkpoint(ckpt, device="cuda").predict([f.image for f in frames])
    graphs = Predictor.from_checkpoint(ckpt, device="cuda", cuda_graphs=True)
    for _ in range(2):  # a second video replays the graphs captured by the first
        pipe = segmentation_pipeline(iter(frames), predictor=graphs,
                                     cues=PoseCues(task="parts", view="full"), write=Write(),
                                     batch_size=3)  # fmt: skip
        masks = [p.mask for batch in pipe for p in batch.predictions]
        assert len(masks) == 7
        agree = np.mean([(m == r.mask).mean() for m, r in zip(masks, ref, strict=True)])
        assert agree >= 0.995
    assert len(graphs.engine._graphs) == 1
