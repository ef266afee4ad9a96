"""Throughput of each stage alone and of the whole pipeline, with the resources they use.

``bench`` measures, on one video:

* each stage alone: decode (PyAV to RGB arrays); preprocess and inference on frames decoded
  beforehand; pose cues on the masks predicted there; writing (masks, cues, overlay);
* the offline pipeline end to end (``surgseg.pipeline.segmentation_pipeline``), with the
  latency of each batch from leaving the decoder to being written;
* process CPU use (cores busy), system CPU use (other processes included), GPU use (NVML, when
  ``pynvml`` is importable), peak RSS and peak GPU memory of each measurement;
* the model's FLOPs per frame (``FlopCounterMode``) and the device's measured matmul rate:
  the compute floor of a frame, and how far the model's time is above it.

``write_report`` gathers every ``bench.json`` under a folder into ``bench.md`` (a table) and
``bench.png`` (a chart).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from surgseg.atomic import atomic_path
from surgseg.checkpoint import CheckpointMeta
from surgseg.decode import Frame, VideoReader
from surgseg.engines import create_engine
from surgseg.infer import CueOptions
from surgseg.pipeline import (
    Batch,
    Pipeline,
    PoseCues,
    Stage,
    Write,
    batched,
    infer,
    segmentation_pipeline,
    upload,
)
from surgseg.predictor import Predictor
from surgseg.sinks import CuesWriter, OverlayWriter, open_mask_writer
from surgseg.stream import percentiles_ms
from surgseg.tasks import class_names, palette

STAGES = ("decode", "preprocess", "inference", "cues", "write")


def random_predictor(
    *,
    model: dict[str, Any],
    task: str = "binary",
    input_size: tuple[int, int] = (256, 320),
    engine: str = "torch",
    device: str = "cpu",
    seed: int = 0,
    **engine_options: Any,
) -> Predictor:
    """A predictor over a model with seeded random weights (speed needs no training).

    ``model`` holds ``build_model`` keyword arguments (depth, output_stride, head, aux_loss).
    """
    torch.manual_seed(seed)
    arch = {k: model[k] for k in ("depth", "output_stride", "head", "aux_loss") if k in model}
    meta = CheckpointMeta(
        task=task,
        class_names=list(class_names(task)),
        model=arch,
        input_size=tuple(input_size),
        provenance={"weights": "random"},
    )
    net = meta.build()
    return Predictor(create_engine(engine, model=net, meta=meta, device=device, **engine_options),
                     meta)  # fmt: skip


class _Monitor:
    """Samples RSS and GPU use in a thread; CPU use from process and system CPU times."""

    def __init__(self, device: torch.device, interval_s: float = 0.05):
        self.device = device
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak_rss = 0
        self.gpu_samples: list[float] = []
        self._stop = threading.Event()
        self._nvml = self._nvml_handle()

    def _nvml_handle(self) -> Any:
        if self.device.type != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            return pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
        except Exception:  # no pynvml, or no NVML library: GPU use is reported as null
            return None

    def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            if self._nvml is not None:
                import pynvml

                self.gpu_samples.append(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            if self._stop.wait(self.interval_s):
                return

    @contextmanager
    def measure(self, into: dict[str, Any]) -> Iterator[None]:
        """Fill ``into`` with the resources used inside the block."""
        self.peak_rss, self.gpu_samples = 0, []
        self._stop.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        sampler = threading.Thread(target=self._sample, daemon=True)
        cpu0, sys0, wall0 = self.process.cpu_times(), psutil.cpu_times(), time.perf_counter()
        sampler.start()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - wall0
            cpu1, sys1 = self.process.cpu_times(), psutil.cpu_times()
            self._stop.set()
            sampler.join()
            busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            sys_total = sum(sys1) - sum(sys0)
            sys_idle = (sys1.idle + getattr(sys1, "iowait", 0)) - (
                sys0.idle + getattr(sys0, "iowait", 0)
            )
            into.update(
                wall_s=round(wall, 4),
                process_cpu_cores=round(busy / wall, 2) if wall > 0 else None,
                system_cpu_percent=round(100 * (1 - sys_idle / sys_total), 1)
                if sys_total > 0
                else None,
                gpu_util_percent=round(float(np.mean(self.gpu_samples)), 1)
                if self.gpu_samples
                else None,
                peak_rss_mb=round(self.peak_rss / 2**20, 1),
                peak_gpu_mem_mb=round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
                if self.device.type == "cuda"
                else None,
            )


def _alone(name: str, fn: Callable[[Batch], Any], batches: list[Batch], monitor: _Monitor,
           sync: Callable[[], None]) -> dict[str, Any]:  # fmt: skip
    """Run one stage by itself, in a pipeline thread as end to end: throughput, latency of each
    batch and resources."""
    latencies = []

    def timed(batch: Batch) -> Batch:
        t0 = time.perf_counter()
        out = fn(batch)
        sync()
        latencies.append(time.perf_counter() - t0)
        return out

    result: dict[str, Any] = {}
    pipeline = Pipeline(batches, [Stage(name, timed)], count=len)
    with monitor.measure(result):
        stats = pipeline.run()[name]
    result.update(stats.to_dict(), latency_ms=percentiles_ms(latencies))
    return result


def model_flops(predictor: Predictor) -> int:
    """FLOPs of one frame through the network at the predictor's input size (counted on the
    meta device: nothing is computed)."""
    with torch.device("meta"):
        net = predictor.meta.build().eval()
        x = torch.empty(1, 3, *predictor.input_size)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def matmul_tflops(device: torch.device, *, dtype: torch.dtype = torch.float32) -> float:
    """The best measured matmul rate on ``device`` (TFLOP/s): the compute roof."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def bench(
    video: str | Path,
    *,
    predictor: Predictor,
    out_dir: str | Path,
    batch_size: int = 4,
    max_frames: int | None = None,
    held_frames: int = 32,
    queue_size: int = 2,
    masks: str = "png",
    overlay: bool = True,
    cues: CueOptions | None = None,
    flops: bool = True,
) -> dict[str, Any]:
    """Measure every stage alone, then the pipeline end to end, on ``video``.

    Args:
        predictor: the model under test (engine, device, input size).
        out_dir: scratch outputs go to ``out_dir/scratch`` (removed at the end).
        max_frames: frames decoded and processed end to end; None: the whole video.
        held_frames: frames kept in memory for the preprocess, inference, cues and write
            measurements (memory: held_frames × frame size).
        flops: also count the model's FLOPs and measure the matmul roof.

    Returns a JSON-ready dict (see docs/streaming.md).
    """
    video, out_dir = Path(video), Path(out_dir)
    cues = cues or CueOptions()
    device = predictor.device
    monitor = _Monitor(device)
    scratch = out_dir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # decode alone (the source thread of a pipeline without stages), keeping the first frames
    held: list[Frame] = []
    decode: dict[str, Any] = {}
    with monitor.measure(decode), VideoReader(video) as reader:
        info = reader.info
        frames = iter(reader) if max_frames is None else _first(reader, max_frames)
        decoding = Pipeline(frames, [], source_name="decode", queue_size=queue_size)
        for frame in decoding:
            if len(held) < held_frames:
                held.append(frame)
    decode.update(decoding.stats["decode"].to_dict())

    # preprocess and inference alone, on frames decoded beforehand (after one warm-up batch)
    batches = list(batched(held, batch_size))
    to_device, run_model = upload(predictor), infer(predictor)
    _alone("warm-up", lambda b: run_model(to_device(b)), batches[:1], monitor, sync)
    preprocess = _alone("preprocess", to_device, batches, monitor, sync)
    inference = _alone("inference", run_model, batches, monitor, sync)  # on to_device's inputs

    # pose cues alone on the predicted masks; writing alone
    pose = PoseCues(task=predictor.meta.task, **asdict(cues))
    cue_stage = _alone("cues", pose, batches, monitor, sync)
    sinks_kw = info.writer_format()

    def open_writers(folder: Path) -> Write:
        folder.mkdir(parents=True, exist_ok=True)
        return Write(
            masks=open_mask_writer(masks, folder, **sinks_kw),
            cues=CuesWriter(folder / "cues.jsonl"),
            overlay=OverlayWriter(folder / "overlay.mp4",
                                  palette=palette(predictor.meta.num_classes), **sinks_kw)
            if overlay else None,
        )  # fmt: skip

    def close_writers(write: Write) -> None:
        for sink in (write.masks, write.cues, write.overlay):
            if sink is not None:
                sink.close()

    write = open_writers(scratch / "write_alone")
    write_stage = _alone("write", write, batches, monitor, sync)
    t0 = time.perf_counter()
    close_writers(write)
    write_stage["close_s"] = round(time.perf_counter() - t0, 4)
    del batches

    # end to end
    write = open_writers(scratch / "end_to_end")
    pose = PoseCues(task=predictor.meta.task, **asdict(cues))
    end_to_end: dict[str, Any] = {}
    latencies = []
    with monitor.measure(end_to_end), VideoReader(video) as reader:
        frames = iter(reader) if max_frames is None else _first(reader, max_frames)
        pipeline = segmentation_pipeline(frames, predictor=predictor, cues=pose, write=write,
                                         batch_size=batch_size, queue_size=queue_size)  # fmt: skip
        processed = 0
        t0 = time.perf_counter()
        for written in pipeline:
            latencies.append(time.perf_counter() - written.released)
            processed += len(written)
        close_writers(write)
        wall = time.perf_counter() - t0
    end_to_end.update(frames=processed, fps=round(processed / wall, 2),
                      latency_ms=percentiles_ms(latencies),
                      stages={k: s.to_dict() for k, s in pipeline.stats.items()})  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)

    alone = {"decode": decode, "preprocess": preprocess, "inference": inference,
             "cues": cue_stage, "write": write_stage}  # fmt: skip
    slowest = min(alone, key=lambda k: alone[k]["fps"] or float("inf"))
    result = {
        "video": {
            "path": str(video),
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "codec": info.codec,
        },
        "model": {
            **predictor.meta.model,
            "input_size": list(predictor.input_size),
            "task": predictor.meta.task,
            "engine": predictor.engine.name,
            "device": str(device),
        },
        "batch_size": batch_size,
        "cpu_cores": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "stages_alone": alone,
        "end_to_end": end_to_end,
        "slowest_stage": slowest,
        "end_to_end_vs_slowest": round(end_to_end["fps"] / alone[slowest]["fps"], 3),
    }
    if flops:
        result["compute"] = compute_floor(predictor, inference["ms_per_frame"])
    return result


