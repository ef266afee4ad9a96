"""One table for a whole output folder: the cues of every video as a hive-partitioned Parquet
dataset, and one row per video, readable with pandas, DuckDB and pyarrow::

    <output_dir>/cues.parquet/video=<quoted name>/part-0.parquet   one row per instrument per frame
    <output_dir>/videos.parquet                                     one row per finished video

The partition value is the video's folder name (``day1/a.mp4``) URL-quoted
(``day1%2Fa.mp4``); pandas, DuckDB and pyarrow decode it back.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from surgseg.atomic import atomic_path

CUES_DIR = "cues.parquet"
VIDEOS_FILE = "videos.parquet"
REPORT_DIR = "index_files"  # the report's assets (surgseg.report)
PART_FILE = "part-0.parquet"

_LINES_PER_CHUNK = 16384  # cues.jsonl lines parsed at a time
_ROWS_PER_GROUP = 65536  # Parquet row group size

_XY = pa.list_(pa.float64())
_INSTRUMENT = pa.struct(
    [
        ("id", pa.int32()),
        ("label", pa.int16()),
        ("area_px", pa.int64()),
        ("axis", _XY),
        ("angle_deg", pa.float64()),
        ("entry", _XY),
        ("entry_on_border", pa.bool_()),
        ("tip", _XY),
        ("tip_in_view", pa.bool_()),
        ("confidence", pa.float32()),
    ]
)
# The fields of a cues.jsonl line that the table keeps (the others are ignored).
_LINE = pa.schema(
    [
        ("index", pa.int64()),
        ("pts", pa.int64()),
        ("time_s", pa.float64()),
        ("corrupt", pa.bool_()),
        ("gap", pa.int64()),
        ("instruments", pa.list_(_INSTRUMENT)),
    ]
)

CUE_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("pts", pa.int64()),
        ("time_s", pa.float64()),
        ("frame_duration_s", pa.float64()),
        ("corrupt", pa.bool_()),
        ("id", pa.int32()),
        ("label", pa.int16()),
        ("label_name", pa.string()),
        ("entry_x", pa.float64()),
        ("entry_y", pa.float64()),
        ("entry_on_border", pa.bool_()),
        ("tip_x", pa.float64()),
        ("tip_y", pa.float64()),
        ("tip_in_view", pa.bool_()),
        ("axis_x", pa.float64()),
        ("axis_y", pa.float64()),
        ("angle_deg", pa.float64()),
        ("area_px", pa.int64()),
        ("confidence", pa.float32()),
    ]
)
"""Columns of each cue partition (the ``video`` column comes from the folder name).
``frame_duration_s``: how long the frame is shown, the time to the next decoded frame shared
out over the frames lost in between (the last frame repeats the one before it), so that
``sum(frame_duration_s)`` is time in view, also for variable-frame-rate recordings."""


@dataclass(frozen=True)
class VideoEntry:
    """A video folder of an output folder that holds a finished run or a recorded failure."""

    name: str  # the folder's path relative to the output folder, posix: "day1/a.mp4"
    folder: Path
    status: str  # "done" or "failed"
    record: dict[str, Any]  # run.json or failed.json

    @property
    def marker(self) -> Path:
        """The file that records the outcome: run.json or failed.json."""
        return self.folder / ("run.json" if self.status == "done" else "failed.json")


def instrument_labels(task: str | None, class_names: Sequence[str]) -> dict[int, str]:
    """Name of each instrument ``label`` value of cues.jsonl: the type for ``types``; for
    ``binary`` and ``parts`` every instrument has label 1, named after binary's class 1."""
    if task in ("binary", "parts"):
        return {1: "tool"}
    return {value: name for value, name in enumerate(class_names) if value > 0 and name}


def run_labels(record: Mapping[str, Any] | None) -> dict[int, str] | None:
    """Instrument label names from a run.json record's model (``classes``: name → value), if
    it has them."""
    model = (record or {}).get("model") or {}
    classes = model.get("classes")
    if not isinstance(classes, dict) or not classes:
        return None
    names = {int(value): name for name, value in classes.items()}
    return instrument_labels(model.get("task"), [names.get(v, "") for v in range(max(names) + 1)])


def partition_dir(output_dir: Path, name: str) -> Path:
    """The cue partition folder of the video folder ``name``."""
    return Path(output_dir) / CUES_DIR / f"video={quote(name, safe='')}"


