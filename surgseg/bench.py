"""Throughput of each stage alone and of the whole pipeline, with the resources they use.

``bench`` measures, on one video:

* each stage of ``surgseg.stages`` alone, with its workers: decode (PyAV to RGB arrays);
  ``device``, the model's side (upload, segment, download, overlapped as end to end) on
  frames decoded beforehand, and ``engine``, the network alone on one preprocessed batch;
  locate, track, render and write on the predictions made there. For each: wall ms per
  frame, CPU time of the whole process per frame (core-ms; every thread counted, those of
  FFmpeg, OpenCV and torch too, and the cue worker processes') and cores busy;
* the offline pipeline end to end, with the latency of each batch from leaving the decoder
  to being written, against a bound: the slower of the device (its throughput alone) and the
  CPU (cores × 1000 / the core-ms per frame of every stage together);
* process and system CPU use, GPU use (NVML, when ``pynvml`` is importable), peak RSS and
  peak GPU memory of each measurement;
* the model's FLOPs per frame (``FlopCounterMode``) against the device's measured matmul rate;
* the machine: CPU model, GPU name, load average before the run, software versions.

``StandInPredictor`` replaces the model's side by precomputed results delivered at a chosen
rate, so the pipeline can be measured at GPU speed on a machine without a GPU.

``write_report`` gathers every ``bench.json`` under a folder into ``bench.md`` (a table) and
``bench.png`` (a chart).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from surgseg.atomic import atomic_path
from surgseg.checkpoint import CheckpointMeta
from surgseg.cue_workers import SharedArena, worker_cpu_s
from surgseg.decode import Frame, VideoReader
from surgseg.engines import create_engine
from surgseg.live import percentiles_ms
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.pipeline import Pipeline, Stage
from surgseg.predictor import Pending, Prediction, Predictor, Uploaded
from surgseg.preprocess import Preprocess
from surgseg.stages import (
    Batch,
    batched,
    cue_stages,
    download,
    open_outputs,
    segment,
    segmentation_pipeline,
    upload,
    write_stages,
)
from surgseg.tasks import class_names

STAGES = ("decode", "device", "locate", "track", "render", "write")
REFINE = "refine_tips"  # timed too with cues.refine_tips: the model on crops, then geometry


def stages_of(alone: dict[str, Any]) -> tuple[str, ...]:
    """The stages timed alone in a run, in pipeline order."""
    return (*STAGES[:3], REFINE, *STAGES[3:]) if REFINE in alone else STAGES


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


class _StandInEngine:
    name = "stand-in"
    device = torch.device("cpu")


@dataclass
class _Due:
    """Ready at ``time`` (``time.perf_counter``): ``synchronize`` sleeps until then."""

    time: float

    def synchronize(self) -> None:
        delay = self.time - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


class StandInPredictor:
    """Delivers precomputed predictions at ``fps`` frames per second, like a GPU would.

    ``launch`` returns at once; the device is a queue served at ``fps``: a batch is due
    ``len(batch) / fps`` after the previous one (or after its launch, if later), and
    ``download`` sleeps until then, releasing the GIL as a thread waiting on a GPU does.
    Frame ``i`` of a video gets ``predictions[i % len(predictions)]``: they must have the
    frames' size.
    """

    def __init__(self, predictions: Sequence[Prediction], meta: CheckpointMeta, *, fps: float):
        if fps <= 0:
            raise ValueError(f"the stand-in's fps must be positive, got {fps}")
        self.predictions = list(predictions)
        self.meta = meta
        self.fps = fps
        self.engine = _StandInEngine()
        self.device = self.engine.device
        self.geometry = Preprocess(meta.input_size, meta.mean, meta.std)
        self.input_size = self.geometry.input_size
        self._served = 0
        self._free_at = 0.0
        self._lock = threading.Lock()
        # every prediction in one array, stacked now: a GPU's results arrive in pinned
        # buffers without a host copy, so a batch here is a view, made without copying too
        self._masks = torch.from_numpy(np.stack([p.mask for p in self.predictions]))
        self._confidences = torch.from_numpy(np.stack([p.confidence for p in self.predictions]))
        self._moved_into: SharedArena | None = None

    def upload(self, frames: Sequence[np.ndarray]) -> Uploaded:
        """Nothing to copy: only the count of frames travels."""
        return Uploaded(torch.empty(len(frames), 0))

    def launch(self, batch: Uploaded, *, into: SharedArena | None = None) -> Pending:
        """The next predictions, due when the stand-in device has served the batch (views of
        its predictions, moved once into ``into`` if given and it has room, as a GPU's
        results land there)."""
        n = len(batch.frames)
        with self._lock:
            if into is not None and self._moved_into is not into:
                self._move_into(into)
            start = max(time.perf_counter(), self._free_at)
            self._free_at = start + n / self.fps
            first, self._served = self._served, self._served + n
            due = _Due(self._free_at)
        labels, conf = self._stacked(first % len(self.predictions), n)
        return Pending(labels, conf, due)

    def _move_into(self, arena: SharedArena) -> None:
        masks = arena.empty(self._masks.shape)
        confidences = None if masks is None else arena.empty(self._confidences.shape)
        if confidences is not None:
            masks[...], confidences[...] = self._masks.numpy(), self._confidences.numpy()
            self._masks, self._confidences = torch.from_numpy(masks), torch.from_numpy(confidences)
        self._moved_into = arena

    def _stacked(self, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``first``… as batch tensors: views of the stacked predictions, but for
        a batch that wraps around their end (copied)."""
        if first + n <= len(self.predictions):
            return self._masks[first : first + n], self._confidences[first : first + n]
        rows = [(first + i) % len(self.predictions) for i in range(n)]
        return self._masks[rows], self._confidences[rows]

    def download(self, pending: Pending) -> list[Prediction]:
        """Sleep until the batch is due, then return it."""
        return pending.wait()

    def predict(self, frames: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for ``frames``, at the stand-in's rate."""
        return self.download(self.launch(self.upload(frames)))


def clip_predictions(folder: str | Path, task: str) -> list[Prediction]:
    """The ground truth of a synthetic clip (``surgseg.synthetic.write_clip``) as predictions
    for ``task``, with a confidence of 0.9: what a stand-in delivers for that clip."""
    with np.load(Path(folder) / "masks.npz") as masks:
        labels = masks["types" if task == "types" else "parts"]
    if task == "binary":
        labels = (labels > 0).astype(np.uint8)
    confidence = np.full(labels.shape[1:], 230, np.uint8)
    return [Prediction(m, confidence) for m in labels]


def _cpu_s() -> float:
    """CPU seconds of this process (every thread) and of its cue worker processes."""
    return time.process_time() + worker_cpu_s()


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
    def measure(self, into: dict[str, Any], frames: Callable[[], int]) -> Iterator[None]:
        """Fill ``into`` with the resources used inside the block, per frame where it makes
        sense (``frames()`` is asked at the end)."""
        self.peak_rss, self.gpu_samples = 0, []
        self._stop.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        sampler = threading.Thread(target=self._sample, daemon=True)
        # process CPU time from the kernel's per-process clock (ns), not psutil's 10 ms ticks,
        # plus what the cue worker processes spent for this process
        cpu0, sys0, wall0 = _cpu_s(), psutil.cpu_times(), time.perf_counter()
        sampler.start()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - wall0
            cpu1, sys1 = _cpu_s(), psutil.cpu_times()
            self._stop.set()
            sampler.join()
            busy = cpu1 - cpu0
            sys_total = sum(sys1) - sum(sys0)
            sys_idle = (sys1.idle + getattr(sys1, "iowait", 0)) - (
                sys0.idle + getattr(sys0, "iowait", 0)
            )
            n = frames()
            into.update(
                frames=n,
                wall_s=round(wall, 4),
                fps=round(n / wall, 2) if wall > 0 else None,
                ms_per_frame=round(1000 * wall / n, 3) if n else None,
                core_ms_per_frame=round(1000 * busy / n, 3) if n else None,
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


def _alone(stages: list[Stage], batches: list[Batch], monitor: _Monitor) -> dict[str, Any]:
    """Run ``stages`` by themselves over ``batches`` (already holding what they need), in a
    pipeline as end to end: throughput, per-frame core-ms, the stages' own figures."""
    result: dict[str, Any] = {}
    pipeline = Pipeline(batches, stages, count=len)
    with monitor.measure(result, lambda: pipeline.stats[stages[-1].name].frames):
        stats = pipeline.run()
    result["workers"] = max(s.workers for s in stages)
    result["stages"] = {s.name: stats[s.name].to_dict() for s in stages}
    return result


def engine_only(predictor: Predictor, batch: Batch, *, repeats: int = 10) -> dict[str, Any]:
    """The network alone on one preprocessed batch, ``repeats`` times back to back (one
    synchronization at the end): the model-only throughput the pipeline is compared with."""
    if isinstance(predictor, StandInPredictor):
        return {"fps": predictor.fps, "ms_per_frame": round(1000 / predictor.fps, 3)}
    with torch.inference_mode():
        frames = torch.from_numpy(np.stack([f.image for f in batch.frames])).to(predictor.device)
        x = predictor.preprocess(frames)
        predictor.engine.infer(x)  # warm-up
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            predictor.engine.infer(x)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        wall = time.perf_counter() - t0
    n = repeats * len(batch)
    return {"fps": round(n / wall, 2), "ms_per_frame": round(1000 * wall / n, 3)}


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
    """The best measured matmul rate on ``device`` (TFLOP/s): the compute roof. On the CPU the
    thread count is set explicitly first (MKL otherwise picks its own, often fewer), and the
    matmul is timed for at least a second."""
    if device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, spent = float("inf"), 0.0
    for i in itertools.count():
        if i >= 5 and spent >= 1.0:
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
    return 2 * n**3 / best / 1e12


def _first(reader: VideoReader, n: int | None) -> Iterator[Frame]:
    for frame in reader:
        yield frame
        if n is not None and frame.index + 1 >= n:
            return


def bench(
    video: str | Path,
    *,
    predictor: Predictor | StandInPredictor,
    out_dir: str | Path,
    batch_size: int = 4,
    max_frames: int | None = None,
    held_frames: int = 32,
    queue_size: int = 2,
    outputs: OutputOptions | None = None,
    cues: CueOptions | None = None,
    workers: Workers | None = None,
    flops: bool = True,
) -> dict[str, Any]:
    """Measure every stage alone, then the pipeline end to end, on ``video``.

    Args:
        predictor: the model under test (engine, device, input size), or a stand-in.
        out_dir: scratch outputs go to ``out_dir/scratch`` (removed at the end).
        max_frames: frames decoded and processed end to end; None: the whole video.
        held_frames: frames kept in memory for the stage-alone runs after decode
            (memory: held_frames × frame size × about 2).
        flops: also count the model's FLOPs and measure the matmul roof.
        cues: with ``refine_tips``, that stage is timed alone too (not with a stand-in).

    Returns a JSON-ready dict (see docs/streaming.md).
    """
    if cues is not None and cues.refine_tips and isinstance(predictor, StandInPredictor):
        raise ValueError("cues.refine_tips needs the model: not with a stand-in")
    load_before = [round(v, 2) for v in os.getloadavg()]  # ours included: nothing started yet
    video, out_dir = Path(video), Path(out_dir)
    outputs = outputs or OutputOptions()
    cues = cues or CueOptions()
    workers = workers or Workers()
    device = predictor.device
    monitor = _Monitor(device)
    scratch = out_dir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    names = predictor.meta.class_names

    # decode alone (the source thread of a pipeline without stages), then, untimed, the
    # first frames again, kept for the other stages alone (holding frames while decoding
    # would time fresh memory for each, which the pipeline reuses)
    alone: dict[str, Any] = {"decode": {}}
    with VideoReader(video) as reader:
        info = reader.info
        decoding = Pipeline(_first(reader, max_frames), [], source_name="decode",
                            queue_size=queue_size)  # fmt: skip
        with monitor.measure(alone["decode"], lambda: decoding.stats["decode"].frames):
            for _ in decoding:
                pass
    with VideoReader(video) as reader:
        held = list(itertools.islice(_first(reader, max_frames), held_frames))

    # the device side (after one warm-up batch), then each CPU stage on its results
    batches = list(batched(held, batch_size))
    locate, *refine, track = cue_stages(predictor, cues, workers=workers.locate)
    device_stages = [upload(predictor), segment(predictor, into=locate.fn.arena),
                     download(predictor)]  # fmt: skip
    _alone(device_stages, batches[:1], monitor)
    alone["device"] = _alone(device_stages, batches, monitor)
    alone["engine"] = engine_only(predictor, batches[0])
    _alone([locate], batches[:1], monitor)  # warm-up: the video's field of view, found once
    alone["locate"] = _alone([locate], batches, monitor)
    if refine:
        _alone(refine, batches[:1], monitor)  # warm-up: the crops' kernels
        alone[REFINE] = _alone(refine, batches, monitor)
    alone["track"] = _alone([track], batches, monitor)
    opened = open_outputs(scratch / "alone", info=info, options=outputs, class_names=names)
    render, write = write_stages(opened, workers=workers.render)
    alone["render"] = _alone([render], batches, monitor)
    for batch in batches:  # the render run has emptied them, as the write stage does
        batch.rendered = [opened.render(f, p, i) for f, p, i in
                          zip(batch.frames, batch.predictions, batch.instruments, strict=True)]
    alone["write"] = _alone([write], batches, monitor)
    t0 = time.perf_counter()
    opened.close()
    alone["write"]["close_s"] = round(time.perf_counter() - t0, 4)
    del batches

    # end to end
    opened = open_outputs(scratch / "end_to_end", info=info, options=outputs, class_names=names)
    end_to_end: dict[str, Any] = {}
    latencies: list[float] = []
    with VideoReader(video) as reader:
        pipeline = segmentation_pipeline(_first(reader, max_frames), predictor=predictor,
                                         cues=cues, outputs=opened, batch_size=batch_size,
                                         workers=workers, queue_size=queue_size)  # fmt: skip
        with monitor.measure(end_to_end, lambda: pipeline.stats["write"].frames):
            for written in pipeline:
                latencies.append(time.perf_counter() - written.released)
            opened.close()
    end_to_end.update(latency_ms=percentiles_ms(latencies),
                      stages={k: s.to_dict() for k, s in pipeline.stats.items()})  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)

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
        "workers": {"locate": workers.locate, "render": workers.render},
        "cpu_cores": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(device, load_before=load_before),
        "stages_alone": alone,
        "end_to_end": end_to_end,
        "bound": pipeline_bound(alone, cores=psutil.cpu_count() or 1),
    }
    result["end_to_end_vs_bound"] = round(end_to_end["fps"] / result["bound"]["fps"], 3)
    result["end_to_end_vs_model"] = round(end_to_end["fps"] / alone["engine"]["fps"], 3)
    if flops and not isinstance(predictor, StandInPredictor):
        result["compute"] = compute_floor(predictor, alone["engine"]["ms_per_frame"])
    return result


