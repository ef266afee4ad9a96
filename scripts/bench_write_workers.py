"""Do the stateless parts of the mask and overlay writers scale with worker threads?

    PYTHONPATH=. python scripts/bench_write_workers.py --out bench/write_workers

Inputs are made here: a synthetic surgery at 1920×1080 with 3 instruments, its ground-truth
parts masks standing in for the model's, and its pose cues. Each job runs over the frames with
``Executor.map`` (results in frame order, as the pipeline keeps them) on 1 and 2 workers, in
threads and, for comparison, in forked processes (whose results are pickled back); OpenCV
uses one thread per call. Jobs, per frame:

* png: ``encode_png`` (the PNG writer's stateless part);
* overlay: ``OverlayWriter.render`` at the writer's defaults (scale 0.5, legend);
* both: the two together, what one pipeline worker does;
* reference: a 9×9 Gaussian blur of the frame, one OpenCV call that never needs the GIL:
  its speed-up is what the machine allows at the time (2.0 on 2 idle cores).

Each job and executor is timed ``--repeats`` times on 1 and 2 workers back to back; the
figures are the median frames/s and the median speed-up of those pairs. The script also
reports the per-frame cost of the sequential parts that stay on the one muxing thread
(core-ms, median): the PNG file write, the overlay's H.264 encode (closing amortized) and the
FFV1 mask frame. A profile of each job gives the share of its time spent holding the GIL,
which bounds the thread speed-up independently of the machine's load.

Writes ``<out>/write_workers.json`` and prints a table. The speed-up needs 2 idle cores: on a
shared machine check the load first (``uptime``); the load before and after is recorded.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgseg.cues import estimate_view, find_instruments
from surgseg.sinks import Ffv1MaskWriter, OverlayWriter, PngMaskWriter, encode_png
from surgseg.synthetic import SyntheticSurgery
from surgseg.tasks import palette
from surgseg.tuning import tune_process

WIDTH, HEIGHT, FPS = 1920, 1080, 30
_CV2_NAMES = set(dir(cv2))

# Filled in before the pools start; forked worker processes inherit it.
_STATE: dict[str, Any] = {}


def _png(i: int) -> bytes:
    return encode_png(_STATE["masks"][i])


def _overlay(i: int) -> np.ndarray:
    return _STATE["overlay"].render(_STATE["images"][i], _STATE["masks"][i], _STATE["found"][i])


def _both(i: int) -> tuple[bytes, np.ndarray]:
    return _png(i), _overlay(i)


def _reference(i: int) -> np.ndarray:
    return cv2.GaussianBlur(_STATE["images"][i], (9, 9), 0)


JOBS: dict[str, Callable[[int], Any]] = {
    "png": _png,
    "overlay": _overlay,
    "both": _both,
    "reference": _reference,
}


def _executor(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def throughput(job: Callable[[int], Any], kind: str, workers: int, frames: int) -> float:
    """Frames per second of ``job`` over all frames on a warm pool."""
    with _executor(kind, workers) as pool:
        list(pool.map(job, range(workers)))  # start the workers
        t0 = time.perf_counter()
        for _ in pool.map(job, range(frames)):
            pass
        return frames / (time.perf_counter() - t0)


def scaling(frames: int, repeats: int, kinds: list[str]) -> dict[str, Any]:
    """fps per job, executor and worker count, and the speed-up of 2 workers over 1: the
    median of back-to-back pairs (their order alternating), so that a slowly changing load
    on a shared machine touches both runs of a pair alike."""
    runs: dict[str, list[float]] = {}
    pairs: dict[str, list[float]] = {}
    for repeat in range(repeats):
        for name, job in JOBS.items():
            for kind in kinds:
                fps = {}
                for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
                    fps[workers] = throughput(job, kind, workers, frames)
                    runs.setdefault(f"{name}/{kind}/{workers}", []).append(fps[workers])
                pairs.setdefault(f"{name}/{kind}", []).append(fps[2] / fps[1])
    return {
        "fps": {key: round(statistics.median(v), 1) for key, v in runs.items()},
        "speedup_2_vs_1": {key: round(statistics.median(v), 3) for key, v in pairs.items()},
        "runs": runs,
        "pair_speedups": pairs,
    }


def gil_held(frames: int) -> dict[str, dict[str, float]]:
    """Per job, core-ms per frame under ``cProfile`` (on thread CPU time) and the share spent
    holding the GIL: everything but OpenCV calls (which release it) and numpy copies. A
    serial share s bounds the speed-up of 2 threads to 2 / (1 + s), whatever the load."""
    result = {}
    for name, job in JOBS.items():
        profile = cProfile.Profile(time.thread_time)
        profile.runcall(lambda j=job: [j(i) for i in range(frames)])
        total = held = 0.0
        for (file, _, function), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
            total += own
            released = file == "~" and (
                function.strip("<>") in _CV2_NAMES or "'copy' of 'numpy.ndarray'" in function
            )
            held += 0 if released else own
        result[name] = {"core_ms": round(1e3 * total / frames, 3),
                        "gil_held_share": round(held / total, 4)}  # fmt: skip
    return result


def _core_ms(fn: Callable[[int], Any], n: int) -> float:
    cpu = []
    for i in range(n):
        c0 = time.process_time()
        fn(i)
        cpu.append(1e3 * (time.process_time() - c0))
    return statistics.median(cpu)


def sequential_parts(scratch: Path) -> dict[str, float]:
    """Median core-ms per frame of what stays on the muxing thread."""
    masks, n = _STATE["masks"], len(_STATE["masks"])
    png = PngMaskWriter(scratch / "png")
    encoded = [encode_png(m) for m in masks]
    png_write = _core_ms(lambda i: png.write_encoded(i, i, encoded[i]), n)
    overlay = OverlayWriter(scratch / "overlay.mp4", width=WIDTH, height=HEIGHT,
                            time_base=Fraction(1, FPS), fps=FPS, palette=palette(4))  # fmt: skip
    rendered = [_overlay(i) for i in range(n)]
    encode = _core_ms(lambda i: overlay.write_rendered(rendered[i], i), n)
    c0 = time.process_time()
    overlay.close()
    encode += 1e3 * (time.process_time() - c0) / n
    ffv1 = Ffv1MaskWriter(scratch / "masks.mkv", width=WIDTH, height=HEIGHT,
                          time_base=Fraction(1, FPS), fps=FPS)  # fmt: skip
    ffv1_write = _core_ms(lambda i: ffv1.write(i, i, masks[i]), n)
    ffv1.close()
    return {"png_write_encoded": round(png_write, 3), "overlay_write_rendered": round(encode, 3),
            "ffv1_write": round(ffv1_write, 3)}  # fmt: skip


def main() -> None:
    tune_process()  # as the surgseg commands do (surgseg.tuning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-processes", action="store_true", help="threads only")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    scratch = args.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    surgery = SyntheticSurgery(width=WIDTH, height=HEIGHT, fps=FPS, seed=args.seed,
                               num_instruments=3)  # fmt: skip
    frames = [surgery.render(i) for i in range(args.frames)]
    images, masks = [f.image for f in frames], [f.parts for f in frames]
    view = estimate_view(images[0])
    found = [[x.to_dict() for x in find_instruments(m, task="parts", view=view)] for m in masks]
    renderer = OverlayWriter(scratch / "renderer.mp4", width=WIDTH, height=HEIGHT,
                             time_base=Fraction(1, FPS), fps=FPS, palette=palette(4))  # fmt: skip
    _STATE.update(images=images, masks=masks, found=found, overlay=renderer)

    load_before = os.getloadavg()
    kinds = ["thread"] if args.no_processes else ["thread", "process"]
    results = {
        "frame": [WIDTH, HEIGHT],
        "frames": args.frames,
        "cpu_count": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "profile": gil_held(args.frames),
        **scaling(args.frames, args.repeats, kinds),
        "sequential_core_ms": sequential_parts(scratch),
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    renderer.abort()
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "write_workers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    print(f"{'job':<8} {'executor':<8} {'1 worker':>9} {'2 workers':>10} {'speed-up':>9}")
    for name in JOBS:
        for kind in kinds:
            fps = results["fps"]
            print(f"{name:<8} {kind:<8} {fps[f'{name}/{kind}/1']:9.1f} "
                  f"{fps[f'{name}/{kind}/2']:10.1f} "
                  f"{results['speedup_2_vs_1'][f'{name}/{kind}']:8.2f}×")  # fmt: skip
    print("profiled core-ms per frame and GIL-held share:", results["profile"])
    print("sequential parts, core-ms per frame:", results["sequential_core_ms"])


if __name__ == "__main__":
    main()
