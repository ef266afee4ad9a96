"""evaluate / write_report on a tiny checkpoint and a fake EndoVis 2017 copy, and the eval app
through Hydra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _fake_layouts import SMALL_CROP, make_endovis2015, make_endovis2017, make_generic
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.metrics import jaccard_score

from surgseg.apps import CONF_DIR
from surgseg.apps.eval import run
from surgseg.datasets import build_dataset
from surgseg.errors import ConfigError
from surgseg.evaluate import evaluate, write_report
from surgseg.predictor import Predictor

CROP = {k: getattr(SMALL_CROP, k) for k in SMALL_CROP.__dataclass_fields__}
CROP_OVERRIDE = "data.crop={" + ",".join(f"{k}:{v}" for k, v in CROP.items()) + "}"


@pytest.fixture
def ev17(tmp_path: Path) -> Path:
    return make_endovis2017(tmp_path / "ev17", videos=(1, 3, 5), frames=2)


def test_evaluate_matches_an_independent_computation(make_checkpoint, ev17: Path, tmp_path):
    predictor = Predictor.from_checkpoint(make_checkpoint("binary"))
    dataset = build_dataset("endovis2017", root=ev17, task="binary", crop=CROP)
    results = evaluate(predictor, dataset, batch_size=4, submission_dir=tmp_path / "sub")
    assert results["frames"] == 6 and results["task"] == "binary"
    assert list(results["videos"]) == [f"instrument_dataset_{v}" for v in (1, 3, 5)]
    preds = [p.mask for p in predictor.predict([dataset[i][0] for i in range(6)])]
    targets = [dataset[i][1] for i in range(6)]
    overall = results["overall"]
    iou = jaccard_score(np.ravel(targets), np.ravel(preds), labels=[0, 1], average=None)
    np.testing.assert_allclose(overall["iou"], iou)
    first = jaccard_score(np.ravel(targets[:2]), np.ravel(preds[:2]), labels=[0, 1], average=None)
    np.testing.assert_allclose(results["videos"]["instrument_dataset_1"]["iou"], first)
    assert sum(v["pixels"] for v in results["videos"].values()) == overall["pixels"] == 6 * 16 * 24
    video_means = [v["frame_iou"] for v in results["videos"].values()]
    assert overall["frame_iou_video_mean"] == pytest.approx(np.mean(video_means))

    # Submission: full-size PNGs, crop undone, challenge values 0/255.
    png = tmp_path / "sub/instrument_dataset_3/BinarySegmentation/frame001.png"
    written = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert written.shape == (20, 32) and written.dtype == np.uint8
    np.testing.assert_array_equal(written[2:18, 4:28], preds[3] * 255)
    assert written.sum() == written[2:18, 4:28].sum()
    assert len(list((tmp_path / "sub").rglob("*.png"))) == 6

    json_path, md_path = write_report(results, tmp_path / "report")
    assert json.loads(json_path.read_text())["overall"]["iou"] == overall["iou"]
    md = md_path.read_text()
    for video in results["videos"]:
        assert f"| {video} | 2 |" in md
    assert "| **overall** | 6 |" in md and "balanced_accuracy" in md
    assert not list((tmp_path / "report").glob(".*partial*"))


def test_evaluate_rejects_mismatched_classes(make_checkpoint, ev17: Path):
    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    dataset = build_dataset("endovis2017", root=ev17, task="binary", crop=CROP)
    with pytest.raises(ConfigError, match="classes"):
        evaluate(predictor, dataset)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_eval_app_types_with_submission(make_checkpoint, ev17: Path, tmp_path: Path):
    out = tmp_path / "out"
    cfg = _compose([
        f"checkpoint={make_checkpoint('types')}",
        "data=endovis2017",
        f"data.root={ev17}",
        "data.fold=null",
        "data.videos=[1,3]",
        CROP_OVERRIDE,
        f"output_dir={out}",
        "submission=true",
        "progress=false",
        "batch_size=3",
    ])  # fmt: skip
    results = run(cfg)
    assert results["frames"] == 4 and results["task"] == "types"
    assert len(results["overall"]["iou"]) == 8
    assert json.loads((out / "metrics.json").read_text())["frames"] == 4
    report = (out / "metrics.md").read_text()
    assert "| instrument_dataset_3 |" in report
    assert "background left out" in report and "miou_all" in report  # the columns explained
    pngs = sorted((out / "submission").rglob("*.png"))
    assert [p.relative_to(out / "submission").parts[:2] for p in pngs] == [
        ("instrument_dataset_1", "TypeSegmentation")
    ] * 2 + [("instrument_dataset_3", "TypeSegmentation")] * 2
    assert cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).max() <= 7


def test_eval_app_fold_selects_validation_videos(make_checkpoint, tmp_path: Path):
    root = make_endovis2017(tmp_path / "ev17", videos=range(1, 9), frames=1)
    cfg = _compose([
        f"checkpoint={make_checkpoint('binary')}",
        "data=endovis2017",
        f"data.root={root}",
        "data.fold=2",
        CROP_OVERRIDE,
        f"output_dir={tmp_path / 'out'}",
        "progress=false",
    ])  # fmt: skip
    assert list(run(cfg)["videos"]) == ["instrument_dataset_4", "instrument_dataset_8"]


def test_eval_cli_reports_a_user_error_in_one_line(make_checkpoint, tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable, "-m", "surgseg.apps.eval",
            f"checkpoint={make_checkpoint('binary')}",
            "data=endovis2017", f"data.root={tmp_path / 'missing'}",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"surgseg-eval: error: {tmp_path / 'missing'}: dataset folder not found"
    )
    assert not (tmp_path / "out").exists()


def test_eval_app_on_synthetic_clips(make_checkpoint, tmp_path: Path):
    synthetic = pytest.importorskip("surgseg.synthetic")
    for seed in (1, 2):
        synthetic.write_clip(
            tmp_path / f"clips/c{seed}", num_frames=2, width=64, height=48, seed=seed
        )
    cfg = _compose([
        f"checkpoint={make_checkpoint('parts')}",
        f"data.root={tmp_path / 'clips'}",
        f"output_dir={tmp_path / 'out'}",
        "progress=false",
    ])  # fmt: skip
    results = run(cfg)
    assert results["frames"] == 4 and list(results["videos"]) == ["c1", "c2"]
    assert results["overall"]["pixels"] == 4 * 48 * 64


@pytest.mark.parametrize("kind", ["endovis2015", "endovis2017", "generic", "synthetic"])
def test_every_data_config_builds_its_dataset(kind: str, tmp_path: Path):
    root = tmp_path / kind
    overrides = [f"data={kind}", f"data.root={root}"]
    if kind == "endovis2015":
        make_endovis2015(root, frames=2)
    elif kind == "endovis2017":
        make_endovis2017(root, videos=(1, 3), frames=1)
        overrides.append(CROP_OVERRIDE)
    elif kind == "generic":
        make_generic(root, values=(0, 1, 1, 255))
    else:
        synthetic = pytest.importorskip("surgseg.synthetic")
        synthetic.write_clip(root / "c0", num_frames=1, width=32, height=32)
    data = OmegaConf.to_container(_compose(overrides).data, resolve=True)
    dataset = build_dataset(data.pop("kind"), task="binary", **data)
    assert len(dataset) == {"endovis2015": 2, "endovis2017": 2, "generic": 4, "synthetic": 1}[kind]