def _frame_chunks(path: Path) -> Iterator[pa.RecordBatch]:
    """The lines of a cues.jsonl as record batches of ``_LINE``, a chunk of lines at a time."""
    options = pj.ParseOptions(explicit_schema=_LINE, unexpected_field_behavior="ignore")
    with open(path, "rb") as file:
        while lines := list(itertools.islice(file, _LINES_PER_CHUNK)):
            data = b"".join(lines)
            if not data.endswith(b"\n"):
                data += b"\n"
            try:
                table = pj.read_json(pa.py_buffer(data), parse_options=options)
            except pa.ArrowInvalid as exc:
                raise ValueError(f"{path}: not a cues.jsonl file ({exc})") from None
            yield from table.combine_chunks().to_batches()


def _floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column as float64, NaN where null."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _frames_with_durations(path: Path) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Each chunk of cues.jsonl frames with each frame's duration: the time to the next frame
    over 1 + the frames lost before that one; the last frame lasts as long as the one before
    it (NaN for a single frame)."""
    chunks = (batch for batch in _frame_chunks(path) if batch.num_rows)
    held, previous = next(chunks, None), np.nan
    while held is not None:
        after = next(chunks, None)
        times, gaps = _floats(held, "time_s"), np.nan_to_num(_floats(held, "gap"))
        next_time, next_gap = np.nan, 0.0
        if after is not None:
            next_time, next_gap = (
                _floats(after, "time_s")[0],
                np.nan_to_num(_floats(after, "gap"))[0],
            )
        following = np.append(times[1:], next_time)
        durations = np.maximum((following - times) / (1 + np.append(gaps[1:], next_gap)), 0.0)
        if after is None:
            durations[-1] = durations[-2] if len(durations) > 1 else previous
        previous = durations[-1]
        yield held, durations
        held = after


def _flatten(frames: pa.RecordBatch, durations: np.ndarray, lookup: pa.Array) -> pa.RecordBatch:
    """One row per instrument of each frame, in ``CUE_SCHEMA``."""
    instruments = frames.column("instruments")
    parents = pc.list_parent_indices(instruments)
    flat = pc.list_flatten(instruments)

    def frame_column(name: str) -> pa.Array:
        return pc.take(frames.column(name), parents)

    def xy(name: str, i: int) -> pa.Array:
        return pc.list_element(flat.field(name), i)

    label = flat.field("label")
    columns = {
        "index": frame_column("index"),
        "pts": frame_column("pts"),
        "time_s": frame_column("time_s"),
        "frame_duration_s": pc.take(pa.array(durations, pa.float64(), from_pandas=True), parents),
        "corrupt": frame_column("corrupt"),
        "id": flat.field("id"),
        "label": label,
        "label_name": pc.take(lookup, pc.cast(label, pa.int32())),
        "entry_x": xy("entry", 0),
        "entry_y": xy("entry", 1),
        "entry_on_border": flat.field("entry_on_border"),
        "tip_x": xy("tip", 0),
        "tip_y": xy("tip", 1),
        "tip_in_view": flat.field("tip_in_view"),
        "axis_x": xy("axis", 0),
        "axis_y": xy("axis", 1),
        "angle_deg": flat.field("angle_deg"),
        "area_px": flat.field("area_px"),
        "confidence": flat.field("confidence"),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=CUE_SCHEMA)


def _label_lookup(labels: Mapping[int, str] | None) -> pa.Array:
    """Label value (0..255) → name, null where unknown."""
    names = [None] * 256
    for value, name in (labels or {}).items():
        if 0 <= int(value) < len(names):
            names[int(value)] = name
    return pa.array(names, pa.string())


def iter_cues(cues_path: Path, labels: Mapping[int, str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of a cues.jsonl in ``CUE_SCHEMA``, a chunk at a time (``labels``: instrument
    label value → name, see ``instrument_labels``)."""
    lookup = _label_lookup(labels)
    for frames, durations in _frames_with_durations(Path(cues_path)):
        yield _flatten(frames, durations, lookup)


