"""The HTML report of an output folder, on a folder written by hand (tests/_archive_utils.py):
its structure read back with html.parser, its images and links on disk, its rebuilding; and,
in a slow test, what headless Chromium shows (scripts/check_report.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from surgseg.report import _segments, middle_frame, write_report
from surgseg.tables import find_videos, partition_dir, write_cue_partition
from tests._archive_utils import EXPECTED, make_archive
from tests._video_utils import frame_number, write_video

ODD = 'day2/x<b>&"q.mp4'  # a name to escape
ROOT = Path(__file__).resolve().parents[1]


class _Page(HTMLParser):
    """The rows of the report's table: their class, text, image sources and link targets."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.totals: list[str] = []
        self.urls: list[str] = []
        self._row: dict | None = None
        self._in_totals = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "tr" and "video" in attrs.get("class", ""):
            self._row = {"class": attrs["class"], "text": [], "img": [], "a": []}
            self.rows.append(self._row)
        elif tag == "ul" and attrs.get("class") == "totals":
            self._in_totals = True
        elif self._row is not None and tag == "img":
            self._row["img"].append(attrs)
        elif self._row is not None and tag == "a":
            self._row["a"].append(attrs["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "ul":
            self._in_totals = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self._row["text"].append(data.strip())
        if self._in_totals and data.strip():
            self.totals.append(data.strip())


def _archive(tmp_path: Path) -> Path:
    """The hand-written folder with a real overlay, the cue partition of a.mp4 only (b c.mp4's
    timeline comes from its cues.jsonl) and a copy of b c.mp4 under a name to escape."""
    out = make_archive(tmp_path, overlay=True)
    write_cue_partition(out / "day1" / "a.mp4", name="day1/a.mp4", output_dir=out)
    shutil.copytree(out / "b c.mp4", out / ODD)
    return out


def _parse(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    return page


def test_report_rows_images_and_links(tmp_path: Path) -> None:
    out = _archive(tmp_path)
    path = write_report(out, find_videos(out))
    assert path == out / "index.html"
    page = _parse(out)

    names = ["b c.mp4", "day1/a.mp4", "day1/broken.mp4", ODD]
    assert [row["class"] for row in page.rows] == [
        "video done", "video done", "video failed", "video done"
    ]  # fmt: skip
    for row, name in zip(page.rows, names, strict=True):
        assert "".join(row["text"][:2]).startswith(name), row["text"]
    assert page.totals == ["3", "videos done", "1", "failed", "14", "frames", "2.4",
                           "seconds of video"]  # fmt: skip

    broken = page.rows[2]
    assert EXPECTED["failed_reason"] in broken["text"]
    assert broken["img"] == [] and [unquote(a) for a in broken["a"]] == [
        "day1/broken.mp4/failed.json"
    ]
    a = page.rows[1]
    assert [unquote(h) for h in a["a"]] == [
        f"day1/a.mp4/{f}" for f in ("overlay.mp4", "cues.jsonl", "masks/", "run.json")
    ]
    assert "1 corrupt, 1 missing" in a["text"]

    # Every image is a real JPEG (thumbnail, 320 wide) or PNG (timeline) in index_files/.
    images = [img for row in page.rows for img in row["img"]]
    assert len(images) == 6  # thumbnail (overlay or input) and timeline of each done video
    for img in images:
        file = out / unquote(img["src"])
        assert file.parent == out / "index_files", img["src"]
        data = file.read_bytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img["class"] == "thumb":
            assert data[:3] == b"\xff\xd8\xff" and decoded.shape[1] == 320
        else:
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and decoded.shape[1] > 400
        assert int(img["width"]) > 0 and int(img["height"]) > 0

    # Links resolve to files in the folder; nothing points outside it.
    for url in page.urls:
        assert "//" not in url and not url.startswith("/"), url
        assert (out / unquote(url)).exists(), url


def test_report_escapes_names(tmp_path: Path) -> None:
    out = _archive(tmp_path)
    write_report(out, find_videos(out))
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "x&lt;b&gt;&amp;&quot;q.mp4" in text
    assert "x<b>" not in text and "<b>&" not in text
    odd = _parse(out).rows[3]
    assert odd["text"][:2] == ["day2/", 'x<b>&"q.mp4']  # what a browser shows
    assert all((out / unquote(h)).exists() for h in odd["a"])
    assert "x%3Cb%3E%26%22q.mp4/cues.jsonl" in odd["a"][0]


def test_report_rebuilds_only_what_changed(tmp_path: Path) -> None:
    out = _archive(tmp_path)
    write_report(out, find_videos(out))
    assets = out / "index_files"

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}

    first = stamps()
    assert len(first) == 4 + 6  # a sidecar per video, the images
    write_report(out, find_videos(out))
    assert stamps() == first

    run = out / "day1" / "a.mp4" / "run.json"
    later = run.stat().st_mtime_ns + 10**9
    os.utime(run, ns=(later, later))  # a.mp4 processed again
    write_report(out, find_videos(out))
    changed = {name for name, stamp in stamps().items() if first.get(name) != stamp}
    assert changed and all(name.startswith("day1_a.mp4-") for name in changed)
    assert len(changed) == 3

    shutil.rmtree(out / "b c.mp4")  # gone from the folder: gone from the report
    write_report(out, find_videos(out))
    assert len(stamps()) == 3 + 4
    assert len(_parse(out).rows) == 3


def test_timeline_runs(tmp_path: Path) -> None:
    out = make_archive(tmp_path)
    part = write_cue_partition(out / "day1" / "a.mp4", name="day1/a.mp4", output_dir=out)
    runs = _segments(pq.read_table(part), start=2.0)
    got = sorted(
        (int(i), float(s), float(s + n))
        for i, s, n in zip(runs["id"], runs["start"], runs["length"], strict=True)
    )
    # id 1's run is broken by the frame lost at 2.50 s (0.50 s from the start)
    assert got == [(0, 0.0, 0.5), (0, 1.25, 1.5), (1, 0.25, 0.5), (1, 0.75, 1.0),
                   (1, 1.25, 1.75), (2, 1.25, 1.5)]  # fmt: skip
    assert partition_dir(out, "day1/a.mp4") == part.parent


def test_middle_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", frames=12, fps=25)
    image = middle_frame(video, width=96)
    assert image.shape == (64, 96, 3)
    assert frame_number(image) == 6
    assert middle_frame(video).shape == (213, 320, 3)  # 320 / 96 × 64
    (tmp_path / "x.mp4").write_text("not a video")
    assert middle_frame(tmp_path / "x.mp4") is None


def _check_report_module():
    spec = importlib.util.spec_from_file_location(
        "check_report", ROOT / "scripts" / "check_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    if (why := _check_report_module().missing()) is not None:
        pytest.skip(why)
    out = _archive(tmp_path)
    write_report(out, find_videos(out))
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_report.py"), str(out),
         "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    findings = json.loads(done.stdout)
    assert (findings["rows"], findings["images"], findings["images_loaded"]) == (4, 6, 6)
    assert findings["reasons_visible"] == [EXPECTED["failed_reason"]]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(shot)).shape[1] == 1440
