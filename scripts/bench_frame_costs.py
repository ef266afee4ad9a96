"""Per-frame cost of the CPU stages around the model at 1920×1080, on one core.

    PYTHONPATH=. python scripts/bench_frame_costs.py --out bench/frame_costs
    PYTHONPATH=. python scripts/bench_frame_costs.py --out bench/cues --stages cues

Inputs are made here: a synthetic surgery at 1920×1080 with 3 instruments (its ground-truth
parts masks stand in for the model's), and for the decode figures the same surgery with seeded
sensor grain, encoded once as H.264 at about 10 Mbit/s like real 1080p surgical video (the
clean render compresses to well under 1 Mbit/s, which makes decoding unrealistically cheap).
Every stage runs with one OpenCV and one torch thread; the figures are the median over the
frames of the wall time (ms) and of the process CPU time (core-ms) per frame:

* cues: instruments of a parts mask (``find_instruments`` with the view estimated once per
  video, as a ``FieldOfView``, and a uint8 confidence map as the Predictor gives it: the
  mask's edges blurred, so tips are read from it), the tracker, and the ``cues.jsonl`` line
  (``json.dumps``); each frame's time is its median over ``--repeats`` passes over the clip;
* png: one PNG mask file (``PngMaskWriter``: encode + atomic write), then the encoding alone
  per zlib strategy × row filter, with sizes;
* ffv1: one frame of the FFV1 mask video (``Ffv1MaskWriter``; closing amortized), then per
  slices × encoder threads;
* overlay: one overlay frame drawn (``render``) and encoded (``write_rendered``; closing
  amortized) by ``OverlayWriter`` at its defaults, then per scale × x264 preset;
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
from fractions import Fraction
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
from surgseg.tuning import tune_process

WIDTH, HEIGHT, FPS = 1920, 1080, 30
STAGES = ("cues", "png", "ffv1", "overlay", "decode")
GRAIN, CRF = 3.0, "16"  # sensor noise (grey levels, std) and x264 CRF of the decode video


def per_frame_samples(fn: Callable[[int], Any], n: int) -> tuple[list[float], list[float]]:
    """Wall ms and core-ms of ``fn(i)`` for each i in 0..n-1."""
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        cpu.append(1e3 * (time.process_time() - c0))
        wall.append(1e3 * (time.perf_counter() - w0))
    return wall, cpu


def per_frame(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    """Median wall ms and core-ms of ``fn(i)`` for i in 0..n-1."""
    wall, cpu = per_frame_samples(fn, n)
    return {"ms": statistics.median(wall), "core_ms": statistics.median(cpu),
            "ms_p90": float(np.percentile(wall, 90))}  # fmt: skip


def with_close(result: dict[str, float], close_ms: float, n: int) -> dict[str, float]:
    """Add a writer's closing time, spread over its ``n`` frames."""
    return {**result, "ms": result["ms"] + close_ms / n, "close_ms": close_ms}


