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
settings (``run_hash``), and redoes unfinished ones. Videos run here one after another
(``process_inputs``) or on a Ray cluster (``surgseg.cluster``), through the same ``VideoJobs``.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgseg import report, tables
from surgseg.atomic import write_json
from surgseg.decode import VideoReader
from surgseg.errors import ConfigError, SurgsegError, VideoError
from surgseg.options import CueOptions, OutputOptions, RayOptions, Workers
from surgseg.predictor import Predictor, PredictorSpec
from surgseg.progress import LineProgress, progress_bar
from surgseg.stages import open_outputs, segmentation_pipeline

if TYPE_CHECKING:
    from surgseg.tables import VideoEntry

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts", ".wmv")


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading components free of wildcards."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not set(part) & set("*?["), parts))
    return Path(*fixed) if fixed else Path(".")


def find_inputs(spec: str | Path) -> list[tuple[Path, str]]:
    """Expand ``spec`` (a video file, a folder searched recursively for videos, or a glob)
    into (video, output folder name) pairs, sorted by path.

    The folder name is the video's path relative to what ``spec`` names (the folder, the
    glob's fixed leading folders, or the file's own folder), file name and extension
    included: it never leaves the output folder, two inputs never share it (``a.mp4`` and
    ``a.avi`` are ``a.mp4/`` and ``a.avi/``), and it does not depend on the other inputs.
    """
    path = Path(spec)
    if path.is_dir():
        root = path
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise VideoError("no video files in this folder", path)
    elif any(ch in str(spec) for ch in "*?["):
        spec = os.path.normpath(spec)  # no ".." left to lead a name out of the output folder
        root = _glob_root(spec)
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not found:
            raise VideoError("no file matches this pattern", spec)
    else:  # a single file; a missing one fails when it is opened, with its name
        return [(path, path.name)]
    return [(video, video.relative_to(root).as_posix()) for video in found]


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


# --- a batch of videos: what is left to do, one video at a time, the summary ------------------


@dataclass(frozen=True)
class Job:
    """One input video and its folder (``name``, relative to the output folder)."""

    video: Path
    name: str
    out_dir: Path


@dataclass
class JobResult:
    """How one video ended: ``done`` (with its frame count) or ``failed`` (with the reason)."""

    job: Job
    status: str
    frames: int = 0
    reason: str | None = None


@dataclass
class InferSummary:
    """Outcome of a run over several inputs."""

    done: list[Path] = field(default_factory=list)  # output folders of videos finished now
    skipped: list[Path] = field(default_factory=list)  # finished by an earlier run, same hash
    failed: list[tuple[Path, str]] = field(default_factory=list)  # input, one-line reason
    frames: int = 0  # frames processed in this run
    wall_s: float = 0.0

    def add(self, result: JobResult) -> None:
        """Count one finished video."""
        if result.status == "done":
            self.done.append(result.job.out_dir)
            self.frames += result.frames
        else:
            self.failed.append((result.job.video, result.reason or "failed"))

    def lines(self) -> list[str]:
        """The summary for people: counts, frames, time, and every failure with its reason."""
        fps = f" ({self.frames / self.wall_s:.1f} fps)" if self.wall_s > 0 and self.frames else ""
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (finished earlier with the "
                 f"same checkpoint and settings), {len(self.failed)} failed; {self.frames} "
                 f"frames in {self.wall_s:.1f} s{fps}"]  # fmt: skip
        if self.failed:
            lines += ["failed:", *(f"  {reason}" for _, reason in self.failed)]
        return lines


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_hash(checkpoint: str | Path, settings: Mapping[str, Any]) -> str:
    """What decides a video's outputs, as a short digest: the checkpoint's bytes and the
    ``settings`` (task, input size, engine and precision, cue and output options). Paths,
    batch size, worker counts and the cluster do not change the outputs and stay out."""
    text = json.dumps({"checkpoint_sha256": file_digest(checkpoint), **settings},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_stat(video: Path) -> dict[str, int] | None:
    """Size and modification time of an input, to notice that it changed; None if missing."""
    try:
        st = video.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_record(path: Path) -> dict[str, Any] | None:
    """A run.json or failed.json, or None if it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def earlier_outcome(job: Job, run_hash: str) -> dict[str, Any] | None:
    """The record of an earlier run that finished ``job``, or failed on its unchanged input,
    with the same ``run_hash``; None when the video is to be (re)done."""
    done = read_record(job.out_dir / "run.json")
    if done and done.get("status") == "done" and done.get("run_hash") == run_hash:
        return done
    failed = read_record(job.out_dir / "failed.json")
    if (failed and failed.get("run_hash") == run_hash
            and failed.get("input_stat") == input_stat(job.video)):  # fmt: skip
        return failed
    return None


def plan_jobs(
    inputs: str | Path, output_dir: Path, *, run_hash: str, resume: bool = True
) -> tuple[list[Job], list[tuple[Job, dict[str, Any]]]]:
    """(videos to process, videos an earlier run ended with their record). ``resume`` False:
    every video is processed again."""
    todo, earlier = [], []
    for video, name in find_inputs(inputs):
        job = Job(video, name, Path(output_dir) / name)
        record = earlier_outcome(job, run_hash) if resume else None
        if record is None:
            todo.append(job)
        else:
            earlier.append((job, record))
    return todo, earlier


def clear_leftovers(folder: Path) -> None:
    """Remove the temporary files (``.<name>.partial-<pid>.<ext>``) a killed process left in
    a video's folder; the caller holds the folder."""
    for leftover in [*folder.glob(".*.partial-*"), *folder.glob("masks/.*.partial-*")]:
        leftover.unlink(missing_ok=True)


def record_failure(job: Job, reason: str, *, run_hash: str | None) -> JobResult:
    """Write ``failed.json`` for a video that cannot be processed; later runs with the same
    ``run_hash`` skip it while the input file stays the same."""
    record = {"status": "failed", "input": str(job.video), "reason": reason,
              "run_hash": run_hash, "input_stat": input_stat(job.video),
              "finished": datetime.now(UTC).isoformat()}  # fmt: skip
    write_json(job.out_dir / "failed.json", record)
    return JobResult(job, "failed", reason=reason)


class VideoJobs:
    """Processes videos one at a time with one predictor: clears what a killed process left
    in the video's folder, runs ``process_video``, adds the video's part of the cue table, and
    records a video that cannot be read in ``failed.json``."""

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
        return JobResult(job, "done", frames=run["frames"]["processed"])


def update_archive(output_dir: Path) -> list[VideoEntry]:
    """Bring the folder's cue table, video table and report up to date with its video folders
    (also those of earlier runs); return the videos found."""
    entries = tables.find_videos(output_dir)
    done = {e.name: e for e in entries if e.status == "done"}
    for name, path in tables.cue_partitions(output_dir).items():
        outdated = name in done and path.stat().st_mtime_ns < _mtime(done[name].folder)
        if name not in done or outdated:
            tables.drop_cue_partition(output_dir, name)
    present = tables.cue_partitions(output_dir)
    for name, entry in done.items():
        if name not in present:
            tables.write_cue_partition(entry.folder, name=name, output_dir=output_dir)
    tables.write_videos_table(output_dir, entries)
    report.write_report(output_dir, entries)
    return entries


def _mtime(folder: Path) -> int:
    return (folder / "run.json").stat().st_mtime_ns


def process_inputs(
    inputs: str | Path,
    *,
    predictor: PredictorSpec,
    output_dir: Path,
    outputs: OutputOptions,
    cues: CueOptions,
    batch_size: int = 4,
    workers: Workers | None = None,
    progress: bool = True,
    record: dict[str, Any] | None = None,
    run_hash: str | None = None,
    resume: bool = True,
    ray: RayOptions | None = None,
) -> InferSummary:
    """Process every video named by ``inputs`` into ``output_dir``, here one after another or
    on a Ray cluster (``ray``); skip those an earlier run ended with the same ``run_hash``
    (unless ``resume`` is False); a failing video does not stop the others. Then update the
    folder's tables and report."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    todo, earlier = plan_jobs(inputs, output_dir, run_hash=run_hash or "", resume=resume)
    summary = InferSummary()
    for job, rec in earlier:
        if rec.get("status") == "done":
            summary.skipped.append(job.out_dir)
        else:
            summary.failed.append((job.video, f"{rec.get('reason')} (an earlier run; resume=false "
                                              "retries it)"))  # fmt: skip

    def finished(result: JobResult) -> None:
        summary.add(result)
        if progress:
            what = f"done: {result.job.video} -> {result.job.out_dir}"
            LineProgress.write(what if result.status == "done" else f"failed: {result.reason}")

    options = dict(output_dir=output_dir, outputs=outputs, cues=cues, batch_size=batch_size,
                   workers=workers, record=record, run_hash=run_hash)  # fmt: skip
    if todo and ray is not None:
        from surgseg.cluster import process_on_ray

        process_on_ray(todo, predictor=predictor, jobs_options=options, options=ray,
                       progress=progress, on_result=finished)  # fmt: skip
    elif todo:
        run_jobs(todo, VideoJobs(predictor.build(), progress=progress, **options), finished)
    update_archive(output_dir)
    summary.wall_s = time.perf_counter() - started
    return summary


def run_jobs(jobs: list[Job], runner: VideoJobs,
             on_result: Callable[[JobResult], None]) -> None:  # fmt: skip
    """Run ``jobs`` one after another in this process."""
    for job in jobs:
        on_result(runner(job))
