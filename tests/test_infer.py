"""surgseg-infer end to end on videos the tests make: outputs, formats and bad input."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from _video_utils import (
    corrupt_packets,
    cut_in_packet,
    faststart_copy,
    ffprobe_stream,
    header_only_copy,
    truncated_copy,
    write_audio_only,
    write_text,
    write_video,
)
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.infer import run
from surgseg.archive import find_inputs
from surgseg.cues import estimate_view, find_instruments
from surgseg.decode import read_frames
from surgseg.errors import CheckpointError, ConfigError
from surgseg.options import OutputOptions
from surgseg.sinks import read_masks
from surgseg.synthetic import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    root = write_clip(
        tmp_path_factory.mktemp("clip") / "case", num_frames=6, width=160, height=128, seed=3
    )
    return root / "video.mp4"


def _cfg(**values):
    overrides = [f"{k}={v}" for k, v in values.items()]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("infer", overrides=[*overrides, "progress=false"])


def test_outputs_of_one_video(clip, make_checkpoint, tmp_path):
    ckpt = make_checkpoint("parts")
    summary = run(_cfg(input=clip, checkpoint=ckpt, output_dir=tmp_path / "out", batch_size=4))
    assert summary.failed == []
    out = tmp_path / "out" / "video.mp4"
    assert summary.done == [out]
    frames = list(read_frames(clip))

    masks = list(read_masks(out / "masks"))
    assert [i for i, _, _ in masks] == list(range(6))
    assert sorted(p.name for p in (out / "masks").iterdir())[0] == "000000.png"
    assert all(m.shape == (128, 160) and m.dtype == np.uint8 and m.max() < 4 for _, _, m in masks)

    lines = [json.loads(line) for line in (out / "cues.jsonl").read_text().splitlines()]
    assert [(r["index"], r["pts"]) for r in lines] == [(f.index, f.pts) for f in frames]
    assert [r["time_s"] for r in lines] == pytest.approx([f.time_s for f in frames])
    # The cues are those of the written masks (the same geometry, ids from the tracker).
    view = estimate_view(frames[0].image)
    for record, (_, _, mask) in zip(lines, masks, strict=True):
        expected = [i.to_dict() for i in find_instruments(mask, task="parts", view=view)]
        strip = ("id", "confidence")
        got = [{k: v for k, v in inst.items() if k not in strip} for inst in record["instruments"]]
        assert got == [{k: v for k, v in e.items() if k not in strip} for e in expected]
        assert all(isinstance(inst["id"], int) for inst in record["instruments"])
        assert all(0 <= inst["confidence"] <= 1 for inst in record["instruments"])

    probe = ffprobe_stream(out / "overlay.mp4")
    assert (probe["width"], probe["height"], probe["nb_read_frames"]) == (80, 64, 6)  # scale 0.5

    info = json.loads((out / "run.json").read_text())
    assert info["frames"] == {"processed": 6, "decoded": 6, "corrupt": 0, "missing": 0,
                              "gaps_checked": True, "first_error": None, "events_omitted": 0,
                              "events": []}  # fmt: skip
    assert info["model"] == {"task": "parts", "classes": {"background": 0, "shaft": 1,
                             "wrist": 2, "clasper": 3}, "input_size": [64, 80],
                             "engine": "torch", "device": "cpu"}  # fmt: skip
    assert [(r["corrupt"], r["gap"]) for r in lines] == [(False, 0)] * 6
    assert info["checkpoint"] == str(ckpt.resolve())
    assert info["config"]["outputs"] == asdict(OutputOptions())
    assert set(info["timing_s"]) == {"decode", "predict", "cues", "write"}
    assert info["software"]["torch"] and info["video"]["codec"] == "h264"


def test_a_videos_report_images_are_made_as_it_ends(clip, make_checkpoint, tmp_path):
    """The process that ran a video draws its report images (on a cluster, the workers, in
    parallel); the report at the end of the run finds them made."""
    from surgseg.infer import VideoJobs
    from surgseg.jobs import Job
    from surgseg.options import CueOptions, PredictorSpec
    from surgseg.report import write_report
    from surgseg.tables import find_videos

    out = tmp_path / "out"
    runner = VideoJobs(PredictorSpec(make_checkpoint("parts")).build(), output_dir=out,
                       outputs=OutputOptions(), cues=CueOptions())  # fmt: skip
    assert runner(Job(clip, "video.mp4", out / "video.mp4")).status == "done"
    assets = out / "index_files"
    made = json.loads((assets / next(p.name for p in assets.glob("*.json"))).read_text())
    assert (assets / made["thumbnail"]["file"]).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}
    write_report(out, find_videos(out))
    assert {p.name: p.stat().st_mtime_ns for p in assets.iterdir()} == stamps


def test_ffv1_masks_keep_frame_times(clip, make_checkpoint, tmp_path):
    cfg = _cfg(
        input=clip,
        checkpoint=make_checkpoint(),
        output_dir=tmp_path,
        **{"outputs.masks": "ffv1", "outputs.overlay": "false"},
    )
    run(cfg)
    out = tmp_path / "video.mp4"
    assert not (out / "overlay.mp4").exists() and not (out / "masks").exists()
    times = [t for _, t, _ in read_masks(out / "masks.mkv")]
    assert times == pytest.approx([f.time_s for f in read_frames(clip)], abs=1e-3)
    assert ffprobe_stream(out / "masks.mkv")["pix_fmt"] == "gray"


def test_corrupt_stretch_is_counted_and_the_run_goes_on(make_checkpoint, tmp_path):
    src = write_video(tmp_path / "clip", fmt="mjpeg-avi", frames=16)
    bad = corrupt_packets(src, tmp_path / "bad.avi", range(5, 8))
    summary = run(_cfg(input=bad, checkpoint=make_checkpoint(), output_dir=tmp_path / "out"))
    info = json.loads((summary.done[0] / "run.json").read_text())
    assert info["frames"]["corrupt"] == 3
    assert info["frames"]["processed"] == info["frames"]["decoded"] == 13


def test_wrong_task_and_bad_values_fail_before_any_output(make_checkpoint, clip, tmp_path):
    with pytest.raises(CheckpointError, match="trained for task 'binary', not 'types'"):
        run(_cfg(input=clip, checkpoint=make_checkpoint(), output_dir=tmp_path / "o", task="types"))
    with pytest.raises(ConfigError, match=r"outputs\.masks"):
        run(
            _cfg(
                input=clip,
                checkpoint=make_checkpoint(),
                output_dir=tmp_path / "o",
                **{"outputs.masks": "jpeg"},
            )
        )
    assert not (tmp_path / "o").exists()


def _bad_inputs(folder: Path) -> dict[str, Path]:
    good = write_video(folder / "src" / "good", fmt="mjpeg-avi", frames=8)
    h264 = write_video(folder / "src" / "h264", fmt="h264-mp4", frames=8)
    (folder / "empty.mp4").write_bytes(b"")
    return {
        "good": good,
        "not_video": write_text(folder / "notes.mp4"),
        "zero_bytes": folder / "empty.mp4",
        "truncated": truncated_copy(h264, folder / "cut.mp4", keep=0.5),
        "audio_only": write_audio_only(folder / "sound.mp4"),
        "no_frame": header_only_copy(good, folder / "header_only.avi"),
    }


def test_a_cut_short_file_is_done_and_says_what_it_lacks(make_checkpoint, tmp_path):
    """Index first, end cut off: the frames there are processed, the run says how many are
    missing at the end (it used to call the video complete), and the run still succeeds."""
    src = write_video(tmp_path / "clip", fmt="h264-mp4", frames=30)
    cut = cut_in_packet(faststart_copy(src, tmp_path / "fast.mp4"), tmp_path / "cut.mp4", 15)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "surgseg.apps.infer", f"input={cut}",
         f"checkpoint={make_checkpoint()}", f"output_dir={out}", "progress=false",
         "outputs.overlay=false"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    frames = json.loads((out / "cut.mp4" / "run.json").read_text())["frames"]
    assert frames["processed"] + frames["missing"] == 30 and frames["missing"] > 0
    assert [e["kind"] for e in frames["events"]] == ["end"]
    lines = proc.stderr.splitlines()
    assert lines[-2:] == ["done with frames lost in decoding (see their run.json):",
                          f"  {cut}: {frames['missing']} frames missing at the end (after "
                          f"{frames['events'][0]['time_s']:.3f} s)"]  # fmt: skip


def test_cli_processes_the_good_and_lists_each_bad_input(make_checkpoint, tmp_path):
    inputs = _bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "surgseg.apps.infer",
            f"input={tmp_path / 'in'}",
            f"checkpoint={make_checkpoint()}",
            f"output_dir={out}",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    failures = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert len(failures) == 5
    for name, path in inputs.items():
        if name != "good":
            assert any(line.startswith(f"{path}: ") for line in failures), name
    done = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("run.json"))
    assert done == ["src/good.avi", "src/h264.mp4"]
    assert not any((out / n / "run.json").exists() for n in ("cut.mp4", "header_only.avi"))


@pytest.mark.parametrize("problem", ["missing_input", "not_our_checkpoint"])
def test_cli_user_errors_are_one_line(problem, make_checkpoint, clip, tmp_path):
    ckpt = make_checkpoint()
    if problem == "not_our_checkpoint":
        ckpt = tmp_path / "other.pt"
        ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
        video = clip
    else:
        video = tmp_path / "nope.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "surgseg.apps.infer",
            f"input={video}",
            f"checkpoint={ckpt}",
            f"output_dir={tmp_path / 'out'}",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    named = ckpt if problem == "not_our_checkpoint" else video
    assert any(str(named) in line for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a mistyped path


def test_same_stems_get_their_own_folders_inside_output_dir(clip, make_checkpoint, tmp_path):
    """a.mp4 and a.avi in one folder: two folders inside output_dir, never outside it."""
    same = tmp_path / "data" / "same"
    write_video(same / "a", fmt="h264-mp4", frames=3)
    write_video(same / "a", fmt="mjpeg-avi", frames=3)
    out = tmp_path / "out"
    summary = run(_cfg(input=same, checkpoint=make_checkpoint(), output_dir=out))
    assert summary.done == [out / "a.avi", out / "a.mp4"]
    runs = [json.loads(p.read_text())["input"] for p in sorted(out.rglob("run.json"))]
    assert runs == [str(same / "a.avi"), str(same / "a.mp4")]


def test_folder_names_do_not_depend_on_the_rest_of_the_batch(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("sub/b.mp4", "b.mp4", "sub/c.mkv"):
        (tmp_path / name).write_bytes(b"x")
    by_folder = dict(find_inputs(tmp_path))
    assert by_folder == {tmp_path / "b.mp4": "b.mp4", tmp_path / "sub/b.mp4": "sub/b.mp4",
                         tmp_path / "sub/c.mkv": "sub/c.mkv"}  # fmt: skip
    assert find_inputs(f"{tmp_path}/**/*.mp4") == sorted(
        (p, n) for p, n in by_folder.items() if n.endswith(".mp4"))
    assert find_inputs(f"{tmp_path}/sub/*.mp4") == [(tmp_path / "sub/b.mp4", "b.mp4")]
    assert find_inputs(tmp_path / "sub" / "b.mp4") == [(tmp_path / "sub/b.mp4", "b.mp4")]
    # ".." after a wildcard never leads a name out of the output folder
    (tmp_path / "other").mkdir()
    (tmp_path / "other/d.mp4").write_bytes(b"x")
    names = [n for _, n in find_inputs(f"{tmp_path}/sub/*/../../other/*.mp4")]
    assert names == ["d.mp4"]