def cpu_model() -> str | None:
    """The CPU's model name (``model name`` in /proc/cpuinfo; elsewhere ``platform``'s)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(device: torch.device, *, load_before: list[float]) -> dict[str, Any]:
    """What a figure was measured on: CPU model and cores, GPU, the load average before the
    run (1, 5, 15 minutes), the software's versions."""
    from surgseg.infer import software_versions

    software = software_versions()
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        software.update(cuda=torch.version.cuda,
                        cudnn=str(torch.backends.cudnn.version()))  # fmt: skip
    return {"cpu": cpu_model(), "cpu_cores": psutil.cpu_count(), "gpu": gpu,
            "load_avg_before": load_before, "software": software}  # fmt: skip


def pipeline_bound(alone: dict[str, Any], *, cores: int) -> dict[str, Any]:
    """The end-to-end rate the resources allow: the device's rate alone, or the CPU's, cores ×
    1000 / the core-ms per frame of every stage (the device side included, for its host
    work), whichever is lower. With refine_tips (one thread, the device and the cue geometry
    in turn) its own rate alone is a third limit."""
    core_ms = sum(alone[s]["core_ms_per_frame"] for s in stages_of(alone))
    cpu = cores * 1000 / core_ms if core_ms > 0 else float("inf")
    limits = {"device": alone["device"]["fps"], "cpu": cpu}
    if REFINE in alone:
        limits[REFINE] = alone[REFINE]["fps"]
    limited_by = min(limits, key=limits.get)
    return {"fps": round(limits[limited_by], 2), "device_fps": limits["device"],
            "cpu_fps": round(cpu, 2), "core_ms_per_frame": round(core_ms, 3), "cores": cores,
            "limited_by": limited_by}  # fmt: skip


