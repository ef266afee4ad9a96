"""The demo, shrunk: every stage runs and the report holds the figures."""

import json

from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.demo import run
from surgseg.checkpoint import read_checkpoint


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
