"""The generic concurrent pipeline: order, backpressure, drop policies, stop, errors; the
locate stage's worker processes; workers do not change a run's outputs.

Every test here runs under a time limit (``time_limit``): a deadlock fails the test with
every thread's stack instead of hanging the suite.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import random
import tempfile
import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from surgseg.pipeline import Pipeline, Stage

LIMIT_S = 60.0  # far above what any test here needs on a loaded 2-core machine


def time_limit(seconds: float = LIMIT_S):
    """Run the test in a daemon thread and fail it, with every thread's stack, if it has not
    finished after ``seconds``: a deadlocked pipeline then fails fast instead of hanging the
    run (its threads, daemons, are left behind)."""

    def decorate(test):
        @functools.wraps(test)
        def guarded(*args, **kwargs):
            outcome: dict[str, BaseException] = {}

            def body() -> None:
                try:
                    test(*args, **kwargs)
                except BaseException as exc:  # re-raised in the test's own thread below
                    outcome["error"] = exc

            thread = threading.Thread(target=body, name="guarded", daemon=True)
            thread.start()
            thread.join(seconds)
            if thread.is_alive():
                with tempfile.TemporaryFile("w+") as stacks:
                    faulthandler.dump_traceback(stacks, all_threads=True)
                    stacks.seek(0)
                    pytest.fail(f"{test.__name__} did not finish within {seconds:g} s (a "
                                f"deadlock?); the threads were at:\n{stacks.read()}")  # fmt: skip
            if "error" in outcome:
                raise outcome["error"]

        return guarded

    return decorate


def _no_stage_threads() -> bool:
    names = {"source", "a", "b", "slow", "boom", "pool"}
    return not any(t.name.split("_")[0] in names for t in threading.enumerate())


@time_limit()
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


@time_limit()
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
@time_limit()
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


@time_limit()
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
@time_limit()
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


@time_limit()
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


@time_limit()
def test_keyboard_interrupt_in_the_caller_stops_all_threads():
    pipe = Pipeline(iter(range(10**9)), [Stage("slow", lambda x: time.sleep(0.001) or x)])
    with pytest.raises(KeyboardInterrupt):
        for item in pipe:
            if item == 10:
                raise KeyboardInterrupt
    assert _no_stage_threads()


@time_limit()
def test_closing_the_iterator_early_stops_all_threads():
    results = iter(Pipeline(iter(range(10**9)), [Stage("a", lambda x: x)]))
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    results.close()
    assert _no_stage_threads()


@time_limit()
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


@time_limit()
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


@time_limit()
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
@time_limit()
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


@time_limit()
def test_stage_validation():
    with pytest.raises(ValueError, match="workers"):
        Stage("a", abs, workers=0)
    with pytest.raises(ValueError, match="drop"):
        Stage("a", abs, drop="newest")
    with pytest.raises(ValueError, match="distinct"):
        Pipeline([], [Stage("a", abs), Stage("a", abs)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@time_limit()
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


def test_a_deadlock_fails_within_the_time_limit():
    release = threading.Event()

    @time_limit(0.5)
    def deadlocked():
        list(Pipeline(range(3), [Stage("stuck", lambda x: release.wait() and x)]))

    t0 = time.perf_counter()
    try:
        with pytest.raises(pytest.fail.Exception, match=r"did not finish within 0\.5 s") as failed:
            deadlocked()
    finally:
        release.set()  # let the stuck stage go, so its threads end
    assert time.perf_counter() - t0 < 5
    assert "in _run_stage" in str(failed.value)  # every thread's stack, the stuck one's too


# --- the locate stage's worker processes -------------------------------------------------------


def _parts_masks(n: int, *, seed: int = 0, size=(640, 512)):
    from surgseg.synthetic import SyntheticSurgery

    surgery = SyntheticSurgery(width=size[0], height=size[1], seed=seed, num_instruments=3)
    frames = [surgery.render(i) for i in range(n)]
    rng = np.random.default_rng(seed)
    confidence = [rng.integers(0, 256, f.parts.shape, dtype=np.uint8) for f in frames]
    return frames, confidence


@pytest.mark.parametrize("task", ["parts", "types"])
@time_limit()
def test_worker_processes_find_exactly_what_the_caller_would(task):
    """The locate stage with 2 workers runs ``find_instruments`` in worker processes (masks
    through shared memory); its instruments equal, field for field, those found in-process,
    in frame order, whatever batch each worker got."""
    from surgseg.cues import FieldOfView, find_instruments
    from surgseg.options import CueOptions
    from surgseg.predictor import Prediction
    from surgseg.stages import Batch, Locate

    frames, confidence = _parts_masks(10, seed=3)
    masks = [f.parts if task == "parts" else f.types for f in frames]
    options = CueOptions()
    locate = Locate(task=task, options=options, workers=2)
    assert locate.processes
    batches = []
    for i in range(0, 10, 3):
        batch = Batch([_frame(i + j, f.image) for j, f in enumerate(frames[i : i + 3])])
        batch.predictions = [Prediction(m, c) for m, c in zip(masks[i : i + 3],
                                                              confidence[i : i + 3],
                                                              strict=True)]  # fmt: skip
        batches.append(batch)
    from surgseg.cue_workers import worker_cpu_s

    before = worker_cpu_s()
    pipe = Pipeline(batches, [Stage("locate", locate, workers=2)], count=len)
    out = list(pipe)
    found = [inst for batch in out for inst in batch.found]
    # the workers' CPU time is the stage's: charged to it, not lost
    assert pipe.stats["locate"].cpu_s >= worker_cpu_s() - before > 0
    view = FieldOfView.from_image(frames[0].image)
    expected = [find_instruments(m, task=task, confidence=c, view=view,
                                 min_area=options.min_area, border_band=options.border_band,
                                 tip_band=options.tip_band)
                for m, c in zip(masks, confidence, strict=True)]  # fmt: skip
    assert len(found) == 10 and found == expected
    assert sum(len(f) for f in found) >= 10


def test_the_arena_takes_a_slot_back_when_its_last_view_is_gone():
    """``SharedArena.empty`` hands out slots of shared memory; a slot returns when nothing
    views it any more (numpy views, torch tensors), free neighbours join, and a request it
    cannot serve returns None. ``offset`` finds only whole contiguous arrays inside it."""
    import gc

    import torch

    from surgseg.cue_workers import SharedArena

    arena = SharedArena(4096)
    a, b = arena.empty((10, 100)), arena.empty((2, 500))
    assert (arena.offset(a), arena.offset(b)) == (0, 1024)  # 64-byte aligned
    assert arena.offset(a[3]) == 300 and arena.offset(a[:, 1]) is None
    assert arena.offset(np.zeros(10, np.uint8)) is None
    assert arena.empty((4096,)) is None and arena.misses == 1
    row, tensor = a[2], torch.from_numpy(b)
    del a, b
    gc.collect()
    assert arena.empty((3000,)) is None  # both still viewed
    del row
    gc.collect()
    c = arena.empty((1000,))
    assert arena.offset(c) == 0  # a's slot, free again
    del tensor, c
    gc.collect()
    assert arena.offset(arena.empty((4096,))) == 0  # the slots joined into one


@pytest.mark.parametrize("status", [0, 712])  # cudaSuccess; cudaErrorHostMemoryAlreadyRegistered
def test_the_arena_is_page_locked_once_for_cuda_or_not_used(monkeypatch, status):
    """For CUDA copies the whole arena is registered once (portable, in a thread of its own,
    so that a refusal's error state stays there); if CUDA refuses, pinned requests get None
    (the caller falls back to torch's pinned memory) and plain ones are still served."""
    from surgseg.cue_workers import SharedArena

    calls = []

    class Cudart:
        def cudaHostRegister(self, address, size, flags):
            calls.append((address, size, flags, threading.get_ident()))
            return status

    monkeypatch.setattr(torch.cuda, "cudart", Cudart)
    arena = SharedArena(1 << 16)
    first, second = arena.empty((8, 8), pinned=True), arena.empty((8, 8), pinned=True)
    assert len(calls) == 1 and calls[0][1:3] == (1 << 16, 1)
    assert calls[0][3] != threading.get_ident()
    assert calls[0][0] == arena._address
    if status == 0:
        assert arena.offset(first) == 0 and arena.offset(second) == 64
    else:
        assert first is None and second is None
    assert arena.offset(arena.empty((8, 8))) is not None


@time_limit()
def test_masks_in_the_arena_reach_a_worker_without_a_copy():
    """A worker reads masks allocated in the pool's arena where they are (its own buffer is
    never made); others are copied into its buffer; both give ``find_instruments``' result."""
    from surgseg.cue_workers import CuePool
    from surgseg.cues import FieldOfView, find_instruments

    frames, confidence = _parts_masks(2, seed=4)
    view = FieldOfView.from_image(frames[0].image)
    pool = CuePool()
    try:
        pool.reserve(1)
        masks = [pool.arena.empty(f.parts.shape) for f in frames]
        confs = [pool.arena.empty(c.shape) for c in confidence]
        for m, c, f, conf in zip(masks, confs, frames, confidence, strict=True):
            m[...], c[...] = f.parts, conf
        shared, _ = pool.locate(masks, confs, view=view, view_key=0, task="parts")
        worker = pool._workers[0]
        assert worker.has_arena and worker.buffer is None
        copied, _ = pool.locate([f.parts for f in frames], confidence, view=view, view_key=0,
                                task="parts")  # fmt: skip
        assert worker.buffer is not None
    finally:
        pool.close()
    expected = [find_instruments(f.parts, task="parts", confidence=c, view=view)
                for f, c in zip(frames, confidence, strict=True)]  # fmt: skip
    assert shared == copied == expected and sum(map(len, expected)) >= 2


@time_limit()
def test_the_segment_stage_leaves_masks_where_the_workers_read_them(make_checkpoint):
    """With worker processes finding the instruments, the offline pipeline's segment stage
    writes each batch's masks and confidence maps into their shared arena (nothing is copied
    on the way to them); with one worker, in ordinary memory."""
    from surgseg.cue_workers import shared_pool
    from surgseg.options import CueOptions, Workers
    from surgseg.predictor import Predictor
    from surgseg.stages import segmentation_pipeline

    frames, _ = _parts_masks(5, seed=2, size=(96, 64))
    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    arena = shared_pool(2).arena
    for k in (2, 1):
        pipe = segmentation_pipeline([_frame(i, f.image) for i, f in enumerate(frames)],
                                     predictor=predictor, cues=CueOptions(), outputs=None,
                                     batch_size=2, workers=Workers(locate=k, render=1))
        out = list(pipe)
        assert sum(len(b) for b in out) == 5
        assert all(len(found) == len(b) for b in out for found in [b.instruments])
        shared = {arena.offset(a) is not None
                  for b in out for p in b.predictions for a in (p.mask, p.confidence)}
        assert shared == {k == 2}


def _frame(index: int, image):
    from surgseg.decode import Frame

    return Frame(index, index, index / 25, image)


@time_limit()
def test_a_worker_error_reaches_the_caller_and_a_dead_worker_is_replaced():
    from surgseg.cue_workers import WorkerError, shared_pool
    from surgseg.cues import FieldOfView

    pool = shared_pool(2)
    view = FieldOfView(shape=(8, 8))
    with pytest.raises(ValueError, match=r"mask must be \(H, W\)"):  # find_instruments' own
        pool.locate([np.zeros((8, 8, 3), np.uint8)], [None], view=view, view_key=-1,
                    task="parts")  # fmt: skip
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    found, _ = pool.locate([mask], [None], view=view, view_key=-1, task="binary", min_area=4)
    assert len(found[0]) == 1  # the worker that reported the error still serves
    for worker in list(pool._workers):  # a worker process dies (out of memory, killed)
        worker.process.kill()
        worker.process.wait()
    with pytest.raises(WorkerError, match="stopped answering"):
        pool.locate([mask], [None], view=view, view_key=-1, task="binary", min_area=4)
    for _ in range(len(pool) + 1):  # the dead are replaced by fresh workers
        try:
            found, _ = pool.locate([mask], [None], view=view, view_key=-1, task="binary",
                                   min_area=4)  # fmt: skip
        except WorkerError:
            continue
        break
    assert len(found[0]) == 1
    assert all(w.process.poll() is None for w in pool._workers)


@time_limit()
def test_infer_writes_the_same_outputs_with_one_and_two_workers(make_checkpoint, tmp_path):
    """``workers.locate=1 workers.render=1`` (one thread each) and ``=2`` (two worker
    processes finding the instruments, two threads encoding) write identical cues.jsonl and
    masks, frame for frame."""
    from hydra import compose, initialize_config_dir

    from surgseg.apps import CONF_DIR
    from surgseg.apps.infer import run
    from surgseg.synthetic import write_clip

    clip = write_clip(tmp_path / "clip", num_frames=9, width=320, height=256, seed=5,
                      num_instruments=3) / "video.mp4"  # fmt: skip
    checkpoint = make_checkpoint("parts")
    outputs = {}
    for k in (1, 2):
        overrides = [f"input={clip}", f"checkpoint={checkpoint}", f"output_dir={tmp_path}/k{k}",
                     f"workers.locate={k}", f"workers.render={k}", "batch_size=2",
                     "outputs.overlay=false", "progress=false"]  # fmt: skip
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("infer", overrides=overrides)
        assert run(cfg).failed == []
        out = tmp_path / f"k{k}" / "video.mp4"
        stages = json.loads((out / "run.json").read_text())["stages"]
        assert stages["locate"]["workers"] == stages["render"]["workers"] == k
        outputs[k] = {"cues": (out / "cues.jsonl").read_text(),
                      "masks": {p.name: p.read_bytes() for p in (out / "masks").iterdir()}}
    lines = outputs[1]["cues"].splitlines()
    assert len(lines) == 9 and [json.loads(x)["index"] for x in lines] == list(range(9))
    assert sum(len(json.loads(x)["instruments"]) for x in lines) > 0
    assert outputs[2]["cues"] == outputs[1]["cues"]
    assert len(outputs[1]["masks"]) == 9 and outputs[2]["masks"] == outputs[1]["masks"]


@time_limit()
def test_refined_tips_change_the_cues_not_the_masks(make_checkpoint, tmp_path):
    """``cues.refine_tips=true`` adds the refine_tips stage: the masks written are the first
    pass's, the same as without it, and every frame still has its cue line, read again."""
    from hydra import compose, initialize_config_dir

    from surgseg.apps import CONF_DIR
    from surgseg.apps.infer import run
    from surgseg.synthetic import write_clip

    clip = write_clip(tmp_path / "clip", num_frames=6, width=320, height=256, seed=8,
                      num_instruments=2) / "video.mp4"  # fmt: skip
    checkpoint = make_checkpoint("parts")
    written = {}
    for refine in ("false", "true"):
        overrides = [f"input={clip}", f"checkpoint={checkpoint}",
                     f"output_dir={tmp_path}/{refine}", f"cues.refine_tips={refine}",
                     "cues.min_area=1", "batch_size=4", "outputs.overlay=false",
                     "progress=false"]  # fmt: skip
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("infer", overrides=overrides)
        assert run(cfg).failed == []
        out = tmp_path / refine / "video.mp4"
        record = json.loads((out / "run.json").read_text())
        assert ("refine_tips" in record["stages"]) == (refine == "true")
        assert record["config"]["cues"]["refine_tips"] == (refine == "true")
        lines = [json.loads(x) for x in (out / "cues.jsonl").read_text().splitlines()]
        written[refine] = ({p.name: p.read_bytes() for p in (out / "masks").iterdir()}, lines)
    assert written["true"][0] == written["false"][0] and len(written["true"][0]) == 6
    assert [x["index"] for x in written["true"][1]] == list(range(6))
    assert sum(len(x["instruments"]) for x in written["true"][1]) > 0  # crops were taken