def compute_floor(predictor: Predictor, model_ms_per_frame: float) -> dict[str, Any]:
    """The model's FLOPs per frame, the measured matmul roof, and the share of that roof the
    model's arithmetic reached (``percent_of_roof``: FLOPs per second achieved / roof)."""
    per_frame = model_flops(predictor)
    roof = matmul_tflops(predictor.device)
    achieved = per_frame / (model_ms_per_frame / 1000) / 1e12
    return {"gflops_per_frame": round(per_frame / 1e9, 2), "matmul_tflops": round(roof, 3),
            "model_ms_per_frame": model_ms_per_frame, "model_tflops": round(achieved, 3),
            "percent_of_roof": round(100 * achieved / roof, 1)}  # fmt: skip


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
    return "–" if value is None else str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """``bench.md``: the rates of every run, each stage's per-frame cost, and the machine, each
    table followed by a paragraph on how to read it (blank lines between blocks, or Markdown
    reads a paragraph right after a table as one more row)."""
    names = _stage_names(runs)
    rates = ["run", "engine", "device", "batch", "input", "workers",
             *(f"{s} fps" for s in names), "engine-only fps", "e2e fps", "bound fps",
             "e2e/bound", "e2e/model", "e2e p50/p99 ms", "peak RSS MB", "peak GPU MB",
             "GPU %", "% of roof"]  # fmt: skip
    costs = ["run", *(f"{s} ms (core-ms)" for s in names), "Σ core-ms"]
    hosts = ["run", "CPU", "cores", "GPU", "load before (1/5/15 min)", "torch", "opencv",
             "av (libavcodec)"]  # fmt: skip
    rate_rows, cost_rows, host_rows = [], [], []
    for label, r in runs:
        e2e, model, alone, bound = r["end_to_end"], r["model"], r["stages_alone"], r["bound"]
        lat = e2e["latency_ms"]
        rate_rows.append([label, model["engine"], model["device"], r["batch_size"],
                          "×".join(map(str, model["input_size"])),
                          f"{r['workers']['locate']}/{r['workers']['render']}",
                          *(alone[s]["fps"] if s in alone else None for s in names),
                          alone["engine"]["fps"],
                          e2e["fps"], f"{bound['fps']} ({bound['limited_by']})",
                          r["end_to_end_vs_bound"], r.get("end_to_end_vs_model"),
                          f"{lat['p50']}/{lat['p99']}", e2e["peak_rss_mb"],
                          e2e["peak_gpu_mem_mb"], e2e["gpu_util_percent"],
                          r.get("compute", {}).get("percent_of_roof")])  # fmt: skip
        cost_rows.append([label, *(f"{alone[s]['ms_per_frame']} ({alone[s]['core_ms_per_frame']})"
                                   if s in alone else None for s in names),
                          bound["core_ms_per_frame"]])  # fmt: skip
        host = r.get("machine", {})
        software = host.get("software", {})
        load = host.get("load_avg_before")
        host_rows.append([label, host.get("cpu"), host.get("cpu_cores", r.get("cpu_cores")),
                          host.get("gpu"), None if load is None else "/".join(map(str, load)),
                          software.get("torch"), software.get("opencv"),
                          None if "av" not in software
                          else f"{software['av']} ({software.get('ffmpeg')})"])  # fmt: skip
    blocks = [
        "# surgseg-bench",
        _table(rates, rate_rows),
        "Stage fps: each stage alone, with its workers (decode: PyAV to RGB; device: upload, "
        "segment and download overlapped; engine-only: the network alone, back to back). "
        "Bound: the lower of the device's fps alone and cores × 1000 / Σ core-ms, the CPU "
        "time per frame of all stages together; e2e/bound near 1 means no stage and no lock "
        "holds the pipeline below what its resources allow; e2e/model is end to end over the "
        "engine-only rate. % of roof: the model's FLOP/s over the measured matmul FLOP/s of "
        "the device (fp32 on CPUs; a rough roof).",
        _table(costs, cost_rows),
        "Per-frame cost of each stage alone: wall ms per frame and, in brackets, CPU ms per "
        "frame of the whole process and of its cue worker processes (core-ms: every thread "
        "counted, FFmpeg's and OpenCV's too).",
        _table(hosts, host_rows),
        "The machine of each run: wall-clock rates only compare between runs made on the same "
        "machine while it was otherwise idle (the load average is taken before the run, with "
        "nothing of it started yet).",
    ]
    return "\n\n".join(blocks) + "\n"


