"""Offline processing of recorded surgeries: video in; per-frame masks, pose cues, overlay
and a run record out.

Each input video gets its own folder::

    <output_dir>/<video name>/
        masks/000000.png …  or  masks.mkv     lossless class index per pixel, frame size
        cues.jsonl                             one line per frame, flushed as it goes
        overlay.mp4                            optional: masks, axis and tip drawn on the frame
        run.json                               written last: its absence marks an unfinished run
"""

from __future__ import annotations

import glob
import itertools
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surgseg.atomic import write_json
from surgseg.decode import VideoReader
from surgseg.errors import ConfigError, SurgsegError, VideoError
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.predictor import Predictor
from surgseg.progress import LineProgress, progress_bar
from surgseg.stages import open_outputs, segmentation_pipeline

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts", ".wmv")


@dataclass
class InferSummary:
    """Outcome of a run over several inputs."""

    done: list[Path] = field(default_factory=list)  # output folders of finished videos
    failed: list[tuple[Path, str]] = field(default_factory=list)  # input, one-line reason


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
        root = _glob_root(str(spec))
        found = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
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
    (out_dir / "run.json").unlink(missing_ok=True)
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


def process_inputs(
    inputs: str | Path,
    *,
    predictor: Predictor,
    output_dir: Path,
    outputs: OutputOptions,
    cues: CueOptions,
    batch_size: int = 4,
    workers: Workers | None = None,
    progress: bool = True,
    record: dict[str, Any] | None = None,
) -> InferSummary:
    """Process every video named by ``inputs``; a failing video does not stop the others."""
    summary = InferSummary()
    for video, name in find_inputs(inputs):
        out_dir = Path(output_dir) / name
        try:
            process_video(
                video,
                predictor=predictor,
                out_dir=out_dir,
                outputs=outputs,
                cues=cues,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                record=record,
            )
        except SurgsegError as exc:
            summary.failed.append((video, str(exc)))
            if progress:
                LineProgress.write(f"failed: {exc}")
        else:
            summary.done.append(out_dir)
            if progress:
                LineProgress.write(f"done: {video} -> {out_dir}")
    return summary
