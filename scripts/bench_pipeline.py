"""Acceptance measurements of the concurrent pipeline and of live streaming: figures, not tests.

    PYTHONPATH=. python scripts/bench_pipeline.py --out /tmp/surgseg-accept

1. Offline: end-to-end fps against the fps of the slowest stage alone (``surgseg.bench`` on
   a synthetic 640×512 clip, ResNet-18 FCN with random weights at 128×160, batch 4).
2. Decode: ``VideoReader`` to RGB arrays against ``ffmpeg -i X -pix_fmt rgb24 -f null -`` on
   the same 1080p H.264 file (best of 5 each, alternating).
3. Memory: RSS at frame 1,000 and at frame 10,000 of a 320×256 video through the offline
   pipeline (masks, cues and overlay written). The network is a 1×1 convolution so that
   10,000 frames take about a minute; every other stage is the real one.
4. Streaming: a 30 fps synthetic clip played in real time through a stand-in engine that
   sleeps so the inference stage needs about 2× the frame interval, with each drop policy.

Writes and prints ``<out>/acceptance.json``. On a shared machine, run it
when the cores are quiet: every figure here is a wall-clock rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from pathlib import Path

import psutil
import torch
from torch import nn

from surgseg.bench import bench, random_predictor
from surgseg.checkpoint import CheckpointMeta
from surgseg.decode import VideoReader
from surgseg.engines import Engine
from surgseg.engines.torch_engine import TorchEngine
from surgseg.pipeline import PoseCues, Write, segmentation_pipeline
from surgseg.predictor import Predictor
from surgseg.sinks import CuesWriter, OverlayWriter, open_mask_writer
from surgseg.stream import stream
from surgseg.synthetic import write_clip
from surgseg.tasks import class_names, palette

RESNET18 = {"depth": 18, "output_stride": 8, "head": "fcn", "aux_loss": False}


def ffmpeg_lavfi(path: Path, *, size: str, frames: int, fps: int = 30) -> Path:
    """An H.264 test-pattern video made by ffmpeg (``testsrc2``), once."""
    if not path.is_file():
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate={fps}",
                "-frames:v",
                str(frames),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                str(path),
            ],
            check=True,
        )
    return path


def offline_vs_slowest(out: Path, *, torch_threads: int | None, repeats: int) -> dict:
    """Best of ``repeats`` for each stage alone and for end to end (contention only slows)."""
    clip = out / "clip_640x512"
    if not (clip / "clip.json").is_file():
        write_clip(clip, num_frames=160, width=640, height=512, fps=25, seed=0)
    default_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    predictor = random_predictor(model=RESNET18, input_size=(128, 160))
    runs = [
        bench(clip / "video.mp4", predictor=predictor, out_dir=out / "offline", batch_size=4,
              held_frames=32, masks="png", overlay=True, flops=False)
        for _ in range(repeats)
    ]  # fmt: skip
    torch.set_num_threads(default_threads)
    alone = {k: max(r["stages_alone"][k]["fps"] for r in runs) for k in runs[0]["stages_alone"]}
    slowest = min(alone, key=alone.get)
    best = max(runs, key=lambda r: r["end_to_end"]["fps"])["end_to_end"]
    return {
        "torch_threads": runs[0]["torch_threads"],
        "stages_alone_fps": alone,
        "slowest_stage": slowest,
        "end_to_end_fps": best["fps"],
        "end_to_end_vs_slowest": round(best["fps"] / alone[slowest], 3),
        "end_to_end_runs_fps": [r["end_to_end"]["fps"] for r in runs],
        "process_cpu_cores": best["process_cpu_cores"],
        "system_cpu_percent": best["system_cpu_percent"],
    }


def decode_vs_ffmpeg(out: Path) -> dict:
    video = ffmpeg_lavfi(out / "testsrc2_1080p.mp4", size="1920x1080", frames=300)
    pyav, cli = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        with VideoReader(video) as reader:
            frames = sum(1 for frame in reader if frame.image.shape == (1080, 1920, 3))
        pyav.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(video), "-pix_fmt", "rgb24", "-f", "null", "-"],
            check=True,
        )
        cli.append(time.perf_counter() - t0)
    return {
        "frames": frames,
        "pyav_fps": round(frames / min(pyav), 1),
        "ffmpeg_fps": round(frames / min(cli), 1),
        "pyav_vs_ffmpeg": round(min(cli) / min(pyav), 3),
    }


class _OneByOne(nn.Module):
    """A 1×1 convolution standing in for the network (memory test: the stages are real)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def rss_over_long_video(out: Path, *, frames: int = 10_000) -> dict:
    video = ffmpeg_lavfi(out / f"testsrc2_320x256_{frames}.mp4", size="320x256", frames=frames)
    meta = CheckpointMeta(
        task="binary", class_names=list(class_names("binary")), model={}, input_size=(64, 80)
    )
    predictor = Predictor(TorchEngine(_OneByOne(meta.num_classes)), meta)
    folder = out / "long_run"
    rss = {}
    process = psutil.Process()
    t0 = time.perf_counter()
    with VideoReader(video) as reader:
        kw = reader.info.writer_format()
        with (
            open_mask_writer("ffv1", folder, **kw) as masks,
            CuesWriter(folder / "cues.jsonl") as cues,
            OverlayWriter(folder / "overlay.mp4", palette=palette(2), **kw) as overlay,
        ):
            pipeline = segmentation_pipeline(
                reader,
                predictor=predictor,
                cues=PoseCues(task="binary"),
                write=Write(masks=masks, cues=cues, overlay=overlay),
                batch_size=4,
            )
            done = 0
            for batch in pipeline:
                done += len(batch)
                if done in (1000, frames) or done % 2000 == 0:
                    rss[done] = round(process.memory_info().rss / 2**20, 1)
    return {
        "frames": done,
        "rss_mb": rss,
        "growth_1000_to_end_mb": round(rss[done] - rss[1000], 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "queue_peaks": {k: s.max_queued for k, s in pipeline.stats.items()},
    }


class SleepEngine(Engine):
    """Stand-in model: sleeps ``delay_s`` per batch, then returns brightness-based logits."""

    name = "sleep"

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        bright = batch.mean(dim=1, keepdim=True)
        return torch.cat([-bright, bright], dim=1)


def realtime_stream(out: Path, *, sleep_ms: list[float]) -> dict:
    clip = out / "clip_320x256_30fps"
    if not (clip / "clip.json").is_file():
        write_clip(clip, num_frames=300, width=320, height=256, fps=30, seed=1)
    meta = CheckpointMeta(
        task="binary", class_names=list(class_names("binary")), model={}, input_size=(128, 160)
    )
    results = {}
    for sleep, drop in itertools.product(sleep_ms, ("keep_latest", "drop_new")):
        live = stream(
            clip / "video.mp4",
            predictor=Predictor(SleepEngine(sleep / 1000), meta),
            realtime=True,
            drop=drop,
        )
        for _ in live:
            pass
        s = live.summary()
        interval = s["frame_interval_ms"]
        results[f"sleep {sleep:g} ms, {drop}"] = {
            "released": s["frames_released"],
            "emitted": s["frames_emitted"],
            "dropped": s["frames_dropped"],
            "latency_ms": s["latency_ms"],
            "p99_in_intervals": round(s["latency_ms"]["p99"] / interval, 2),
            "inference_ms_per_frame": s["stages"]["inference"]["ms_per_frame"],
            "model_vs_interval": round(s["stages"]["inference"]["ms_per_frame"] / interval, 2),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=["offline", "decode", "rss", "stream"])
    parser.add_argument("--long-frames", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="offline runs; best of each")
    parser.add_argument(
        "--sleep-ms",
        type=float,
        nargs="+",
        default=[64.0, 58.0],
        help="stand-in model sleeps; 64 ms + pre/post-processing ≈ 2 × 33.3 ms",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads for the offline run (0: torch's default)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"cpu_cores": psutil.cpu_count(), "load_avg_before": psutil.getloadavg()}
    if "offline" in args.only:
        report["offline"] = offline_vs_slowest(
            args.out, torch_threads=args.torch_threads, repeats=args.repeats
        )
    if "decode" in args.only:
        report["decode"] = decode_vs_ffmpeg(args.out)
    torch.set_num_threads(1)  # the rest works on small tensors
    if "rss" in args.only:
        report["rss"] = rss_over_long_video(args.out, frames=args.long_frames)
    if "stream" in args.only:
        report["stream"] = realtime_stream(args.out, sleep_ms=args.sleep_ms)
    report["load_avg_after"] = psutil.getloadavg()
    (args.out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
