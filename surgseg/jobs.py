"""One video's job: the input and its output folder, how it ended, and the records a job
leaves there for later runs (``failed.json``; leftovers of a killed process). Shared by the
archive's driver (``surgseg.archive``), the pipeline that runs a job (``surgseg.infer``) and
a cluster's workers (``surgseg.cluster``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from surgseg.atomic import write_json


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
    damage: str | None = None  # a done video's decoding losses (``decode.damage_note``)


def input_stat(video: Path) -> dict[str, int] | None:
    """Size and modification time of an input, to notice that it changed; None if missing."""
    try:
        st = video.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
