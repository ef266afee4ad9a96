"""A folder of recordings processed, interrupted and processed again: what is skipped, what is
redone, what a killed process leaves, and the summary."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _video_utils import write_text, write_video
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.infer import run
from surgseg.archive import find_inputs, unrecorded
from surgseg.errors import VideoError
from surgseg.synthetic import write_clip


def _cfg(**values):
    overrides = [f"{k}={v}" for k, v in values.items()]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("infer", overrides=[*overrides, "progress=false"])


@pytest.fixture
def archive(tmp_path) -> Path:
    """Two short recordings, one in a sub-folder, and a file that is not a video."""
    root = tmp_path / "archive"
    write_video(root / "day1" / "a", fmt="h264-mp4", frames=4)
    write_video(root / "b", fmt="mjpeg-avi", frames=3)
    (root / "day2").mkdir()
    write_text(root / "day2" / "broken.mp4")
    return root


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.relative_to(out).as_posix(): p.stat().st_mtime_ns
            for p in [*out.rglob("run.json"), *out.rglob("failed.json")]}  # fmt: skip


def test_a_second_run_skips_what_the_first_finished_or_failed_on(archive, make_checkpoint,
                                                                  tmp_path):  # fmt: skip
    out, ckpt = tmp_path / "out", make_checkpoint("parts")
    first = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
    assert first.done == [out / "b.avi", out / "day1/a.mp4"] and first.frames == 7
    assert [v for v, _ in first.failed] == [archive / "day2/broken.mp4"]
    failed = json.loads((out / "day2/broken.mp4/failed.json").read_text())
    assert failed["status"] == "failed" and str(archive / "day2/broken.mp4") in failed["reason"]
    assert not (out / "day2/broken.mp4/run.json").exists()
    records = {n: json.loads((out / n / "run.json").read_text()) for n in ("b.avi", "day1/a.mp4")}
    assert {r["status"] for r in records.values()} == {"done"}
    assert len({r["run_hash"] for r in records.values()} | {failed["run_hash"]}) == 1
    before = _mtimes(out)

    again = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
    assert again.done == [] and again.frames == 0
    assert again.skipped == [out / "b.avi", out / "day1/a.mp4"]
    assert [v for v, _ in again.failed] == [archive / "day2/broken.mp4"]
    assert "an earlier run" in again.failed[0][1]
    assert _mtimes(out) == before  # nothing was touched
    # every video has a record: a cluster stays unstarted
    assert unrecorded(find_inputs(archive), out) == 0
    shutil.rmtree(out / "b.avi")
    assert unrecorded(find_inputs(archive), out) == 1
    run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))

    # Other settings, another checkpoint, or resume=false: every video again.
    other = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out, **{"cues.min_area": 60}))
    assert len(other.done) == 2 and other.skipped == [] and len(other.failed) == 1
    retrained = run(_cfg(input=archive, checkpoint=make_checkpoint("parts", output_stride=16,
                                                                   name="v2.pt"),
                         output_dir=out, **{"cues.min_area": 60}))  # fmt: skip
    assert len(retrained.done) == 2
    forced = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out, resume="false"))
    assert len(forced.done) == 2 and forced.skipped == []


def test_unfinished_and_changed_videos_are_redone_and_leftovers_cleared(archive,
                                                                        make_checkpoint,
                                                                        tmp_path):  # fmt: skip
    out, ckpt = tmp_path / "out", make_checkpoint()
    run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
    # As a killed process leaves it: no run.json, a temporary overlay, a temporary mask.
    (out / "b.avi/run.json").unlink()
    leftovers = [out / "b.avi/.overlay.partial-999999.mp4",
                 out / "b.avi/masks/.000002.partial-999999.png"]  # fmt: skip
    for path in leftovers:
        path.write_bytes(b"half")
    # The broken file is replaced by a real video: it is tried again.
    broken = archive / "day2/broken.mp4"
    broken.unlink()
    write_video(archive / "day2/broken", fmt="h264-mp4", frames=2)

    summary = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
    assert summary.done == [out / "b.avi", out / "day2/broken.mp4"]
    assert summary.skipped == [out / "day1/a.mp4"] and summary.failed == []
    assert not any(p.exists() for p in leftovers)
    assert not (out / "day2/broken.mp4/failed.json").exists()
    assert sorted(p.name for p in (out / "b.avi/masks").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]  # fmt: skip


def test_summary_lines_name_counts_and_every_failure(archive, make_checkpoint, tmp_path):
    summary = run(_cfg(input=archive, checkpoint=make_checkpoint(), output_dir=tmp_path / "o"))
    first, header, reason = summary.lines()
    assert first.startswith("2 done, 0 skipped") and "1 failed; 7 frames in" in first
    assert "fps" in first and header == "failed:"
    assert reason.startswith(f"  {archive / 'day2/broken.mp4'}: ")


def test_a_killed_run_leaves_nothing_finished_looking_and_the_rerun_cleans(make_checkpoint,
                                                                           tmp_path):  # fmt: skip
    clip = write_clip(tmp_path / "in" / "long", num_frames=60, width=320, height=256, seed=5)
    out, ckpt = tmp_path / "out", make_checkpoint()
    command = [sys.executable, "-m", "surgseg.apps.infer", f"input={tmp_path / 'in'}",
               f"checkpoint={ckpt}", f"output_dir={out}", "progress=false", "batch_size=1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cues = out / "long/video.mp4/cues.jsonl"
    deadline = time.monotonic() + 120
    while not (cues.exists() and cues.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = out / "long/video.mp4"
    assert list(folder.glob(".overlay.partial-*.mp4")) and not (folder / "run.json").exists()

    summary = run(_cfg(input=clip.parent, checkpoint=ckpt, output_dir=out))
    assert summary.done == [folder] and summary.frames == 60
    assert not list(out.rglob(".*partial*"))
    assert len((folder / "cues.jsonl").read_text().splitlines()) == 60


def test_the_folder_gets_tables_and_a_report(archive, make_checkpoint, tmp_path):
    import pandas as pd

    out = tmp_path / "out"
    run(_cfg(input=archive, checkpoint=make_checkpoint("parts"), output_dir=out))
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert sorted(videos.index) == ["b.avi", "day1/a.mp4", "day2/broken.mp4"]
    assert videos.loc["day2/broken.mp4", "status"] == "failed"
    assert videos.loc["day1/a.mp4", "frames"] == 4
    cues = pd.read_parquet(out / "cues.parquet")
    assert set(cues["video"].astype(str)) <= {"b.avi", "day1/a.mp4"}
    assert (out / "index.html").is_file()
    # A recording taken out of the archive, and its folder deleted, leaves the tables.
    (archive / "b.avi").unlink()
    shutil.rmtree(out / "b.avi")
    run(_cfg(input=archive, checkpoint=make_checkpoint("parts"), output_dir=out))
    assert "b.avi" not in set(pd.read_parquet(out / "videos.parquet")["video"])
    assert "b.avi" not in set(pd.read_parquet(out / "cues.parquet")["video"].astype(str))


def _touch(root: Path, *names: str) -> None:
    """Zero-byte files with video suffixes: enough for ``find_inputs``, which opens nothing."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_a_folder_named_like_a_video_is_not_an_input(tmp_path):
    # An output folder copied into the archive: folders named after their videos.
    _touch(tmp_path, "a.mp4", "dirext/old.mp4/run.json", "dirext/old.mp4/masks.mkv")
    (tmp_path / "dirext/old.mp4/masks").mkdir()
    assert find_inputs(tmp_path) == [(tmp_path / "a.mp4", "a.mp4"),
                                     (tmp_path / "dirext/old.mp4/masks.mkv",
                                      "dirext/old.mp4/masks.mkv")]  # fmt: skip
    only_folders = tmp_path / "empty"
    (only_folders / "x.mp4").mkdir(parents=True)
    with pytest.raises(VideoError, match="no video files in this folder"):
        find_inputs(only_folders)


