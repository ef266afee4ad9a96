"""Acceptance measurements of the concurrent pipeline and of live streaming: figures, not tests.

    PYTHONPATH=. python scripts/bench_pipeline.py --out /tmp/surgseg-accept
    PYTHONPATH=. python scripts/bench_pipeline.py --out /tmp/surgseg-accept --only gpu_rate

1. Offline: end to end against the resource bound (``surgseg.bench`` on a synthetic 640×512
   clip, ResNet-18 FCN with random weights at 128×160, batch 4, the model on the CPU), the
   median of ``--repeats`` runs.
   GPU rate: the same at 1920×1080 with a stand-in for the model's side at ``--standin-fps``
   (default 500), batch 8, end to end over a clip of ``--clip-frames`` frames (default 300:
   10 s, so that filling and draining the pipeline weigh little; 3 instruments, touching
   or crossing in most frames), each stage alone on its first 128 frames; with 1 and with 2
   workers per stateless stage (2: the locate stage's worker processes, the render stage's
   threads), medians of ``--repeats`` runs; the locate and render stages alone with 2
   workers against 1.
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
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import torch
from torch import nn

from surgseg.bench import STAGES, StandInPredictor, bench, clip_predictions, random_predictor
from surgseg.checkpoint import CheckpointMeta
from surgseg.decode import VideoReader
from surgseg.engines import Engine
from surgseg.engines.torch_engine import TorchEngine
from surgseg.live import stream
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.predictor import Predictor
from surgseg.stages import open_outputs, segmentation_pipeline
from surgseg.synthetic import write_clip
from surgseg.tasks import class_names
from surgseg.tuning import tune_process

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
    """``repeats`` runs of ``surgseg.bench``: the medians of each stage alone and of end to
    end (``summarize``)."""
    clip = out / "clip_640x512"
    if not (clip / "clip.json").is_file():
        write_clip(clip, num_frames=160, width=640, height=512, fps=25, seed=0)
    default_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    predictor = random_predictor(model=RESNET18, input_size=(128, 160))
    runs = [
        bench(clip / "video.mp4", predictor=predictor, out_dir=out / "offline", batch_size=4,
              held_frames=32, flops=False)
        for _ in range(repeats)
    ]  # fmt: skip
    torch.set_num_threads(default_threads)
    return summarize(runs)


def summarize(runs: list[dict]) -> dict:
    """Medians over ``runs`` of ``surgseg.bench.bench``: each stage alone, end to end, bound."""
    alone = {k: statistics.median(r["stages_alone"][k]["fps"] for r in runs)
             for k in runs[0]["stages_alone"]}  # fmt: skip
    core_ms = {k: statistics.median(r["stages_alone"][k]["core_ms_per_frame"] for r in runs)
               for k in STAGES}  # fmt: skip
    e2e = [r["end_to_end"]["fps"] for r in runs]
    ratio = [r["end_to_end_vs_bound"] for r in runs]
    return {
        "torch_threads": runs[0]["torch_threads"],
        "workers": runs[0]["workers"],
        "stages_alone_fps": alone,
        "stages_alone_core_ms_per_frame": core_ms,
        "bound": runs[len(runs) // 2]["bound"],
        "end_to_end_fps": statistics.median(e2e),
        "end_to_end_vs_bound": statistics.median(ratio),
        "end_to_end_runs_fps": e2e,
        "end_to_end_vs_bound_runs": ratio,
        "process_cpu_cores": statistics.median(r["end_to_end"]["process_cpu_cores"] for r in runs),
        "system_cpu_percent": [r["end_to_end"]["system_cpu_percent"] for r in runs],
    }


def gpu_rate(out: Path, *, standin_fps: float, repeats: int, frames: int = 300,
             batch_size: int = 8) -> dict:  # fmt: skip
    """The pipeline at GPU speed without a GPU, at 1920×1080: a stand-in delivering the
    clip's ground-truth parts masks at ``standin_fps``; every other stage real, with the
    default outputs (PNG masks, overlay, cues). Also the locate and render stages alone with
    1 and with 2 workers."""
    clip = out / f"clip_1920x1080_{frames}"
    if not (clip / "clip.json").is_file():
        write_clip(clip, num_frames=frames, width=1920, height=1080, fps=30, seed=1,
                   num_instruments=3)  # fmt: skip
    meta = CheckpointMeta(task="parts", class_names=list(class_names("parts")),
                          model={}, input_size=(512, 640))  # fmt: skip
    predictions = clip_predictions(clip, "parts")
    runs, by_workers = [], {}
    for k in (1, 2):
        for _ in range(repeats):
            standin = StandInPredictor(predictions, meta, fps=standin_fps)
            runs.append(bench(clip / "video.mp4", predictor=standin, out_dir=out / "gpu_rate",
                              batch_size=batch_size, held_frames=128, workers=Workers(k, k),
                              flops=False))  # fmt: skip
        by_workers[k] = summarize(runs[-repeats:])
    scaling = {stage: round(by_workers[2]["stages_alone_fps"][stage]
                            / by_workers[1]["stages_alone_fps"][stage], 3)
               for stage in ("locate", "render")}  # fmt: skip
    return {"standin_fps": standin_fps, "by_workers": by_workers,
            "two_workers_vs_one": scaling}  # fmt: skip


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
        options, names = OutputOptions(masks="ffv1"), meta.class_names
        with open_outputs(folder, info=reader.info, options=options, class_names=names) as outputs:
            pipeline = segmentation_pipeline(reader, predictor=predictor, cues=CueOptions(),
                                             outputs=outputs, batch_size=4)  # fmt: skip
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
            "model_ms_per_frame": s["stages"]["segment"]["ms_per_frame"],
            "model_vs_interval": round(s["stages"]["segment"]["ms_per_frame"] / interval, 2),
        }
    return results


def main() -> None:
    tune_process()  # as the surgseg commands do (surgseg.tuning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*",
                        default=["offline", "gpu_rate", "decode", "rss", "stream"])  # fmt: skip
    parser.add_argument("--standin-fps", type=float, default=500.0)
    parser.add_argument("--clip-frames", type=int, default=300)
    parser.add_argument("--long-frames", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each offline and gpu_rate measurement; their medians "
                             "are reported (and every run)")  # fmt: skip
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
    if "gpu_rate" in args.only:
        report["gpu_rate"] = gpu_rate(args.out, standin_fps=args.standin_fps,
                                      repeats=args.repeats, frames=args.clip_frames)  # fmt: skip
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
