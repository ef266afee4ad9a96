"""Does the locate stage (cue geometry) scale with workers? Threads against worker processes.

    PYTHONPATH=. python scripts/bench_cue_workers.py --out bench/cue_workers

Inputs are made here: the ground-truth parts masks of a synthetic surgery at 1920×1080 with 3
instruments, a uint8 confidence map per frame, batches of ``--batch`` frames, the view
estimated once per video (as the pipeline does). OpenCV runs one thread per worker.

1. **GIL-held share** (CPU time, whatever the load): a small ``LD_PRELOAD`` shim, compiled
   here with ``cc``, clocks the calling thread's CPU time between each ``PyEval_SaveThread``
   and ``PyEval_RestoreThread`` that NumPy and OpenCV call around their work without the
   GIL. The rest of the thread's CPU time holds the GIL. Measured for ``find_instruments`` in
   the calling thread, for the calling thread's side of the worker-process path (the copy into
   shared memory, the request, the answer) and for a GIL-free reference (a 9×9 Gaussian blur
   of the frame). A held share s bounds the speed-up of 2 threads to 2 / (1 + s), and GIL
   hand-offs lose more. The caller's side of the worker processes holds the GIL for a few
   hundredths of a millisecond per frame, so processes are not bound by it.
2. **Core-ms per frame** (CPU time, median of the passes): the locate stage with 1 worker (a
   thread), 2 threads, and 2 worker processes (the stage's default for 2 workers; the
   workers' CPU time counted with the caller's), both with the masks in the pool's shared
   arena, where the segment stage leaves them for worker processes (read there, no copy),
   and with masks elsewhere (copied into each worker's buffer: "2 processes, copied").
3. **Throughput** of the locate stage alone, as ``surgseg-bench`` measures it (a pipeline of
   the locate stage only): the same four, and the GIL-free reference on 1 and 2 threads (what
   the machine allows at the time). The passes alternate; figures are
   the medians of ``--repeats`` passes and their ratios to 1 worker. Wall-clock rates: they
   need idle cores (the load average before and after is recorded).

Writes ``<out>/cue_workers.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgseg.cue_workers import SharedArena, shared_pool, worker_cpu_s
from surgseg.cues import FieldOfView, find_instruments
from surgseg.decode import Frame
from surgseg.options import CueOptions
from surgseg.pipeline import Pipeline, Stage
from surgseg.predictor import Prediction
from surgseg.stages import Batch, Locate
from surgseg.synthetic import SyntheticSurgery
from surgseg.tuning import tune_process

WIDTH, HEIGHT = 1920, 1080
SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
static __thread double released_s, started;
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
void *PyEval_SaveThread(void) {
    static void *(*real)(void);
    if (!real) real = (void *(*)(void))dlsym(RTLD_NEXT, "PyEval_SaveThread");
    void *state = real();
    started = cpu_now();
    return state;
}
void PyEval_RestoreThread(void *state) {
    static void (*real)(void *);
    if (!real) real = (void (*)(void *))dlsym(RTLD_NEXT, "PyEval_RestoreThread");
    released_s += cpu_now() - started;
    real(state);
}
double gil_released_s(void) { return released_s; }
"""


def make_inputs(frames: int, seed: int) -> tuple[list[Frame], list[Prediction]]:
    surgery = SyntheticSurgery(width=WIDTH, height=HEIGHT, seed=seed, num_instruments=3)
    rendered = [surgery.render(i) for i in range(frames)]
    rng = np.random.default_rng(seed)
    images = [Frame(i, i, i / 30, r.image) for i, r in enumerate(rendered)]
    predictions = [Prediction(r.parts, rng.integers(180, 256, r.parts.shape, dtype=np.uint8))
                   for r in rendered]  # fmt: skip
    return images, predictions


