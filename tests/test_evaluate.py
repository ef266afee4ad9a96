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
from _fake_layouts import (
    SMALL_CROP,
    make_endovis2015,
    make_endovis2017,
    make_endovis2017_test,
    make_generic,
    write_ev17_test_frame,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.metrics import jaccard_score

from surgseg.apps import CONF_DIR
from surgseg.apps.eval import run
from surgseg.checkpoint import CheckpointMeta, save_checkpoint
from surgseg.datasets import build_dataset
from surgseg.errors import ConfigError
from surgseg.evaluate import evaluate, write_report
from surgseg.predictor import Prediction, Predictor
from surgseg.tasks import class_names

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
    for key in ("frame_iou", "challenge_iou"):
        video_means = [v[key] for v in results["videos"].values()]
        assert overall[f"{key}_video_mean"] == pytest.approx(np.mean(video_means))

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


def _masks(*rows: str) -> list[np.ndarray]:
    """4×4 binary masks written as four strings of 0/1 each."""
    digits = np.array([[int(c) for c in row] for row in rows], np.uint8)
    return list(digits.reshape(-1, 4, 4))


class _GivenMasks:
    """A stand-in predictor that answers each frame with a given mask: the frames are uniform
    images whose grey level numbers them. Everything of ``evaluate`` runs for real."""

    def __init__(self, masks: list[np.ndarray]):
        self.meta = CheckpointMeta(
            task="binary", class_names=list(class_names("binary")), model={}, input_size=(4, 4)
        )
        self.masks = masks

    def predict(self, frames):
        return [Prediction(mask=self.masks[int(f[0, 0, 0])], confidence=None) for f in frames]


def test_challenge_iou_per_video_and_overall_by_hand(tmp_path: Path):
    """Five 4×4 frames of the test layout, two videos, every IoU worked out by hand."""
    truth = _masks(
        "0011", "0011", "0000", "0000",  # video 1, frame225: tool 4 px
        "0000", "0000", "0000", "0000",  # video 1, frame226: no tool
        "1100", "1100", "0000", "0000",  # video 9, frame000: 4 px
        "0000", "0000", "0011", "0011",  # video 9, frame001: 4 px
        "1111", "1111", "0000", "0000",  # video 9, frame002: 8 px
    )  # fmt: skip
    pred = _masks(
        "0111", "0010", "0000", "0000",  # 4 px, 3 of them right: 3 / 5 = 0.6
        "0000", "0000", "0000", "0000",  # nothing: challenge 0 (no tool in truth), frame_iou 1
        "1100", "1100", "0000", "0000",  # exact: 1
        "0000", "0000", "0011", "0000",  # 2 px, both right: 2 / 4 = 0.5
        "0000", "0000", "0000", "0000",  # nothing: 0
    )  # fmt: skip
    frames = [(1, "frame225.png"), (1, "frame226.png"), (9, "frame000.png"),
              (9, "frame001.png"), (9, "frame002.png")]  # fmt: skip
    root = tmp_path / "test"
    for number, ((video, name), mask) in enumerate(zip(frames, truth, strict=True)):
        image = np.full((4, 4, 3), number, np.uint8)
        write_ev17_test_frame(root, video, name, image, {"BinarySegmentation": mask * 255})
    dataset = build_dataset("endovis2017", root=root, task="binary", split="test", crop=False)
    results = evaluate(_GivenMasks(pred), dataset, batch_size=2)
    v1, v9 = results["videos"]["instrument_dataset_1"], results["videos"]["instrument_dataset_9"]
    assert v1["challenge_iou"] == pytest.approx((0.6 + 0) / 2)
    assert v9["challenge_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    overall = results["overall"]
    # The organisers' total: every counted frame of every video weighs the same.
    assert overall["challenge_iou"] == pytest.approx((0.6 + 0 + 1 + 0.5 + 0) / 5)
    assert overall["challenge_frames"] == 5
    assert overall["challenge_iou_video_mean"] == pytest.approx((0.3 + 0.5) / 2)
    assert v1["frame_iou"] == pytest.approx((0.6 + 1) / 2)
    assert overall["frame_iou"] == pytest.approx((0.6 + 1 + 1 + 0.5 + 0) / 5)
    assert overall["frame_iou_video_mean"] == pytest.approx((0.8 + 0.5) / 2)


def _seeded_checkpoint(path: Path, task: str, seed: int) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    meta = CheckpointMeta(
        task=task,
        class_names=list(class_names(task)),
        model={"depth": 18, "output_stride": 32, "head": "fcn", "aux_loss": False},
        input_size=(64, 80),
    )
    save_checkpoint(path, model=meta.build(), meta=meta)
    return path


def test_eval_app_test_split_each_video_by_the_fold_that_held_it_out(tmp_path: Path):
    """split=test with fold_checkpoints: videos 1–8 by the model of the fold that did not
    train on them, 9 and 10 by checkpoint; the same figures as evaluating each alone."""
    root = make_endovis2017_test(tmp_path / "test", videos=(2, 4, 5, 9), frames=2, empty=(1,))
    folds = [_seeded_checkpoint(tmp_path / f"fold{k}.pt", "parts", k) for k in range(4)]
    common = ["data=endovis2017", f"data.root={root}", "split=test", CROP_OVERRIDE,
              "progress=false"]  # fmt: skip
    folds_override = "fold_checkpoints=[" + ",".join(map(str, folds)) + "]"
    results = run(_compose([*common, "data.fold=null", f"checkpoint={folds[0]}",
                            folds_override, f"output_dir={tmp_path / 'all'}"]))  # fmt: skip
    assert list(results["videos"]) == [f"instrument_dataset_{v}" for v in (2, 4, 5, 9)]
    assert results["frames"] == 8 and results["task"] == "parts"
    # Video 2 and 5 are fold 1's, 4 is fold 2's, 9 goes to checkpoint (fold 0's here).
    for fold, videos in ((1, [2, 5]), (2, [4]), (0, [9])):
        alone = run(_compose([*common, "data.fold=null", f"data.videos={videos}",
                              f"checkpoint={folds[fold]}",
                              f"output_dir={tmp_path / f'alone{fold}'}"]))  # fmt: skip
        for video, metrics in alone["videos"].items():
            assert results["videos"][video] == metrics
    # data.fold=k picks the test frames of the videos fold k held out.
    fold1 = run(_compose([*common, "data.fold=1", f"checkpoint={folds[1]}",
                          f"output_dir={tmp_path / 'fold1'}"]))  # fmt: skip
    assert list(fold1["videos"]) == ["instrument_dataset_2", "instrument_dataset_5"]
    report = (tmp_path / "all/metrics.md").read_text()
    assert "challenge_iou" in report and "organisers" in report
    saved = json.loads((tmp_path / "all/metrics.json").read_text())
    assert saved["fold_checkpoints"] == [str(p) for p in folds]
    # Every parts frame counts for the challenge (background is scored), even the empty ones.
    assert saved["overall"]["challenge_frames"] == 8
    with pytest.raises(ConfigError, match="fold_checkpoints must list 4 checkpoints"):
        run(_compose([*common, f"checkpoint={folds[0]}", f"fold_checkpoints=[{folds[0]}]",
                      f"output_dir={tmp_path / 'bad'}"]))  # fmt: skip
