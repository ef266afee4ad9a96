"""The demo, shrunk: every stage runs and the report holds the figures."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.demo import run
from surgseg.checkpoint import read_checkpoint
from surgseg.errors import ConfigError


def test_tiny_demo_writes_everything(tmp_path):
    overrides = [
        f"output_dir={tmp_path}",
        "train_clips=2",
        "val_clips=1",
        "frames_per_clip=4",
        "heldout_frames=5",
        "input_size=[64,80]",
        "crop_size=[64,80]",
        "progress=false",
        "epochs=1",
        "batch_size=4",
        "clips.width=160",
        "clips.height=128",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=overrides)
        result = run(cfg)
    for name in (
        "model.pt",
        "report.md",
        "overlay_frame.png",
        "train/curves.png",
        "heldout/run.json",
        "heldout/cues.jsonl",
        "heldout/overlay.mp4",
    ):
        assert (tmp_path / name).is_file(), name
    assert len(list((tmp_path / "heldout" / "masks").glob("*.png"))) == 5
    # One delivered model (weights and metadata); the training state stays in train/last.pt.
    pt_files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt"))
    assert pt_files == ["model.pt", "train/last.pt"]
    assert read_checkpoint(tmp_path / "model.pt")["train_state"] is None
    assert read_checkpoint(tmp_path / "train" / "last.pt")["train_state"]["step"] > 0
    assert json.loads((tmp_path / "heldout" / "run.json").read_text())["frames"]["processed"] == 5
    report = (tmp_path / "report.md").read_text()
    assert f"| binary IoU (tool) | {result['binary']['iou'][1]:.3f} |" in report
    gt = result["cues_from_ground_truth"]
    assert gt["count"] > 0 and gt["tip_px_median"] < 3 and gt["axis_deg_median"] < 2
    assert f"{gt['tip_px_median']:.2f}" in report
    # the cues the run wrote (with the confidence map) are scored and shown too
    written = result["cues_written"]
    cues = [json.loads(line) for line in (tmp_path / "heldout" / "cues.jsonl").read_text()
            .splitlines()]  # fmt: skip
    assert written["instruments"] == sum(len(r["instruments"]) for r in cues)
    assert "| written by the run |" in report and "`tip_in_view` false" in report
    assert "smoothed" not in written  # cues.smooth is off by default
    # the demo reads its tips from a second look at each (cues.refine_tips), and says so
    assert "refine_tips" in json.loads((tmp_path / "heldout" / "run.json").read_text())["stages"]
    assert "`cues.refine_tips`" in report

    # The same command again, with a longer held-out clip and one training clip fewer: the
    # clips made otherwise are made again, only the clips named are trained on, and the
    # training starts afresh (it said "already holds a training run" before).
    first_model = (tmp_path / "model.pt").stat().st_mtime_ns
    again = [o for o in overrides if not o.startswith(("heldout_frames=", "train_clips="))]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        run(compose("demo", overrides=[*again, "heldout_frames=6", "train_clips=1"]))
    assert json.loads((tmp_path / "heldout" / "run.json").read_text())["frames"]["processed"] == 6
    assert (tmp_path / "model.pt").stat().st_mtime_ns != first_model
    trained = read_checkpoint(tmp_path / "train" / "last.pt")["meta"]["provenance"]["config"]
    assert trained["data"]["videos"] == ["train_00", "val_00"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_training_clips_cross_when_asked(tmp_path):
    """``train_crossings``: the training clips' first two instruments cross; the validation
    and held-out clips stay the default scenes."""
    from surgseg.apps.demo import make_clips

    overrides = ["train_clips=2", "val_clips=1", "frames_per_clip=1", "heldout_frames=1",
                 "clips.width=64", "clips.height=64", "train_crossings=1.0"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=[f"output_dir={tmp_path}", *overrides])
    clips, heldout = make_clips(cfg, tmp_path / "data")
    meta = {p.name: json.loads((p / "clip.json").read_text()) for p in clips.iterdir()}
    meta["heldout"] = json.loads((heldout / "clip.json").read_text())
    assert {name: m["crossings"] for name, m in meta.items()} == {
        "train_00": 1.0, "train_01": 1.0, "val_00": 0.0, "heldout": 0.0}


@pytest.mark.parametrize(
    ("override", "needle"),
    [("task=foo", "task must be one of"), ("heldout_frames=0", "heldout_frames"),
     ("train_crossings=2", "train_crossings"), ("input_size=5", "input_size"),
     ("crop_size=x", "crop_size"), ("val_clips=0", "val_clips"),
     ("masks=jpg", "masks must be one of"), ("masks=null", "masks must be one of"),
     ("refine_tips=maybe", "refine_tips must be true or false")],
)  # fmt: skip
def test_bad_settings_are_refused_before_any_data_is_made(override, needle, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=[f"output_dir={tmp_path / 'out'}", override])
        with pytest.raises(ConfigError, match=needle):
            run(cfg)
    assert not (tmp_path / "out").exists()


def test_the_model_is_a_config_group_of_the_demo():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=["model=resnet34", "model.output_stride=16"])
    assert (cfg.model.depth, cfg.model.output_stride) == (34, 16)


# Small enough that, were a clip setting not checked up front, the first clip would be made.
RGB_CODECS = "['ffv1-rgb', 'libvpx-vp9', 'libx264', 'mjpeg', 'mpeg4']"
TINY = ["train_clips=1", "val_clips=1", "frames_per_clip=1", "heldout_frames=1", "progress=false"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("clips.crossings=3", "clips.crossings must be a probability in 0..1, got 3"),
     ("clips.width=-5", "clips.width must be an integer ≥ 32, got -5"),
     ("clips.height=abc", "clips.height must be an integer ≥ 32, got 'abc'"),
     ("clips.width=161", "clips.width must be even for codec libx264, got 161"),
     ("clips.fps=-1", "clips.fps must be a positive number, got -1"),
     ("clips.fps=0", "clips.fps must be a positive number, got 0"),
     ("clips.codec=foo264", f"clips.codec must be one of {RGB_CODECS}, got 'foo264'"),
     ("clips.codec=ffv1", f"clips.codec must be one of {RGB_CODECS}, got 'ffv1'"),  # masks only
     ("clips.num_instruments=9", "clips.num_instruments must be 1..3 or null, got 9"),
     ("clips.num_instruments=0", "clips.num_instruments must be 1..3 or null, got 0"),
     ("clips.smoke=maybe", "clips.smoke must be true or false, got 'maybe'"),
     ("clips.seed=-1", "clips.seed must be an integer ≥ 0, got -1")],
)  # fmt: skip
def test_clip_settings_are_checked_before_any_data_is_made(override, message, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=[f"output_dir={tmp_path / 'out'}", *TINY, override])
        with pytest.raises(ConfigError) as error:
            run(cfg)
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_a_bad_clip_setting_is_one_line_on_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "surgseg.apps.demo", f"output_dir={tmp_path / 'out'}", *TINY,
         "clips.num_instruments=9"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "surgseg-demo: error: clips.num_instruments must be 1..3 or null, got 9"
    )
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_the_generator_still_refuses_what_it_refused(tmp_path):
    """The checks the demo calls up front are the generator's own: direct callers get them,
    without a key prefix."""
    from surgseg.synthetic import SyntheticSurgery, write_clip

    with pytest.raises(ConfigError, match=r"^crossings must be a probability in 0\.\.1"):
        SyntheticSurgery(crossings=3)
    with pytest.raises(ConfigError, match=r"^num_instruments must be 1\.\.3 or null, got 9$"):
        write_clip(tmp_path / "clip", num_frames=1, num_instruments=9)
    with pytest.raises(ConfigError, match=r"^width must be even for codec libx264, got 65$"):
        write_clip(tmp_path / "clip", num_frames=1, width=65, height=64)
    assert not (tmp_path / "clip").exists()


def test_good_clip_settings_pass_the_check():
    from surgseg.apps.demo import check_settings

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=["clips.codec=mpeg4", "clips.fps=29.97", "clips.width=64",
                                         "clips.height=32", "clips.num_instruments=3",
                                         "clips.crossings=1", "clips.smoke=false"])  # fmt: skip
    check_settings(cfg)