def _stage_names(runs: Sequence[tuple[str, dict[str, Any]]]) -> tuple[str, ...]:
    """The stages timed alone in any of ``runs``, in pipeline order."""
    return stages_of({name: None for _, r in runs for name in r["stages_alone"]})


def _series(result: dict[str, Any], name: str) -> float:
    if name == "end to end":
        value = result["end_to_end"]["fps"]
    elif name == "bound":
        value = result["bound"]["fps"]
    else:
        stage = result["stages_alone"].get("engine" if name == "engine only" else name)
        value = None if stage is None else stage["fps"]
    return float(value or 0.0)


def report_chart(runs: Sequence[tuple[str, dict[str, Any]]], *, headroom: float = 1.2) -> Any:
    """``bench.png``'s figure: per run, each stage alone, the engine alone, end to end and the
    bound, in frames per second, the value on each bar.

    The axis ends at ``headroom`` × the largest end-to-end or bound rate, so that a very fast
    stage (decode on a small clip, the engine on a GPU) does not squeeze the bars that
    matter: a longer bar is cut at the axis's end, hatched, and labelled with its value and
    "▸".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = (*_stage_names(runs), "engine only", "end to end", "bound")
    values = {name: [_series(r, name) for _, r in runs] for name in series}
    reference = max([*values["end to end"], *values["bound"]], default=0.0)
    limit = headroom * (reference or max(max(v, default=0.0) for v in values.values()) or 1.0)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.3 * len(series) * len(runs)))
    height = 0.8 / len(series)
    for i, name in enumerate(series):
        y = np.arange(len(runs)) + i * height
        shown = [min(v, limit) for v in values[name]]
        clipped = [v > limit for v in values[name]]
        bars = ax.barh(y, shown, height, label=name)
        for bar, cut in zip(bars, clipped, strict=True):
            if cut:
                bar.set_hatch("//")
        labels = [f"{v:.1f} ▸" if cut else f"{v:.1f}"
                  for v, cut in zip(values[name], clipped, strict=True)]  # fmt: skip
        ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.set_xlim(0, limit * 1.12)  # room for the labels of the longest bars
    ax.set_yticks(np.arange(len(runs)) + 0.4 - height / 2, [label for label, _ in runs],
                  fontsize=8)  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlabel(f"frames per second (axis cut at {headroom:g} × the largest end-to-end or "
                  "bound rate; ▸: longer bars, their value)")  # fmt: skip
    ax.set_title("surgseg-bench: each stage alone, end to end, and the resource bound")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def write_report(root: str | Path) -> tuple[Path, Path] | None:
    """(Re)build ``root/bench.md`` and ``root/bench.png`` from every bench.json under ``root``.
    Returns their paths, or None when there is no bench.json."""
    root = Path(root)
    runs = collect(root)
    if not runs:
        return None
    md = root / "bench.md"
    with atomic_path(md) as tmp:
        tmp.write_text(report_markdown(runs))
    fig = report_chart(runs)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    png = root / "bench.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return md, png
