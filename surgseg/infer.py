"""Offline processing of recorded surgeries: video in; per-frame masks, pose cues, overlay
and a run record out; for a whole archive, one table and a report beside them.

Each input video gets its own folder::

    <output_dir>/<video name>/
        masks/000000.png …  or  masks.mkv     lossless class index per pixel, frame size
        cues.jsonl                             one line per frame, flushed as it goes
        overlay.mp4                            optional: masks, axis and tip drawn on the frame
        run.json                               written last: its absence marks an unfinished run
        failed.json                            instead of run.json: the video could not be read

and the folder as a whole::

    <output_dir>/cues.parquet/video=…/         the cues of every video, one table
    <output_dir>/videos.parquet                one row per video
    <output_dir>/index.html                    the report (assets in index_files/)

A run skips the videos an earlier run finished, or failed on, with the same checkpoint and
settings (``run_hash``), and redoes unfinished ones. An archive's videos run here one after
another or on a Ray cluster (``surgseg.cluster``), through the same ``VideoJobs``; planning
them, and the folder's tables and report, are ``surgseg.archive``'s.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surgseg import report, tables
from surgseg.atomic import write_json
from surgseg.decode import VideoReader, damage_note
from surgseg.errors import ConfigError, SurgsegError, VideoError
from surgseg.jobs import Job, JobResult, clear_leftovers, input_stat, record_failure
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.predictor import Predictor
from surgseg.progress import progress_bar
from surgseg.stages import open_outputs, segmentation_pipeline


def software_versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import av
    import cv2
    import numpy
    import torch
    import torchvision

    import surgseg

    return {
        "surgseg": surgseg.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "av": av.__version__,
        "ffmpeg": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
    }


def _clear_outputs(out_dir: Path) -> None:
    """Remove the marker and outputs of an earlier run in ``out_dir``."""
    for name in ("run.json", "failed.json"):
        (out_dir / name).unlink(missing_ok=True)
    for name in ("cues.jsonl", "masks.mkv", "overlay.mp4"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "masks", ignore_errors=True)


def process_video(
    video: Path,
    *,
    predictor: Predictor,
    out_dir: Path,
    outputs: OutputOptions,
    cues: CueOptions,
    batch_size: int = 4,
    workers: Workers | None = None,
    progress: bool = True,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment every frame of ``video`` and write masks, cues, overlay and ``run.json``.

    The stages run concurrently (``surgseg.stages``). ``record`` holds extra fields for
    run.json (the resolved config, the checkpoint path). Returns the run record. Raises
    VideoError for a video that cannot be processed.
    """
    started = datetime.now(UTC)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir)
    meta = predictor.meta
    with VideoReader(video) as reader:
        info = reader.info
        opened = open_outputs(out_dir, info=info, options=outputs, class_names=meta.class_names)
        bar = progress_bar(total=info.frames_reported, desc=video.name, enabled=progress,
                           leave=False)  # fmt: skip
        try:
            pipeline = segmentation_pipeline(reader, predictor=predictor, cues=cues,
                                             outputs=opened, batch_size=batch_size,
                                             workers=workers)  # fmt: skip
            for batch in pipeline:
                bar.update(len(batch))
            stages = pipeline.stats
            processed = stages["write"].frames
            if processed == 0:
                raise VideoError("no decodable frame", video)
            t0 = time.perf_counter()
            opened.close()
            closing = time.perf_counter() - t0
        except BaseException:
            opened.abort()
            raise
        finally:
            bar.close()
        stats = reader.stats

    def busy(*names: str) -> float:
        return sum(stages[n].busy_s for n in names)

    timing = {
        "decode": busy("decode"),
        "predict": busy("upload", "segment", "download"),
        "cues": busy("locate", "track"),
        "write": busy("render", "write") + closing,
    }
    wall = (datetime.now(UTC) - started).total_seconds()
    run = {
        "status": "done",
        "input": str(video),
        **(record or {}),
        "model": {
            "task": meta.task,
            "classes": {name: value for value, name in enumerate(meta.class_names)},
            "input_size": list(predictor.input_size),
            "engine": predictor.engine.name,
            "device": str(predictor.device),
        },
        "video": {
            "container": info.container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "rotation": info.rotation,
            "fps": info.fps,
            "time_base": str(info.time_base),
            "frames_reported": info.frames_reported,
            "duration_s": info.duration_s,
        },
        "frames": {"processed": processed, **stats.to_dict()},
        "outputs": {
            "masks": {"png": "masks/", "ffv1": "masks.mkv", None: None}[outputs.masks],
            "cues": "cues.jsonl",
            "overlay": "overlay.mp4" if outputs.overlay else None,
        },
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "timing_ms_per_frame": {k: round(1000 * v / processed, 2) for k, v in timing.items()},
        "stages": {name: s.to_dict() for name, s in stages.items()},
        "wall_s": round(wall, 3),
        "fps": round(processed / wall, 2) if wall > 0 else None,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "software": software_versions(),
    }
    write_json(out_dir / "run.json", run)
    return run


class VideoJobs:
    """Processes videos one at a time with one predictor: clears what a killed process left
    in the video's folder, runs ``process_video``, adds the video's part of the cue table and
    its images for the report, and records a video that cannot be read in ``failed.json``."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        output_dir: Path,
        outputs: OutputOptions,
        cues: CueOptions,
        batch_size: int = 4,
        workers: Workers | None = None,
        record: dict[str, Any] | None = None,
        run_hash: str | None = None,
        progress: bool = False,
        worker: dict[str, Any] | None = None,
    ):
        self.predictor, self.output_dir = predictor, Path(output_dir)
        self.outputs, self.cues, self.batch_size, self.workers = outputs, cues, batch_size, workers
        self.record, self.run_hash, self.progress = record or {}, run_hash, progress
        self.worker = {"host": platform.node(), "pid": os.getpid(), **(worker or {})}

    def __call__(self, job: Job) -> JobResult:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        clear_leftovers(job.out_dir)
        tables.drop_cue_partition(self.output_dir, job.name)
        extra = {**self.record, "run_hash": self.run_hash, "input_stat": input_stat(job.video),
                 "worker": self.worker}  # fmt: skip
        try:
            run = process_video(job.video, predictor=self.predictor, out_dir=job.out_dir,
                                outputs=self.outputs, cues=self.cues,
                                batch_size=self.batch_size, workers=self.workers,
                                progress=self.progress, record=extra)  # fmt: skip
        except SurgsegError as exc:
            return record_failure(job, str(exc), run_hash=self.run_hash)
        tables.write_cue_partition(job.out_dir, name=job.name, output_dir=self.output_dir)
        if (entry := tables.read_entry(job.out_dir, job.name)) is not None:
            report.make_assets(self.output_dir, entry)
        return JobResult(job, "done", frames=run["frames"]["processed"],
                         damage=damage_note(run["frames"]))  # fmt: skip