def in_arena(predictions: list[Prediction], arena: SharedArena) -> list[Prediction]:
    """The predictions copied into ``arena``, as the segment stage writes them."""
    out = []
    for p in predictions:
        mask, confidence = arena.empty(p.mask.shape), arena.empty(p.confidence.shape)
        if mask is None or confidence is None:
            raise SystemExit("the arena is too small for these frames: use fewer --frames")
        mask[...], confidence[...] = p.mask, p.confidence
        out.append(Prediction(mask, confidence))
    return out


def batches(images: list[Frame], predictions: list[Prediction], size: int,
            laps: int) -> list[Batch]:  # fmt: skip
    out = []
    for _ in range(laps):
        for i in range(0, len(images), size):
            batch = Batch(images[i : i + size])
            batch.predictions = predictions[i : i + size]
            out.append(batch)
    return out


def locate_stages(workers: dict[str, tuple[int, bool]]) -> dict[str, Stage]:
    """A locate stage per configuration: name → (workers, processes)."""
    options = CueOptions()
    return {name: Stage("locate", Locate(task="parts", options=options, workers=k,
                                         processes=processes), workers=k)
            for name, (k, processes) in workers.items()}  # fmt: skip


def run_stage(stage: Stage, work: list[Batch]) -> tuple[float, float]:
    """(frames per second, core-ms per frame: this process and the cue workers) of one pass
    of ``stage`` alone over ``work``."""
    frames = sum(len(b) for b in work)
    t0, c0, w0 = time.perf_counter(), time.process_time(), worker_cpu_s()
    Pipeline(work, [stage], count=len).run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + worker_cpu_s() - w0
    return frames / wall, 1000 * cpu / frames


def run_reference(threads: int, images: list[np.ndarray]) -> float:
    """Frames per second of the GIL-free reference on ``threads`` threads."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_blur, images[:threads]))
        t0 = time.perf_counter()
        list(pool.map(_blur, images))
        return len(images) / (time.perf_counter() - t0)


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (9, 9), 0)


def gil_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Run under the shim: the GIL-held share of each job in this thread."""
    shim = ctypes.CDLL(os.environ["SURGSEG_GIL_SHIM"])
    shim.gil_released_s.restype = ctypes.c_double
    cv2.setNumThreads(1)
    images, predictions = make_inputs(args.frames, args.seed)
    view = FieldOfView.from_image(images[0].image)
    options = CueOptions()
    params = {"min_area": options.min_area, "border_band": options.border_band,
              "tip_band": options.tip_band}  # fmt: skip
    process_locate = Locate(task="parts", options=options, workers=2, processes=True)
    work = batches(images, predictions, args.batch, 1)
    shared = batches(images, in_arena(predictions, process_locate.arena), args.batch, 1)

    def in_thread() -> None:
        for p in predictions:
            find_instruments(p.mask, task="parts", confidence=p.confidence, view=view, **params)

    def caller_of_processes() -> None:
        for batch in shared:
            process_locate(batch)

    def caller_copying() -> None:
        for batch in work:
            process_locate(batch)

    def reference() -> None:
        for frame in images:
            _blur(frame.image)

    jobs: dict[str, Callable[[], None]] = {
        "find_instruments in the thread": in_thread,
        "caller side of the worker processes": caller_of_processes,
        "the same, masks copied": caller_copying,
        "reference (blur)": reference,
    }
    result = {}
    for name, job in jobs.items():
        job()  # warm-up: the view, the workers, the buffers
        held, cpu = [], []
        for _ in range(args.repeats):
            r0, c0 = shim.gil_released_s(), time.thread_time()
            job()
            spent = time.thread_time() - c0
            held.append(1 - (shim.gil_released_s() - r0) / spent)
            cpu.append(1000 * spent / len(images))
        share, core_ms = statistics.median(held), statistics.median(cpu)
        result[name] = {"gil_held_share": round(share, 3),
                        "thread_core_ms_per_frame": round(core_ms, 3),
                        "gil_held_ms_per_frame": round(share * core_ms, 3)}  # fmt: skip
    # Amdahl: 2 threads of find_instruments reach at most 2 / (1 + held share) of one
    result["bound_of_2_threads"] = round(2 / (1 + result[next(iter(jobs))]["gil_held_share"]), 2)
    return result


