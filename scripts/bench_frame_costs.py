"""Per-frame cost of the CPU stages around the model at 1920×1080, on one core.

    PYTHONPATH=. python scripts/bench_frame_costs.py --out bench/frame_costs

Inputs are made here: a synthetic surgery at 1920×1080 with 3 instruments (its ground-truth
parts masks stand in for the model's), and for the decode figures the same surgery with seeded
sensor grain, encoded once as H.264 at about 10 Mbit/s like real 1080p surgical video (the
clean render compresses to well under 1 Mbit/s, which makes decoding unrealistically cheap).
Every stage runs with one OpenCV and one torch thread; the figures are the median over the
frames of the wall time (ms) and of the process CPU time (core-ms) per frame:

* cues: instruments of a parts mask (``find_instruments`` with the view estimated once per
  video, as a ``FieldOfView``), the tracker, and the ``cues.jsonl`` line (``json.dumps``);
* png: one PNG mask file (``PngMaskWriter``);
* ffv1: one frame of the FFV1 mask video (``Ffv1MaskWriter``; closing amortized);
* overlay: one overlay frame drawn and encoded (``OverlayWriter`` at its defaults; closing
  amortized);
* decode: ``VideoReader`` against plain PyAV and ``ffmpeg -pix_fmt rgb24 -f null -`` on the
  same file, alternating, median of ``--repeats`` runs each (threads: each decoder's default):
  frames per second, core-ms and minor page faults per frame (all the decoder's threads,
  ffmpeg's as a child process), with the file's bitrate.

Writes ``<out>/frame_costs.json`` and prints a table. On a shared machine, check the load
first (``uptime``): every figure here is a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from surgseg.cues import FieldOfView, Tracker, estimate_view, find_instruments
from surgseg.decode import VideoReader
from surgseg.encode import VideoWriter
from surgseg.sinks import Ffv1MaskWriter, OverlayWriter, PngMaskWriter
from surgseg.synthetic import SyntheticSurgery
from surgseg.tasks import palette

WIDTH, HEIGHT, FPS = 1920, 1080, 30
GRAIN, CRF = 3.0, "16"  # sensor noise (grey levels, std) and x264 CRF of the decode video


def per_frame(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    """Median wall ms and core-ms of ``fn(i)`` for i in 0..n-1."""
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        cpu.append(1e3 * (time.process_time() - c0))
        wall.append(1e3 * (time.perf_counter() - w0))
    return {"ms": statistics.median(wall), "core_ms": statistics.median(cpu),
            "ms_p90": float(np.percentile(wall, 90))}  # fmt: skip


def with_close(result: dict[str, float], close_ms: float, n: int) -> dict[str, float]:
    """Add a writer's closing time, spread over its ``n`` frames."""
    return {**result, "ms": result["ms"] + close_ms / n, "close_ms": close_ms}