def test_nothing_inside_the_output_folder_is_an_input(tmp_path):
    root, out = tmp_path / "surgeries", tmp_path / "surgeries/out"
    _touch(root, "day1/a.mp4", "b.avi")
    # What a run wrote into out: folders named after the videos, overlays, ffv1 masks.
    _touch(out, "day1/a.mp4/overlay.mp4", "day1/a.mp4/masks.mkv", "b.avi/overlay.mp4",
           "b.avi/masks/000000.png", "b.avi/run.json")  # fmt: skip
    videos = [(root / "b.avi", "b.avi"), (root / "day1/a.mp4", "day1/a.mp4")]
    assert find_inputs(root, exclude=out) == videos
    assert find_inputs(root, exclude=root / "day1/../out") == videos  # resolved paths compared
    assert find_inputs(f"{root}/**/*.mp4", exclude=out) == [videos[1]]
    # An output folder outside the searched one, or that is or holds it, excludes nothing.
    assert [n for _, n in find_inputs(root, exclude=tmp_path / "elsewhere")] == [
        "b.avi", "day1/a.mp4", "out/b.avi/overlay.mp4", "out/day1/a.mp4/masks.mkv",
        "out/day1/a.mp4/overlay.mp4"]  # fmt: skip
    assert find_inputs(root / "day1", exclude=root) == [(root / "day1/a.mp4", "a.mp4")]
    assert len(find_inputs(out, exclude=out)) == 3
    # A single file named explicitly is taken as it is.
    overlay = out / "b.avi/overlay.mp4"
    assert find_inputs(overlay, exclude=out) == [(overlay, "overlay.mp4")]
    # Nothing but outputs: the usual one line.
    _touch(tmp_path / "only", "out/x.mp4/overlay.mp4")
    with pytest.raises(VideoError, match="no video files in this folder"):
        find_inputs(tmp_path / "only", exclude=tmp_path / "only/out")
    with pytest.raises(VideoError, match="no file matches this pattern"):
        find_inputs(f"{tmp_path}/only/**/*.mp4", exclude=tmp_path / "only/out")


def test_an_output_folder_inside_the_input_folder_is_not_read_back(archive, make_checkpoint):
    out, ckpt = archive / "out", make_checkpoint("parts")
    for _ in range(2):
        summary = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
        assert [v for v, _ in summary.failed] == [archive / "day2/broken.mp4"]
    assert summary.done == [] and summary.skipped == [out / "b.avi", out / "day1/a.mp4"]
    assert not (out / "out").exists()
    assert sorted(_mtimes(out)) == ["b.avi", "day1/a.mp4", "day2/broken.mp4"]