def gil_shares(args: argparse.Namespace) -> dict[str, Any]:
    """Compile the shim and run ``gil_probe`` in a child process that preloads it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not sys.platform.startswith("linux"):
        return {"error": "needs Linux and a C compiler (cc)"}
    with tempfile.TemporaryDirectory() as tmp:
        source, shim = Path(tmp) / "gil_shim.c", Path(tmp) / "gil_shim.so"
        source.write_text(SHIM_C)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"],
                       check=True)  # fmt: skip
        env = {**os.environ, "LD_PRELOAD": str(shim), "SURGSEG_GIL_SHIM": str(shim)}
        command = [sys.executable, __file__, "--gil-probe", "--frames", str(args.frames),
                   "--batch", str(args.batch), "--repeats", str(args.repeats),
                   "--seed", str(args.seed)]  # fmt: skip
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    tune_process()  # as the surgseg commands do (surgseg.tuning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write cue_workers.json here")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--laps", type=int, default=5, help="passes over the frames per run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gil-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gil_probe:
        print(json.dumps(gil_probe(args)))
        return
    cv2.setNumThreads(1)

    load_before = os.getloadavg()
    gil = gil_shares(args)
    images, predictions = make_inputs(args.frames, args.seed)
    copied = batches(images, predictions, args.batch, args.laps)
    work = batches(images, in_arena(predictions, shared_pool(2).arena), args.batch, args.laps)
    stages = locate_stages({"1 worker": (1, False), "2 threads": (2, False),
                            "2 processes": (2, True),
                            "2 processes, copied": (2, True)})  # fmt: skip
    inputs = {name: copied if name.endswith("copied") else work for name in stages}
    for name, stage in stages.items():
        run_stage(stage, inputs[name][:2])  # warm-up: the view, the workers, their buffers
    plain = [f.image for f in images]
    fps: dict[str, list[float]] = {}
    core_ms: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        order = list(stages) if repeat % 2 == 0 else list(reversed(stages))
        for name in order:
            rate, cost = run_stage(stages[name], inputs[name])
            fps.setdefault(name, []).append(rate)
            core_ms.setdefault(name, []).append(cost)
        for threads in (1, 2) if repeat % 2 == 0 else (2, 1):
            fps.setdefault(f"reference, {threads} thread(s)", []).append(
                run_reference(threads, plain))
    load_after = os.getloadavg()

    median = {name: statistics.median(v) for name, v in fps.items()}
    reference = median["reference, 2 thread(s)"] / median["reference, 1 thread(s)"]
    result = {
        "frame": [WIDTH, HEIGHT],
        "frames_per_pass": len(images) * args.laps,
        "arena_misses": shared_pool(2).arena.misses,
        "batch": args.batch,
        "cpu_count": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after],
        "gil": gil,
        "core_ms_per_frame": {k: round(statistics.median(v), 3) for k, v in core_ms.items()},
        "fps": {k: round(v, 1) for k, v in median.items()},
        "speedup_vs_1_worker": {k: round(median[k] / median["1 worker"], 2) for k in stages},
        "reference_speedup": round(reference, 2),
        "runs": fps,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cue_workers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    for name, figures in gil.items():
        print(f"GIL: {name:<38} {figures}")
    print(f"{'locate stage':<20} {'frames/s':>9} {'× 1 worker':>11} {'core-ms/frame':>14}")
    for name in stages:
        print(f"{name:<20} {median[name]:9.1f} {result['speedup_vs_1_worker'][name]:10.2f}× "
              f"{result['core_ms_per_frame'][name]:14.3f}")  # fmt: skip
    print(f"GIL-free reference: 2 threads vs 1: {result['reference_speedup']:.2f}×")


if __name__ == "__main__":
    main()