def _first(reader: VideoReader, n: int) -> Iterator[Frame]:
    for frame in reader:
        yield frame
        if frame.index + 1 >= n:
            return


def compute_floor(predictor: Predictor, model_ms_per_frame: float) -> dict[str, Any]:
    """The model's FLOPs per frame, the measured fp32 matmul roof, and the model's time over
    the floor (FLOPs / roof). Preprocess and upsampling are part of the measured time."""
    per_frame = model_flops(predictor)
    roof = matmul_tflops(predictor.device)
    floor_ms = 1000 * per_frame / (roof * 1e12)
    return {"gflops_per_frame": round(per_frame / 1e9, 2), "matmul_tflops": round(roof, 3),
            "floor_ms_per_frame": round(floor_ms, 3),
            "model_ms_per_frame": model_ms_per_frame,
            "times_floor": round(model_ms_per_frame / floor_ms, 2)}  # fmt: skip


# --- report ---------------------------------------------------------------------------------


def _label(path: Path, root: Path) -> str:
    rel = path.parent.relative_to(root).as_posix()
    return "default" if rel == "." else rel


def collect(root: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every bench.json under ``root``, sorted by label."""
    root = Path(root)
    found = [(_label(p, root), json.loads(p.read_text())) for p in root.rglob("bench.json")]
    return sorted(found, key=lambda pair: pair[0])


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def write_report(root: str | Path) -> tuple[Path, Path] | None:
    """(Re)build ``root/bench.md`` and ``root/bench.png`` from every bench.json under ``root``.
    Returns their paths, or None when there is no bench.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    runs = collect(root)
    if not runs:
        return None
    head = ["run", "engine", "device", "batch", "input", *(f"{s} fps" for s in STAGES),
            "e2e fps", "e2e/slowest", "e2e p50/p99 ms", "peak RSS MB", "peak GPU MB",
            "GPU %", "× floor"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in runs:
        e2e, model = r["end_to_end"], r["model"]
        lat = e2e["latency_ms"]
        row = [label, model["engine"], model["device"], r["batch_size"],
               "×".join(map(str, model["input_size"])),
               *(r["stages_alone"][s]["fps"] for s in STAGES), e2e["fps"],
               r["end_to_end_vs_slowest"], f"{lat['p50']}/{lat['p99']}", e2e["peak_rss_mb"],
               e2e["peak_gpu_mem_mb"], e2e["gpu_util_percent"],
               r.get("compute", {}).get("times_floor")]  # fmt: skip
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    notes = [
        "",
        "Stage fps: the stage alone (frames per second of its busy time). e2e/slowest: end to "
        "end over the slowest stage alone (1.0 = the pipeline hides every other stage). "
        "× floor: model time over FLOPs / measured fp32 matmul rate.",
    ]
    md = root / "bench.md"
    with atomic_path(md) as tmp:
        tmp.write_text("# surgseg-bench\n\n" + "\n".join(lines + notes) + "\n")

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(runs) + 3), 4))
    names = [*STAGES, "end to end"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [
            (r["end_to_end"]["fps"] if name == "end to end" else r["stages_alone"][name]["fps"])
            or 0
            for _, r in runs
        ]
        ax.bar(np.arange(len(runs)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(runs)) + 0.4 - width / 2, [label for label, _ in runs],
                  rotation=20, ha="right", fontsize=8)  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("frames per second (log)")
    ax.set_title("surgseg-bench: each stage alone and end to end")
    ax.legend(fontsize=7, ncols=3)
    png = root / "bench.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return md, png
