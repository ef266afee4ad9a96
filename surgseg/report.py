"""A static HTML report of an output folder: ``index.html`` with one row per video (status,
frames, duration, processing speed, a thumbnail, links to the outputs, a timeline of the
instruments in view), its images in ``index_files/``. No server, no external URL: it opens
from ``file://``.

A video's images are made as its run ends, by the process that ran it (``make_assets``: on a
cluster, the workers draw in parallel), and made again only when its run.json or failed.json
changed, so rebuilding the report of a large archive at the end of every run is cheap.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from surgseg.atomic import atomic_path, write_json
from surgseg.tables import (
    PART_FILE,
    REPORT_DIR,
    VideoEntry,
    iter_cues,
    partition_dir,
    run_labels,
)

THUMB_WIDTH = 320  # pixels of the JPEG; shown 200 CSS pixels wide
_THUMB_SHOWN = 200
_TIMELINE_DPI = 200  # shown at 100 dpi: sharp on high-density screens
_ASSETS_VERSION = 1  # bump when the images change, to make them again
_CLOCK_STEPS = (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_TIMELINE_COLUMNS = ["time_s", "frame_duration_s", "id", "label", "label_name"]
_LABEL_COLOURS = [  # matplotlib's tab10, by label value
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


def _asset_stem(name: str) -> str:
    """A file name for a video's assets: readable, unique, short."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-60:]
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------- thumbnails


def middle_frame(path: Path, *, width: int = THUMB_WIDTH) -> np.ndarray | None:
    """The frame in the middle of a video as RGB, ``width`` pixels wide, display rotation
    applied; None if the file has no decodable frame."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frame = _frame_near_middle(container, stream)
            if frame is None:
                return None
            image = frame.to_ndarray(format="rgb24")
            rotation = 90 * round((frame.rotation or 0) / 90) % 360
    except Exception:  # whatever PyAV cannot read simply gets no thumbnail
        return None
    image = np.rot90(image, rotation // 90)
    height = max(2, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)


def _frame_near_middle(container: av.container.InputContainer, stream: Any) -> Any:
    """Seek to the middle of ``stream`` (to the keyframe before it) and decode up to it; the
    first frame when the duration is unknown or the seek finds nothing."""
    base = stream.time_base
    if stream.duration and base:
        span = stream.duration
    elif container.duration and base:
        span = int(container.duration / 1_000_000 / base)
    else:
        span = 0
    target = (stream.start_time or 0) + span // 2
    frame = None
    if span:
        container.seek(target, stream=stream)
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts >= target:
                return frame
        if frame is not None:
            return frame
        container.seek(stream.start_time or 0, stream=stream)
    return next(container.decode(stream), None)


def _write_thumbnail(entry: VideoEntry, path: Path) -> tuple[int, int] | None:
    """A JPEG of the overlay's middle frame (else the input's); its size in pixels, or None
    if there is no frame to show."""
    sources = [entry.folder / "overlay.mp4"]
    if entry.record.get("input"):
        sources.append(Path(entry.record["input"]))
    for source in sources:
        if source.is_file() and (image := middle_frame(source)) is not None:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 85])  # fmt: skip
            if ok:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data.tobytes())
                return image.shape[1], image.shape[0]
    return None


# ------------------------------------------------------------------------------ timelines


def _cue_rows(entry: VideoEntry, output_dir: Path) -> pa.Table | None:
    """The video's cue rows (time, duration, id, label) from its partition, else its cues."""
    part = partition_dir(output_dir, entry.name) / PART_FILE
    if part.is_file():
        return pq.read_table(part, columns=_TIMELINE_COLUMNS)
    cues = entry.folder / "cues.jsonl"
    if cues.is_file():
        batches = [b.select(_TIMELINE_COLUMNS) for b in iter_cues(cues, run_labels(entry.record))]
        return pa.Table.from_batches(batches) if batches else None
    return None