def make_inputs(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    surgery = SyntheticSurgery(width=WIDTH, height=HEIGHT, fps=FPS, seed=seed, num_instruments=3)
    frames = [surgery.render(i) for i in range(n)]
    return [f.image for f in frames], [f.parts for f in frames]


def model_confidence(mask: np.ndarray) -> np.ndarray:
    """A confidence map as the Predictor gives it (uint8, the winning class's probability ×
    255) for a model whose instrument probability falls off over a few pixels at the edges:
    the true mask blurred (Gaussian, sigma 3 px), so the tips are read from it as from a
    model's (``far_end``)."""
    instrument = ((mask > 0) & (mask < 255)).astype(np.float32)
    p = cv2.GaussianBlur(instrument, (0, 0), 3)
    return np.round(np.where(instrument > 0, p, 1 - p) * 255).astype(np.uint8)


def bench_cues(images: list[np.ndarray], masks: list[np.ndarray], repeats: int) -> dict[str, float]:
    """The cue stage per frame; every frame's time is its median over ``repeats`` passes over
    the clip (a fresh tracker each), so that a passing disturbance does not decide it."""
    view = FieldOfView.from_image(images[0])
    confidences = [model_confidence(m) for m in masks]
    counts: list[int] = []
    walls, cpus = [], []
    for _ in range(repeats):
        tracker = Tracker()

        def run(i: int, tracker: Tracker = tracker) -> None:
            found = find_instruments(masks[i], task="parts", confidence=confidences[i], view=view)
            counts.append(len(found))
            line = {"index": i, "instruments": [x.to_dict() for x in tracker.update(found)]}
            json.dumps(line)

        wall, cpu = per_frame_samples(run, len(masks))
        walls.append(wall)
        cpus.append(cpu)
    wall = [statistics.median(frame) for frame in zip(*walls, strict=True)]
    cpu = [statistics.median(frame) for frame in zip(*cpus, strict=True)]
    return {"ms": statistics.median(wall), "core_ms": statistics.median(cpu),
            "ms_p90": float(np.percentile(wall, 90)), "repeats": repeats,
            "instruments_per_frame": statistics.mean(counts)}  # fmt: skip


def _encode_cost(fn: Callable[[np.ndarray], bytes], masks: list[np.ndarray]) -> dict[str, float]:
    sizes: list[int] = []
    result = per_frame(lambda i: sizes.append(len(fn(masks[i]))), len(masks))
    return {"core_ms": round(result["core_ms"], 3), "kb_per_frame": statistics.mean(sizes) / 1e3}


def bench_png(masks: list[np.ndarray], scratch: Path) -> dict[str, Any]:
    """The PNG writer at its defaults (encode + atomic file write), and the encoding alone
    for zlib strategies × PNG row filters (compression level 1), OpenCV's defaults first."""
    writer = PngMaskWriter(scratch / "png")
    result = per_frame(lambda i: writer.write(i, i, masks[i]), len(masks))
    size = sum(p.stat().st_size for p in (scratch / "png" / "masks").glob("*.png"))
    encode = per_frame(lambda i: writer.encode(masks[i]), len(masks))
    settings = {"opencv_default": _encode_cost(lambda m: cv2.imencode(".png", m)[1], masks)}
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        for strategy in ("DEFAULT", "FILTERED", "RLE"):
            for png_filter in ("NONE", "SUB", "UP", "PAETH"):
                params = [
                    cv2.IMWRITE_PNG_COMPRESSION,
                    1,
                    cv2.IMWRITE_PNG_STRATEGY,
                    getattr(cv2, f"IMWRITE_PNG_STRATEGY_{strategy}"),
                    cv2.IMWRITE_PNG_FILTER,
                    getattr(cv2, f"IMWRITE_PNG_FILTER_{png_filter}"),
                ]
                settings[f"{strategy.lower()}+{png_filter.lower()}"] = _encode_cost(
                    lambda m, p=params: cv2.imencode(".png", m, p)[1], masks
                )  # fmt: skip
    return {**result, "encode_core_ms": encode["core_ms"], "kb_per_frame": size / len(masks) / 1e3,
            "settings": settings}  # fmt: skip


def _ffv1(masks: list[np.ndarray], path: Path, **options: int) -> dict[str, float]:
    writer = Ffv1MaskWriter(path, width=WIDTH, height=HEIGHT, time_base=Fraction(1, FPS),
                            fps=FPS, **options)  # fmt: skip
    result = per_frame(lambda i: writer.write(i, i, masks[i]), len(masks))
    t0 = time.perf_counter()
    writer.close()
    result = with_close(result, 1e3 * (time.perf_counter() - t0), len(masks))
    return {**result, "kb_per_frame": path.stat().st_size / len(masks) / 1e3}


def bench_ffv1(masks: list[np.ndarray], scratch: Path) -> dict[str, Any]:
    """One frame of the FFV1 mask video at the writer's defaults, and per slices × threads
    (wall ms shrinks with slice threads only where a core is free; core-ms is the cost)."""
    result = _ffv1(masks, scratch / "masks.mkv")
    sweep = {f"slices={slices},threads={threads}": _ffv1(masks, scratch / "sweep.mkv",
                                                           slices=slices, threads=threads)
             for slices in (4, 6, 12) for threads in (1, 2, 4)}  # fmt: skip
    return {**result, "settings": sweep}


def _overlay(images: list[np.ndarray], masks: list[np.ndarray], found: list[list[dict]],
             path: Path, **options: Any) -> dict[str, float]:  # fmt: skip
    writer = OverlayWriter(path, width=WIDTH, height=HEIGHT, time_base=Fraction(1, FPS),
                           fps=FPS, palette=palette(4), **options)  # fmt: skip
    rendered: list[np.ndarray] = []
    render = per_frame(lambda i: rendered.append(writer.render(images[i], masks[i], found[i])),
                       len(masks))  # fmt: skip
    encode = per_frame(lambda i: writer.write_rendered(rendered[i], i), len(masks))
    c0, t0 = time.process_time(), time.perf_counter()
    writer.close()
    close_core_ms, close_ms = 1e3 * (time.process_time() - c0), 1e3 * (time.perf_counter() - t0)
    # x264 buffers frames and encodes some of them on close: spread close over the frames
    encode_core_ms = encode["core_ms"] + close_core_ms / len(masks)
    return {
        "ms": render["ms"] + encode["ms"] + close_ms / len(masks),
        "core_ms": render["core_ms"] + encode_core_ms,
        "render_core_ms": render["core_ms"],
        "encode_core_ms": encode_core_ms,
        "size": list(writer.size),
        "kb_per_frame": path.stat().st_size / len(masks) / 1e3,
    }


def bench_overlay(images: list[np.ndarray], masks: list[np.ndarray],
                  scratch: Path) -> dict[str, Any]:  # fmt: skip
    """One overlay frame drawn (``render``) and encoded (``write_rendered``, closing
    amortized) at the writer's defaults, and per scale × x264 preset."""
    view = estimate_view(images[0])
    found = [[x.to_dict() for x in find_instruments(m, task="parts", view=view)] for m in masks]
    result = _overlay(images, masks, found, scratch / "overlay.mp4")
    sweep = {}
    for scale in (0.5, 1.0):
        for preset in ("ultrafast", "superfast", "veryfast"):
            sweep[f"scale={scale},preset={preset}"] = _overlay(
                images, masks, found, scratch / "sweep.mp4", scale=scale, preset=preset
            )
    return {**result, "settings": sweep}


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
    tune_process()  # as the surgseg commands do (surgseg.tuning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--decode-frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    scratch = args.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    images, masks = make_inputs(args.frames, args.seed)
    benches: dict[str, Callable[[], Any]] = {
        "cues": lambda: bench_cues(images, masks, args.repeats),
        "png": lambda: bench_png(masks, scratch),
        "ffv1": lambda: bench_ffv1(masks, scratch),
        "overlay": lambda: bench_overlay(images, masks, scratch),
        "decode": lambda: decode_fps(make_decode_video(
            args.out / f"synthetic_{WIDTH}x{HEIGHT}_grain{GRAIN:g}_crf{CRF}.mp4",
            args.decode_frames, args.seed), args.repeats),
    }  # fmt: skip
    results = {"frame": [WIDTH, HEIGHT], "frames": args.frames,
               **{stage: benches[stage]() for stage in args.stages}}  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "frame_costs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'stage':<10} {'ms/frame':>9} {'core-ms':>8}")
    for name in ("cues", "png", "ffv1", "overlay"):
        if name in results:
            print(f"{name:<10} {results[name]['ms']:9.2f} {results[name]['core_ms']:8.2f}")
    if "decode" in results:
        print("decode fps:", {k: v for k, v in results["decode"].items() if k != "runs"})


if __name__ == "__main__":
    main()