@contextmanager
def _staged(path: Path, tmp: Path) -> Iterator[Path]:
    """``atomic_path`` with the temporary file ``tmp`` elsewhere on the same filesystem:
    out of the partition folder, where DuckDB's glob would pick it up (it matches hidden
    files)."""
    try:
        yield tmp
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_cue_partition(
    video_dir: Path,
    *,
    name: str,
    output_dir: Path,
    labels: Mapping[int, str] | None = None,
) -> Path:
    """Write ``video_dir/cues.jsonl`` as the partition of video ``name`` in
    ``output_dir/cues.parquet`` and return the file written.

    ``labels`` (instrument label value → name, see ``instrument_labels``) defaults to what
    ``video_dir/run.json`` says. The file is written in ``video_dir`` under a temporary
    name (``.cues.partial-<pid>.parquet``) and renamed into the partition when complete, so
    no reader ever sees a partial partition; an earlier partition stays until then.
    ``video_dir`` and ``output_dir`` must be on one filesystem (as they are when
    ``video_dir`` is ``output_dir/name``).
    """
    video_dir = Path(video_dir)
    if labels is None:
        labels = run_labels(_read_json(video_dir / "run.json"))
    final = partition_dir(output_dir, name) / PART_FILE
    for leftover in video_dir.glob(".cues.partial-*.parquet"):  # of a killed earlier try
        leftover.unlink(missing_ok=True)
    tmp = video_dir / f".cues.partial-{os.getpid()}.parquet"
    with _staged(final, tmp), pq.ParquetWriter(tmp, CUE_SCHEMA, compression="zstd") as writer:
        pending: list[pa.RecordBatch] = []
        for batch in iter_cues(video_dir / "cues.jsonl", labels):
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= _ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_batches(pending, CUE_SCHEMA))
                pending = []
        if any(b.num_rows for b in pending):
            writer.write_table(pa.Table.from_batches(pending, CUE_SCHEMA))
    return final


