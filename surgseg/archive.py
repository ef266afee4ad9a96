"""Processing an archive: which videos a run processes (the inputs and their output folders,
what earlier runs left in them: ``run.json``, ``failed.json``, resume), running them here or
on a cluster's workers, the run's summary, and the folder's tables and report.

Nothing here loads a model or imports torch: a cluster's driver runs all of it while only its
workers do (``surgseg.cluster``). The pipeline (``surgseg.infer``) is imported when videos
run in this process, the tables and the report once the videos have ended.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgseg.errors import VideoError
from surgseg.jobs import Job, JobResult, input_stat
from surgseg.options import CueOptions, OutputOptions, PredictorSpec, Workers
from surgseg.progress import LineProgress

if TYPE_CHECKING:
    from surgseg.cluster import RayWorkers
    from surgseg.predictor import Predictor
    from surgseg.tables import VideoEntry

Inputs = Sequence[tuple[Path, str]]  # (video, output folder name) pairs: ``find_inputs``

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts", ".wmv")


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading components free of wildcards."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not set(part) & set("*?["), parts))
    return Path(*fixed) if fixed else Path(".")


def _outside(found: list[Path], root: Path, exclude: Path | None) -> list[Path]:
    """``found`` less what lies inside ``exclude`` (resolved paths compared); all of it when
    ``exclude`` is unset, or is or holds ``root``: it would leave nothing to search."""
    if exclude is None:
        return found
    skip = exclude.resolve()
    if root.resolve().is_relative_to(skip):
        return found
    return [p for p in found if not p.resolve().is_relative_to(skip)]


def find_inputs(spec: str | Path, *, exclude: Path | None = None) -> Inputs:
    """Expand ``spec`` (a video file, a folder searched recursively for videos, or a glob)
    into (video, output folder name) pairs, sorted by path. A folder or a glob yields files
    only; nothing inside ``exclude`` (the run's output folder, when it lies inside the folder
    searched) is an input, so a run never reads back its own outputs. A single file named
    explicitly is taken as it is.

    The folder name is the video's path relative to what ``spec`` names (the folder, the
    glob's fixed leading folders, or the file's own folder), file name and extension
    included: it never leaves the output folder, two inputs never share it (``a.mp4`` and
    ``a.avi`` are ``a.mp4/`` and ``a.avi/``), and it does not depend on the other inputs.
    Raises ``VideoError`` when ``spec`` names nothing: a missing path, a folder without
    videos, a pattern that matches no file (or nothing but what ``exclude`` holds).
    """
    path = Path(spec)
    if path.is_dir():
        root = path
        found = sorted(p for p in path.rglob("*")
                       if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())  # fmt: skip
        if not (found := _outside(found, root, exclude)):
            raise VideoError("no video files in this folder", path)
    elif any(ch in str(spec) for ch in "*?["):
        spec = os.path.normpath(spec)  # no ".." left to lead a name out of the output folder
        root = _glob_root(spec)
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not (found := _outside(found, root, exclude)):
            raise VideoError("no file matches this pattern", spec)
    elif path.exists():  # a single file, whatever its name: opening it tells what it holds
        return [(path, path.name)]
    else:
        raise VideoError("no such file or folder", path)
    return [(video, video.relative_to(root).as_posix()) for video in found]


@dataclass
class InferSummary:
    """Outcome of a run over several inputs."""

    done: list[Path] = field(default_factory=list)  # output folders of videos finished now
    skipped: list[Path] = field(default_factory=list)  # finished by an earlier run, same hash
    failed: list[tuple[Path, str]] = field(default_factory=list)  # input, one-line reason
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # done, frames lost: input, note
    frames: int = 0  # frames processed in this run
    wall_s: float = 0.0

    def add(self, result: JobResult) -> None:
        """Count one finished video."""
        if result.status == "done":
            self.done.append(result.job.out_dir)
            self.frames += result.frames
            if result.damage:
                self.damaged.append((result.job.video, result.damage))
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

    def warnings(self) -> list[str]:
        """Videos done with frames lost or damaged in decoding, each with what it lost."""
        if not self.damaged:
            return []
        return ["done with frames lost in decoding (see their run.json):",
                *(f"  {video}: {note}" for video, note in self.damaged)]  # fmt: skip


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
    inputs: Inputs, output_dir: Path, *, run_hash: str, resume: bool = True
) -> tuple[list[Job], list[tuple[Job, dict[str, Any]]]]:
    """(videos to process, videos an earlier run ended with their record). ``resume`` False:
    every video is processed again."""
    todo, earlier = [], []
    for video, name in inputs:
        job = Job(video, name, Path(output_dir) / name)
        record = earlier_outcome(job, run_hash) if resume else None
        if record is None:
            todo.append(job)
        else:
            earlier.append((job, record))
    return todo, earlier


def unrecorded(inputs: Inputs, output_dir: Path) -> int:
    """How many of ``inputs`` have no record of an earlier run at all: those a run processes
    whatever its checkpoint and settings."""
    return sum(not (Path(output_dir) / name / "run.json").exists()
               and not (Path(output_dir) / name / "failed.json").exists()
               for _, name in inputs)  # fmt: skip


def process_inputs(
    inputs: Inputs,
    *,
    predictor: PredictorSpec | Predictor,
    output_dir: Path,
    outputs: OutputOptions,
    cues: CueOptions,
    batch_size: int = 4,
    workers: Workers | None = None,
    progress: bool = True,
    record: dict[str, Any] | None = None,
    run_hash: str | None = None,
    resume: bool = True,
    cluster: RayWorkers | None = None,
) -> InferSummary:
    """Process every video of ``inputs`` (``find_inputs``) into ``output_dir``, here one after
    another or on the workers of a Ray cluster (``cluster``: ``predictor`` is then the spec
    each worker builds its own from; here it may be built already); skip those an earlier run ended
    with the same ``run_hash`` (unless ``resume`` is False); a failing video does not stop the
    others. Then update the folder's tables and report."""
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
            what += f"; {result.damage}" if result.damage else ""
            LineProgress.write(what if result.status == "done" else f"failed: {result.reason}")

    options = dict(output_dir=output_dir, outputs=outputs, cues=cues, batch_size=batch_size,
                   workers=workers, record=record, run_hash=run_hash)  # fmt: skip
    if todo and cluster is not None:
        cluster.process(todo, predictor=predictor, jobs_options=options, progress=progress,
                        on_result=finished)  # fmt: skip
    elif todo:
        from surgseg.infer import VideoJobs

        built = predictor.build() if isinstance(predictor, PredictorSpec) else predictor
        runner = VideoJobs(built, progress=progress, **options)
        for job in todo:
            finished(runner(job))
    update_archive(output_dir)
    summary.wall_s = time.perf_counter() - started
    return summary


def update_archive(output_dir: Path) -> list[VideoEntry]:
    """Bring the folder's cue table, video table and report up to date with its video folders
    (also those of earlier runs); return the videos found."""
    from surgseg import report, tables

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