def make_inputs(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    surgery = SyntheticSurgery(width=WIDTH, height=HEIGHT, fps=FPS, seed=seed, num_instruments=3)
    frames = [surgery.render(i) for i in range(n)]
    return [f.image for f in frames], [f.parts for f in frames]


def bench_cues(images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    view = FieldOfView.from_image(images[0])
    tracker = Tracker()
    confidence = np.full(masks[0].shape, 0.9, np.float32)
    counts = []

    def run(i: int) -> None:
        found = find_instruments(masks[i], task="parts", confidence=confidence, view=view)
        counts.append(len(found))
        line = {"index": i, "instruments": [x.to_dict() for x in tracker.update(found)]}
        json.dumps(line)

    result = per_frame(run, len(masks))
    return {**result, "instruments_per_frame": statistics.mean(counts)}


def bench_png(masks: list[np.ndarray], scratch: Path) -> dict[str, float]:
    writer = PngMaskWriter(scratch / "png")
    result = per_frame(lambda i: writer.write(i, i, masks[i]), len(masks))
    size = sum(p.stat().st_size for p in (scratch / "png" / "masks").glob("*.png"))
    return {**result, "kb_per_frame": size / len(masks) / 1e3}


def bench_ffv1(masks: list[np.ndarray], scratch: Path) -> dict[str, float]:
    from fractions import Fraction

    path = scratch / "masks.mkv"
    writer = Ffv1MaskWriter(path, width=WIDTH, height=HEIGHT, time_base=Fraction(1, FPS),
                            fps=FPS)  # fmt: skip
    result = per_frame(lambda i: writer.write(i, i, masks[i]), len(masks))
    t0 = time.perf_counter()
    writer.close()
    result = with_close(result, 1e3 * (time.perf_counter() - t0), len(masks))
    return {**result, "kb_per_frame": path.stat().st_size / len(masks) / 1e3}


def bench_overlay(images: list[np.ndarray], masks: list[np.ndarray],
                  scratch: Path) -> dict[str, float]:  # fmt: skip
    from fractions import Fraction

    view = estimate_view(images[0])
    found = [[x.to_dict() for x in find_instruments(m, task="parts", view=view)] for m in masks]
    writer = OverlayWriter(scratch / "overlay.mp4", width=WIDTH, height=HEIGHT,
                           time_base=Fraction(1, FPS), fps=FPS, palette=palette(4))  # fmt: skip
    result = per_frame(lambda i: writer.write(images[i], masks[i], found[i], i), len(masks))
    t0 = time.perf_counter()
    writer.close()
    return with_close(result, 1e3 * (time.perf_counter() - t0), len(masks))


def make_decode_video(path: Path, frames: int, seed: int) -> Path:
    """The synthetic surgery with seeded Gaussian sensor grain (``GRAIN``), encoded with x264
    at CRF ``CRF``: about 10 Mbit/s at 1080p. Kept in ``path`` for later runs."""
    if path.is_file():
        return path
    surgery = SyntheticSurgery(width=WIDTH, height=HEIGHT, fps=FPS, seed=seed, num_instruments=3)
    rng = np.random.default_rng(seed)
    with VideoWriter(path, width=WIDTH, height=HEIGHT, fps=FPS, options={"crf": CRF}) as writer:
        for i in range(frames):
            image = surgery.render(i).image + rng.normal(0, GRAIN, (HEIGHT, WIDTH, 3))
            writer.write(np.clip(image, 0, 255).astype(np.uint8))
    return path


def decode_fps(path: Path, repeats: int) -> dict[str, Any]:
    """VideoReader, plain PyAV and ffmpeg on ``path``, alternating: median fps, core-ms and
    page faults per frame of each, the ratios of VideoReader's fps to the others', the
    bitrate."""

    def reader() -> int:
        with VideoReader(path) as r:
            return sum(1 for _ in r)

    def plain() -> int:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for f in c.decode(stream) if f.to_ndarray(format="rgb24") is not None)

    def ffmpeg() -> int:
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-pix_fmt", "rgb24", "-f",
                        "null", "-"], check=True)  # fmt: skip
        return frames

    def usage() -> tuple[float, int]:
        """CPU seconds and minor page faults so far, this process's and its children's."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        return cpu, me.ru_minflt + kids.ru_minflt

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames, bit_rate = stream.frames, stream.bit_rate or c.bit_rate
    decoders = {"video_reader": reader, "pyav": plain}
    if shutil.which("ffmpeg") is not None:
        decoders["ffmpeg"] = ffmpeg
    runs: dict[str, list[float]] = {name: [] for name in decoders}
    core_ms: dict[str, list[float]] = {name: [] for name in decoders}
    faults: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, fn in decoders.items():
            (c0, f0), t0 = usage(), time.perf_counter()
            n = fn()
            runs[name].append(n / (time.perf_counter() - t0))
            c1, f1 = usage()
            core_ms[name].append(1e3 * (c1 - c0) / n)
            faults[name].append((f1 - f0) / n)
    result: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    for other in ("pyav", "ffmpeg"):
        if other in result:
            result[f"video_reader_vs_{other}"] = round(result["video_reader"] / result[other], 3)
    result["core_ms_per_frame"] = {k: round(statistics.median(v), 2) for k, v in core_ms.items()}
    result["page_faults_per_frame"] = {k: round(statistics.median(v)) for k, v in faults.items()}
    result["frames"], result["bitrate_mbps"] = frames, round(bit_rate / 1e6, 2)
    result["runs"] = runs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--decode-frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    scratch = args.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    images, masks = make_inputs(args.frames, args.seed)
    video = make_decode_video(
        args.out / f"synthetic_{WIDTH}x{HEIGHT}_grain{GRAIN:g}_crf{CRF}.mp4",
        args.decode_frames,
        args.seed,
    )

    results = {
        "frame": [WIDTH, HEIGHT],
        "frames": args.frames,
        "cues": bench_cues(images, masks),
        "png": bench_png(masks, scratch),
        "ffv1": bench_ffv1(masks, scratch),
        "overlay": bench_overlay(images, masks, scratch),
        "decode_fps": decode_fps(video, args.repeats),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "frame_costs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'stage':<10} {'ms/frame':>9} {'core-ms':>8}")
    for name in ("cues", "png", "ffv1", "overlay"):
        r = results[name]
        print(f"{name:<10} {r['ms']:9.2f} {r['core_ms']:8.2f}")
    print("decode fps:", {k: v for k, v in results["decode_fps"].items() if k != "runs"})


if __name__ == "__main__":
    main()