def _start_time(entry: VideoEntry, rows: pa.Table) -> float:
    """Time of the video's first frame: from the first line of cues.jsonl, else the first
    frame with an instrument."""
    try:
        with open(entry.folder / "cues.jsonl", encoding="utf-8") as file:
            return float(json.loads(file.readline())["time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return float(np.nanmin(rows.column("time_s").to_numpy(zero_copy_only=False)))


def _clock(seconds: float, *, hours: bool | None = None) -> str:
    """m:ss, or h:mm:ss (``hours`` None: from an hour on)."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    if hours or (hours is None and h):
        return f"{h}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def _span(seconds: float) -> str:
    """A duration: 12.3 s below a minute, else m:ss or h:mm:ss."""
    return f"{seconds:.1f} s" if seconds < 59.95 else _clock(seconds)


def _segments(rows: pa.Table, start: float) -> dict[str, np.ndarray]:
    """Runs of consecutive frames of one track id and label: arrays ``id``, ``label``,
    ``start`` (seconds from ``start``) and ``length``; a lost frame breaks a run."""
    time = rows.column("time_s").to_numpy(zero_copy_only=False) - start
    length = np.nan_to_num(rows.column("frame_duration_s").to_numpy(zero_copy_only=False))
    ids = np.nan_to_num(rows.column("id").to_numpy(zero_copy_only=False), nan=-1).astype(int)
    labels = rows.column("label").to_numpy(zero_copy_only=False).astype(int)
    order = np.lexsort((time, labels, ids))
    time, length, ids, labels = time[order], length[order], ids[order], labels[order]
    new = np.ones(len(time), bool)
    new[1:] = (
        (ids[1:] != ids[:-1])
        | (labels[1:] != labels[:-1])
        | (time[1:] > time[:-1] + length[:-1] + 1e-6)
    )
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(time)) - 1
    return {
        "id": ids[first],
        "label": labels[first],
        "start": time[first],
        "length": time[last] + length[last] - time[first],
    }


def _write_timeline(entry: VideoEntry, output_dir: Path, path: Path) -> tuple[int, int] | None:
    """A PNG of which instrument ids are in view over time; its size in pixels, or None
    without any instrument."""
    # matplotlib is imported here, not with the module: the workers of a cluster import this
    # module (through surgseg.infer) but never draw
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

    rows = _cue_rows(entry, output_dir)
    if rows is None or rows.num_rows == 0:
        return None
    runs = _segments(rows, _start_time(entry, rows))
    tracks, row = np.unique(runs["id"], return_inverse=True)
    duration = (entry.record.get("video") or {}).get("duration_s") or 0
    end = max(float((runs["start"] + runs["length"]).max()), float(duration))
    pairs = rows.select(["label", "label_name"]).group_by(["label", "label_name"]).aggregate([])
    names = dict(zip(pairs["label"].to_pylist(), pairs["label_name"].to_pylist(), strict=True))

    fig = Figure(figsize=(4.8, min(3.2, 1.05 + 0.15 * len(tracks))), dpi=_TIMELINE_DPI)
    ax = fig.subplots()
    x0, x1 = runs["start"], runs["start"] + np.maximum(runs["length"], end / 1000)
    y0, y1 = row - 0.4, row + 0.4
    boxes = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                      np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1)  # fmt: skip
    colours = [_LABEL_COLOURS[label % len(_LABEL_COLOURS)] for label in runs["label"]]
    ax.add_collection(PolyCollection(boxes, facecolors=colours, linewidths=0))
    ax.set_xlim(0, end if end > 0 else 1)
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    if len(tracks) <= 12:
        ax.set_yticks(range(len(tracks)), [str(t) if t >= 0 else "–" for t in tracks])
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _: str(tracks[int(v)]) if 0 <= v < len(tracks) else "")
        )
    if end < 90:
        ax.set_xlabel("time from the start (s)", fontsize=7)
    else:
        step = next((s for s in _CLOCK_STEPS if end / s <= 8), 3600 * math.ceil(end / 28800))
        ax.xaxis.set_major_locator(MultipleLocator(step))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _clock(v, hours=end >= 3600)))
        ax.set_xlabel(f"time from the start ({'h:mm:ss' if end >= 3600 else 'm:ss'})", fontsize=7)
    ax.set_ylabel("track id", fontsize=7)
    ax.tick_params(labelsize=7, length=2.5)
    ax.grid(axis="x", color="#e3e3e3", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [
        Patch(color=_LABEL_COLOURS[label % len(_LABEL_COLOURS)], label=names[label] or str(label))
        for label in np.unique(runs["label"])
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=min(len(handles), 4),
              fontsize=7, frameon=False, borderaxespad=0.2, handlelength=1.2)  # fmt: skip
    fig.tight_layout(pad=0.4)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    width, height = fig.canvas.get_width_height()
    return width, height


# ---------------------------------------------------------------------------------- assets


def _assets(entry: VideoEntry, output_dir: Path, assets: Path) -> dict[str, Any]:
    """The video's images: ``{"thumbnail": {"file", "size"} or None, "timeline": ...}``, made
    again when its run.json or failed.json is not the one they were made from."""
    stem = _asset_stem(entry.name)
    sidecar = assets / f"{stem}.json"
    stamp = entry.marker.stat().st_mtime_ns if entry.marker.exists() else 0
    try:
        made = json.loads(sidecar.read_text())
        images = [made[key] for key in ("thumbnail", "timeline") if made[key]]
        if (made["version"], made["marker_mtime_ns"]) == (_ASSETS_VERSION, stamp) and all(
            (assets / image["file"]).is_file() for image in images
        ):
            return made
    except (OSError, ValueError, TypeError, KeyError):
        pass
    thumbnail, timeline = f"{stem}.jpg", f"{stem}.png"
    thumbnail_size = _write_thumbnail(entry, assets / thumbnail)
    try:
        timeline_size = _write_timeline(entry, output_dir, assets / timeline)
    except (OSError, ValueError, pa.ArrowException):  # unreadable cues: no timeline
        timeline_size = None
    made = {
        "version": _ASSETS_VERSION,
        "marker_mtime_ns": stamp,
        "thumbnail": thumbnail_size and {"file": thumbnail, "size": thumbnail_size},
        "timeline": timeline_size and {"file": timeline, "size": timeline_size},
    }
    write_json(sidecar, made)
    return made


def _drop_stale_assets(assets: Path, keep: set[str]) -> None:
    """Remove the images of videos no longer in the report, or no longer made."""
    for path in assets.iterdir():
        if path.is_file() and path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ page

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2329; background: #f6f7f9; margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 2px; }
.folder { color: #5b6673; margin: 0 0 14px; font: 12.5px ui-monospace, monospace;
          word-break: break-all; }
.totals { display: flex; gap: 10px; flex-wrap: wrap; margin: 0 0 18px; padding: 0; }
.totals li { list-style: none; background: #fff; border: 1px solid #e1e4e8;
             border-radius: 8px; padding: 8px 16px; min-width: 80px; }
.totals b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.totals span { color: #5b6673; font-size: 12px; }
.totals .failed b { color: #b42318; }
table { border-collapse: separate; border-spacing: 0; background: #fff; width: 100%;
        border: 1px solid #e1e4e8; border-radius: 8px; }
th { text-align: left; font-size: 12px; color: #5b6673; font-weight: 600; white-space: nowrap;
     background: #fafbfc; border-bottom: 1px solid #e1e4e8; padding: 8px 12px; }
td { vertical-align: top; padding: 12px; border-bottom: 1px solid #eef0f2; }
tbody tr:last-child td { border-bottom: none; }
tr.failed td { background: #fffafa; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.name { min-width: 180px; max-width: 300px; }
.path { font: 13px ui-monospace, monospace; word-break: break-all; }
.path .dir { color: #5b6673; }
.meta { margin-top: 6px; font-size: 12px; display: flex; flex-wrap: wrap; gap: 4px 10px;
        align-items: baseline; }
.meta a { color: #0a58ca; text-decoration: none; white-space: nowrap; }
.meta a:hover { text-decoration: underline; }
.badge { border-radius: 10px; padding: 1px 8px; font-size: 11.5px; font-weight: 600; }
.badge.done { background: #dff3e4; color: #1a7f37; }
.badge.failed { background: #ffe2e0; color: #b42318; }
.reason { color: #b42318; font-size: 12.5px; margin-top: 6px; word-break: break-word; }
.note { color: #9a6700; font-size: 12px; }
.sub { color: #5b6673; font-size: 12px; }
.none { color: #8c959f; font-size: 12px; }
img { display: block; height: auto; }
img.thumb { border-radius: 4px; background: #111; }
"""


def _link(name: str, file: str, label: str) -> str:
    href = quote(f"{name}/{file}", safe="/")
    return f'<a href="{html.escape(href)}">{html.escape(label)}</a>'


_OUTPUTS = [  # file in the video folder, link text
    ("overlay.mp4", "overlay"),
    ("cues.jsonl", "cues"),
    ("masks.mkv", "masks"),
    ("masks/", "masks"),
    ("run.json", "run.json"),
    ("failed.json", "failed.json"),
]


def _name_cell(entry: VideoEntry) -> str:
    """The video's name, its status, links to the outputs in its folder, a failure's reason."""
    folder, _, file = entry.name.rpartition("/")
    shown = html.escape(file)
    if folder:
        shown = f'<span class="dir">{html.escape(folder)}/</span>{shown}'
    meta = [f'<span class="badge {entry.status}">{entry.status}</span>']
    meta += [_link(entry.name, f, label) for f, label in _OUTPUTS if (entry.folder / f).exists()]
    cell = f'<div class="path">{shown}</div><div class="meta">{"".join(meta)}</div>'
    if entry.status == "failed":
        reason = html.escape(str(entry.record.get("reason") or "no reason given"))
        cell += f'<div class="reason">{reason}</div>'
    return f'<td class="name">{cell}</td>'


def _image(image: dict[str, Any] | None, cls: str, alt: str, width: int) -> str:
    """An <img> of an asset shown ``width`` CSS pixels wide, or a dash."""
    if not image:
        return '<span class="none">—</span>'
    src = html.escape(f"{REPORT_DIR}/{quote(image['file'])}")
    w, h = image["size"]
    return (
        f'<img class="{cls}" src="{src}" alt="{html.escape(alt)}" width="{width}" '
        f'height="{round(h * width / w)}" loading="lazy">'
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row(entry: VideoEntry, made: dict[str, Any]) -> str:
    record = entry.record
    frames = record.get("frames") or {}
    processed = frames.get("processed")
    frames_cell = f"{processed:,}" if _finite(processed) else "—"
    damage = [f"{frames[k]:,} {k}" for k in ("corrupt", "missing") if frames.get(k)]
    if damage:
        frames_cell += f'<div class="note">{", ".join(damage)}</div>'
    duration = (record.get("video") or {}).get("duration_s")
    fps, wall = record.get("fps"), record.get("wall_s")
    speed = f"{fps:,.1f} fps" if _finite(fps) else "—"
    if _finite(wall):
        speed += f'<div class="sub">in {_span(wall)}</div>'
    timeline = made.get("timeline")
    if timeline:
        timeline_cell = _image(timeline, "timeline", f"timeline of {entry.name}",
                               timeline["size"][0] * 100 // _TIMELINE_DPI)  # fmt: skip
    elif entry.status == "done":
        timeline_cell = '<span class="none">no instrument in view</span>'
    else:
        timeline_cell = '<span class="none">—</span>'
    thumbnail = _image(made.get("thumbnail"), "thumb", f"frame of {entry.name}", _THUMB_SHOWN)
    cells = [
        _name_cell(entry),
        f'<td class="num">{frames_cell}</td>',
        f'<td class="num">{_span(duration) if _finite(duration) else "—"}</td>',
        f'<td class="num">{speed}</td>',
        f"<td>{thumbnail}</td>",
        f"<td>{timeline_cell}</td>",
    ]
    return f'<tr class="video {entry.status}">{"".join(cells)}</tr>'


def _totals(entries: Sequence[VideoEntry]) -> str:
    done = [e for e in entries if e.status == "done"]
    frames = sum((e.record.get("frames") or {}).get("processed") or 0 for e in done)
    seconds = sum((e.record.get("video") or {}).get("duration_s") or 0 for e in done)
    if seconds >= 3600:
        length = (f"{seconds / 3600:,.1f}", "hours of video")
    elif seconds >= 60:
        length = (f"{seconds / 60:.1f}", "minutes of video")
    else:
        length = (f"{seconds:.1f}", "seconds of video")
    items = [
        ("done", f"{len(done):,}", "videos done"),
        ("failed", f"{len(entries) - len(done):,}", "failed"),
        ("frames", f"{frames:,}", "frames"),
        ("length", *length),
    ]
    return "".join(f'<li class="{c}"><b>{v}</b><span>{t}</span></li>' for c, v, t in items)


def make_assets(output_dir: Path, entry: VideoEntry) -> None:
    """Make the report's images of one video (its thumbnail and timeline) now, where its run
    ended: on a cluster each worker draws its own videos' images, and ``write_report`` at the
    end of the run finds them made."""
    assets = Path(output_dir) / REPORT_DIR
    assets.mkdir(parents=True, exist_ok=True)
    _assets(entry, Path(output_dir), assets)


def write_report(output_dir: Path, entries: list[VideoEntry]) -> Path:
    """Write ``output_dir/index.html`` for ``entries`` (``surgseg.tables.find_videos``) and
    its images in ``output_dir/index_files/``; return the page's path."""
    output_dir = Path(output_dir)
    assets = output_dir / REPORT_DIR
    assets.mkdir(parents=True, exist_ok=True)
    rows, keep = [], set()
    for entry in entries:
        made = _assets(entry, output_dir, assets)
        keep.add(f"{_asset_stem(entry.name)}.json")
        keep.update(made[key]["file"] for key in ("thumbnail", "timeline") if made[key])
        rows.append(_row(entry, made))
    _drop_stale_assets(assets, keep)
    folder = output_dir.resolve()
    generated = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = html.escape(f"surgseg report: {folder.name}")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="folder">{html.escape(str(folder))} · generated {generated}</p>
<ul class="totals">{_totals(entries)}</ul>
</header>
<table class="videos">
<thead><tr><th>Video</th><th class="num">Frames</th><th class="num">Duration</th>
<th class="num">Processing</th><th>Overlay</th><th>Instruments in view</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""
    path = output_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
