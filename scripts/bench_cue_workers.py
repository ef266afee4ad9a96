"""Throughput of ``find_instruments`` on 1080p parts masks with 1 and 2 workers.

    PYTHONPATH=. python scripts/bench_cue_workers.py [--frames 40] [--laps 5] [--repeats 5]

The masks are the ground-truth parts masks of a synthetic surgery at 1920×1080 with 3
instruments, with the view estimated once (one shared ``FieldOfView``). Each pass sends the
masks ``--laps`` times over to the executor (``Executor.map``); OpenCV runs one thread per
worker. Compared:

* thread1, thread2: a ``ThreadPoolExecutor`` of 1 and 2 workers sharing the process (so the
  ratio thread2 / thread1 shows how much of the work runs without the GIL);
* process2: a ``ProcessPoolExecutor`` of 2 workers, masks pickled to them (started and warmed up
  before timing).

The passes alternate between the executors; the figures are the median frames per second over
``--repeats`` passes, and the ratios to thread1. The load average is printed before and after;
on a shared machine the ratios only mean something when the cores are otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import cv2
import numpy as np

from surgseg.cues import FieldOfView, find_instruments
from surgseg.synthetic import SyntheticSurgery

_FOV: FieldOfView | None = None  # the view of a process-pool worker


def _start_worker(view: np.ndarray) -> None:
    global _FOV
    cv2.setNumThreads(1)
    _FOV = FieldOfView(view)


def _count_in_worker(mask: np.ndarray) -> int:
    return len(find_instruments(mask, task="parts", view=_FOV))


def fps(executor: Executor, fn, masks: list[np.ndarray]) -> float:
    """Frames per second of one pass of ``fn`` over ``masks`` on ``executor``."""
    start = time.perf_counter()
    counts = list(executor.map(fn, masks))
    elapsed = time.perf_counter() - start
    assert all(counts), "every mask holds instruments"
    return len(masks) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--laps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    surgery = SyntheticSurgery(width=1920, height=1080, seed=args.seed, num_instruments=3)
    frames = [surgery.render(i) for i in range(args.frames)]
    masks = [f.parts for f in frames] * args.laps
    fov = FieldOfView.from_image(frames[0].image)
    fov.band(3.0)

    def count(mask: np.ndarray) -> int:
        return len(find_instruments(mask, task="parts", view=fov))

    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {"thread1": [], "thread2": [], "process2": []}
    with (
        ThreadPoolExecutor(1) as thread1,
        ThreadPoolExecutor(2) as thread2,
        ProcessPoolExecutor(2, initializer=_start_worker, initargs=(fov.mask,)) as process2,
    ):
        fps(process2, _count_in_worker, masks)  # start and warm up the workers
        for _ in range(args.repeats):
            runs["thread1"].append(fps(thread1, count, masks))
            runs["thread2"].append(fps(thread2, count, masks))
            runs["process2"].append(fps(process2, _count_in_worker, masks))
    load_after = os.getloadavg()

    median = {name: statistics.median(v) for name, v in runs.items()}
    result = {
        "frame": [1920, 1080],
        "frames": args.frames,
        "laps": args.laps,
        "fps": {k: round(v, 1) for k, v in median.items()},
        "ratio_to_thread1": {k: round(v / median["thread1"], 2) for k, v in median.items()},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after],
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    for name in runs:
        print(f"{name:<9} {median[name]:7.1f} frames/s  ×{result['ratio_to_thread1'][name]:.2f}")


if __name__ == "__main__":
    main()