def drop_cue_partition(output_dir: Path, name: str) -> None:
    """Remove the cue partition of video ``name``, if there is one."""
    shutil.rmtree(partition_dir(output_dir, name), ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it is missing, unreadable or not an object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_entry(folder: Path, name: str) -> VideoEntry | None:
    """The outcome recorded in ``folder``: run.json with status done (or none, as written
    before statuses), else failed.json; None for an unfinished or unreadable one."""
    run = _read_json(folder / "run.json")
    if run is not None and run.get("status", "done") == "done":
        return VideoEntry(name, folder, "done", run)
    failed = _read_json(folder / "failed.json")
    if failed is not None:
        return VideoEntry(name, folder, "failed", failed)
    return None


_OUTPUT_FILES = frozenset({"run.json", "failed.json", "cues.jsonl"})


def find_videos(output_dir: Path) -> list[VideoEntry]:
    """The video folders under ``output_dir`` with a finished run (run.json) or a recorded
    failure (failed.json), sorted by name. Unfinished folders and broken JSON files are
    skipped; so are the tables, the report's assets and the masks/ folders."""
    output_dir = Path(output_dir)
    entries: list[VideoEntry] = []
    stack = [(output_dir, "")]
    while stack:
        folder, name = stack.pop()
        try:
            with os.scandir(folder) as scan:
                children = list(scan)
        except OSError:
            continue
        files = {c.name for c in children if c.is_file(follow_symlinks=False)}
        is_video = bool(name) and bool(files & _OUTPUT_FILES)
        if is_video and (entry := read_entry(folder, name)) is not None:
            entries.append(entry)
        for child in children:
            if not child.is_dir(follow_symlinks=False):
                continue
            if (not name and child.name in (CUES_DIR, REPORT_DIR)) or (
                is_video and child.name == "masks"
            ):
                continue
            stack.append((Path(child.path), f"{name}/{child.name}" if name else child.name))
    return sorted(entries, key=lambda e: e.name)


def _column_name(label: str) -> str:
    """``seconds_<label>`` with the label reduced to lower-case letters, digits and ``_``."""
    return "seconds_" + re.sub(r"\W+", "_", label).strip("_").lower()


def _presence(part: Path, frames: int | None) -> dict[str, Any]:
    """Instrument presence of one video from its cue partition."""
    table = pq.read_table(part, columns=["index", "id", "label_name", "frame_duration_s"])
    per_frame = table.group_by("index").aggregate([([], "count_all")])
    with_instruments = per_frame.num_rows
    per_label = (
        table.group_by(["index", "label_name"])
        .aggregate([("frame_duration_s", "max")])
        .group_by("label_name")
        .aggregate([("frame_duration_s_max", "sum")])
    )
    seconds = {
        name: float(total or 0.0)
        for name, total in zip(
            per_label.column("label_name").to_pylist(),
            per_label.column("frame_duration_s_max_sum").to_pylist(),
            strict=True,
        )
        if name is not None
    }
    return {
        "frames_with_instruments": with_instruments,
        "presence": with_instruments / frames if frames else None,
        "tracks": pc.count_distinct(table.column("id")).as_py(),
        "max_instruments": pc.max(per_frame.column("count_all")).as_py() or 0,
        "seconds": seconds,
    }


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


_VIDEO_FIELDS = pa.schema(
    [
        ("video", pa.string()),
        ("input", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("task", pa.string()),
        ("frames", pa.int64()),
        ("corrupt", pa.int64()),
        ("missing", pa.int64()),
        ("duration_s", pa.float64()),
        ("video_fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("processing_fps", pa.float64()),
        ("wall_s", pa.float64()),
        ("finished", pa.timestamp("us", tz="UTC")),
        ("run_hash", pa.string()),
        ("frames_with_instruments", pa.int64()),
        ("presence", pa.float64()),
        ("tracks", pa.int64()),
        ("max_instruments", pa.int64()),
    ]
)


def _video_row(output_dir: Path, entry: VideoEntry) -> dict[str, Any]:
    record = entry.record
    video = record.get("video") or {}
    frames = record.get("frames") or {}
    processed = frames.get("processed")
    row: dict[str, Any] = {
        "video": entry.name,
        "input": record.get("input"),
        "status": entry.status,
        "reason": record.get("reason"),
        "task": (record.get("model") or {}).get("task"),
        "frames": processed,
        "corrupt": frames.get("corrupt"),
        "missing": frames.get("missing"),
        "duration_s": video.get("duration_s"),
        "video_fps": video.get("fps"),
        "width": video.get("width"),
        "height": video.get("height"),
        "processing_fps": record.get("fps"),
        "wall_s": record.get("wall_s"),
        "finished": _timestamp(record.get("finished")),
        "run_hash": record.get("run_hash"),
        "seconds": {},
    }
    part = partition_dir(output_dir, entry.name) / PART_FILE
    if entry.status == "done" and part.is_file():
        row.update(_presence(part, processed))
        labels = run_labels(record)
        row["seconds"] = {  # 0 for a label of its model never seen, None for other labels
            name: row["seconds"].get(name, 0.0)
            for name in (row["seconds"].keys() | (labels or {}).values())
        }
    return row


def write_videos_table(output_dir: Path, entries: Iterable[VideoEntry]) -> Path:
    """Write ``output_dir/videos.parquet``: one row per video of ``entries`` (see
    ``find_videos``) with its outcome, frame counts, timing and instrument presence from its
    cue partition, and a ``seconds_<label>`` column per instrument label: seconds with at
    least one instrument of that label in view (null for a video whose model lacks it).
    Returns the path."""
    output_dir = Path(output_dir)
    entries = list(entries)
    rows = [_video_row(output_dir, entry) for entry in entries]
    labels: dict[str, str] = {}  # column → label name, in the order of the models' classes
    for entry, row in zip(entries, rows, strict=True):
        for name in [*(run_labels(entry.record) or {}).values(), *sorted(row["seconds"])]:
            labels.setdefault(_column_name(name), name)
    columns = {field.name: [row.get(field.name) for row in rows] for field in _VIDEO_FIELDS}
    fields = list(_VIDEO_FIELDS)
    for column, name in labels.items():
        columns[column] = [row["seconds"].get(name) for row in rows]
        fields.append(pa.field(column, pa.float64()))
    table = pa.table(columns, schema=pa.schema(fields))
    path = output_dir / VIDEOS_FILE
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def cue_partitions(output_dir: Path) -> dict[str, Path]:
    """The cue partitions in ``output_dir``: video name → its Parquet file, sorted by name."""
    cues, prefix = Path(output_dir) / CUES_DIR, "video="
    if not cues.is_dir():
        return {}
    found = {
        unquote(folder.name[len(prefix) :]): folder / PART_FILE
        for folder in cues.iterdir()
        if folder.name.startswith(prefix) and (folder / PART_FILE).is_file()
    }
    return dict(sorted(found.items()))
