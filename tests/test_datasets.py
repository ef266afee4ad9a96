"""Dataset layouts on tiny fake copies: labels at known pixels, folds, crops, preflight."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _fake_layouts import (
    MANIPULATOR_BLOCK,
    SHAFT_BLOCK,
    SMALL_CROP,
    TOOLS_2017,
    make_endovis2015,
    make_endovis2017,
    make_endovis2017_test,
    make_generic,
    pattern,
    write_png,
)

from surgseg.datasets import (
    ENDOVIS2017_CROP,
    ENDOVIS2017_FOLDS,
    build_dataset,
    preflight,
)
from surgseg.datasets.endovis2015 import snap_levels
from surgseg.datasets.endovis2017 import instrument_type
from surgseg.errors import DatasetError
from surgseg.tasks import CLASPER, SHAFT, WRIST

CROP = {k: getattr(SMALL_CROP, k) for k in SMALL_CROP.__dataclass_fields__}


def _ev17(root: Path, task: str, **kwargs):
    return build_dataset("endovis2017", root=root, task=task, crop=CROP, **kwargs)


@pytest.fixture
def ev17(tmp_path: Path) -> Path:
    return make_endovis2017(tmp_path / "ev17")


def test_endovis2017_labels_at_known_pixels(ev17: Path):
    binary, parts, types = (_ev17(ev17, t) for t in ("binary", "parts", "types"))
    assert len(binary) == 4
    assert [binary.video_of(i) for i in range(4)] == ["instrument_dataset_1"] * 2 + [
        "instrument_dataset_2"
    ] * 2
    assert binary.name_of(1) == "frame001.png"
    image, mask = binary[0]
    full = cv2.cvtColor(cv2.imread(str(ev17 / "instrument_dataset_1/left_frames/frame000.png")), 4)
    np.testing.assert_array_equal(image, full[2:18, 4:28])
    assert image.shape == (16, 24, 3) and mask.shape == (16, 24) and mask.dtype == np.uint8
    _, p = parts[0]
    _, t = types[0]
    # Prograsp forceps: rows 0-3 shaft, 4-5 wrist, 6-7 clasper; bipolar: a shaft block.
    assert mask[0, 0] == 1 and mask[12, 12] == 1 and mask[9, 9] == 0
    assert (p[0, 0], p[5, 3], p[7, 5], p[12, 12], p[9, 9]) == (SHAFT, WRIST, CLASPER, SHAFT, 0)
    assert (t[0, 0], t[7, 5], t[12, 12], t[9, 9]) == (2, 2, 1, 0)
    # Exactly the tool pixels, nothing else (the stray pixel outside the crop is cut away).
    tool_pixels = sum(r.stop - r.start for r, _, _ in TOOLS_2017["Left_Prograsp_Forceps_labels"])
    assert mask.sum() == tool_pixels * 6 + 4 * 6
    assert set(np.unique(p)) == {0, SHAFT, WRIST, CLASPER}


def test_endovis2017_other_is_background_except_in_types(ev17: Path):
    other = (slice(0, 4), slice(18, 24))
    assert (_ev17(ev17, "binary")[0][1][other] == 0).all()
    assert (_ev17(ev17, "parts")[0][1][other] == 0).all()
    assert (_ev17(ev17, "types")[0][1][other] == 7).all()


def test_endovis2017_instrument_type_from_folder_names():
    assert instrument_type("Maryland_Bipolar_Forceps_labels") == 1
    assert instrument_type("Left_Prograsp_Forceps_labels") == 2
    assert instrument_type("Right_Large_Needle_Driver_labels") == 3
    assert instrument_type("Vessel_Sealer_labels") == 4
    assert instrument_type("Grasping_Retractor_labels") == 5
    assert instrument_type("Monopolar_Curved_Scissors_labels") == 6
    assert instrument_type("Other_labels") == 7
    with pytest.raises(DatasetError, match="Suction"):
        instrument_type("Suction_labels")


def test_endovis2017_unknown_tool_folder_is_an_error(ev17: Path):
    (ev17 / "instrument_dataset_2/ground_truth/Suction_Tube_labels").mkdir()
    with pytest.raises(DatasetError, match="Suction_Tube_labels"):
        _ev17(ev17, "binary")


def test_endovis2017_real_crop_numbers(tmp_path: Path):
    root = make_endovis2017(tmp_path, videos=(4,), frames=1, crop=ENDOVIS2017_CROP)
    ds = build_dataset("endovis2017", root=root, task="parts")  # crop: true by default
    assert ds.crop == ENDOVIS2017_CROP
    image, mask = ds[0]
    assert image.shape == (1024, 1280, 3) and mask.shape == (1024, 1280)
    np.testing.assert_array_equal(image[0, 0], pattern(1080, 1920, 4)[28, 320])
    np.testing.assert_array_equal(image[-1, -1], pattern(1080, 1920, 4)[28 + 1023, 320 + 1279])
    full = ds.crop.undo(mask)
    assert full.shape == (1080, 1920)
    assert full[28, 320] == SHAFT and full[27, 320] == 0 and full[28, 319] == 0
    assert full.sum() == mask.sum()
    uncropped = build_dataset("endovis2017", root=root, task="parts", crop=False)
    assert uncropped[0][0].shape == (1080, 1920, 3) and uncropped.crop is None
    with pytest.raises(DatasetError, match="crop expects 1920×1080"):
        _ = build_dataset("endovis2017", root=make_endovis2017(tmp_path / "s"), task="binary")[0]


def test_endovis2017_folds(tmp_path: Path):
    root = make_endovis2017(tmp_path, videos=range(1, 9), frames=1)
    for fold, val in ENDOVIS2017_FOLDS.items():
        v = _ev17(root, "binary", fold=fold)
        t = _ev17(root, "binary", fold=fold, split="train")
        val_names = {f"instrument_dataset_{n}" for n in val}
        assert {v.video_of(i) for i in range(len(v))} == val_names
        train_names = {t.video_of(i) for i in range(len(t))}
        assert len(train_names) == 6 and not train_names & val_names
        assert train_names | val_names == {f"instrument_dataset_{n}" for n in range(1, 9)}
    with pytest.raises(DatasetError, match="fold"):
        _ev17(root, "binary", fold=4)
    assert len(_ev17(root, "binary", videos=[3, "instrument_dataset_5"])) == 2


def _ev17_test(root: Path, task: str, **kwargs):
    return build_dataset("endovis2017", root=root, task=task, crop=CROP, split="test", **kwargs)


def test_endovis2017_test_layout_as_released(tmp_path: Path):
    """Frames 225… of videos 1–8 and 000… of 9–10 from the frame archives, the labels of each
    task from instrument_2017_test/…/gt/<Task>Segmentation, found wherever they were unpacked."""
    root = make_endovis2017_test(tmp_path / "test", videos=(1, 5, 9, 10), frames=2)
    binary, parts, types = (_ev17_test(root, t) for t in ("binary", "parts", "types"))
    assert [(binary.video_of(i), binary.name_of(i)) for i in range(len(binary))] == [
        ("instrument_dataset_1", "frame225.png"),
        ("instrument_dataset_1", "frame226.png"),
        ("instrument_dataset_5", "frame225.png"),
        ("instrument_dataset_5", "frame226.png"),
        ("instrument_dataset_9", "frame000.png"),
        ("instrument_dataset_9", "frame001.png"),
        ("instrument_dataset_10", "frame000.png"),
        ("instrument_dataset_10", "frame001.png"),
    ]
    image, b = binary[2]
    frames = root / "instrument_5_8_testing/instrument_dataset_5/left_frames/frame225.png"
    np.testing.assert_array_equal(image, cv2.cvtColor(cv2.imread(str(frames)), 4)[2:18, 4:28])
    _, p = parts[2]
    _, t = types[2]
    # Prograsp forceps: rows 0-3 shaft, 4-5 wrist, 6-7 clasper; bipolar: a shaft block;
    # "Other" (value 40 in parts, 7 in types) only in types.
    other = (slice(0, 4), slice(18, 24))
    assert (b[0, 0], b[7, 5], b[12, 12], b[9, 9], b[other].max()) == (1, 1, 1, 0, 0)
    assert (p[0, 0], p[5, 3], p[7, 5], p[12, 12], p[9, 9], p[other].max()) == (
        SHAFT, WRIST, CLASPER, SHAFT, 0, 0
    )  # fmt: skip
    assert (t[0, 0], t[7, 5], t[12, 12], t[9, 9], t[other].min()) == (2, 2, 1, 0, 7)
    tool_pixels = sum(r.stop - r.start for r, _, _ in TOOLS_2017["Left_Prograsp_Forceps_labels"])
    assert b.sum() == tool_pixels * 6 + 4 * 6  # the stray pixel outside the crop is cut away
    preflight(types)


def test_endovis2017_test_folds_and_videos(tmp_path: Path):
    root = make_endovis2017_test(tmp_path, videos=range(1, 11), frames=1)
    everything = _ev17_test(root, "binary")
    assert len(everything) == 10
    for fold, held_out in ENDOVIS2017_FOLDS.items():
        ds = _ev17_test(root, "binary", fold=fold)
        assert [ds.video_of(i) for i in range(len(ds))] == [
            f"instrument_dataset_{v}" for v in held_out
        ]
    ds = _ev17_test(root, "types", videos=[9, "instrument_dataset_10"])
    assert [ds.name_of(i) for i in range(len(ds))] == ["frame000.png", "frame000.png"]


def test_endovis2017_test_layout_errors_name_the_place(tmp_path: Path):
    root = make_endovis2017_test(tmp_path / "test", videos=(2,), frames=2)
    with pytest.raises(DatasetError, match="no instrument_dataset_3/left_frames"):
        _ev17_test(root, "binary", videos=[3])
    label = root / "instrument_2017_test/instrument_2017_test/instrument_dataset_2/gt"
    (label / "TypeSegmentation/frame226.png").unlink()
    with pytest.raises(DatasetError, match=f"{label}/TypeSegmentation/frame226.png: mask not"):
        preflight(_ev17_test(root, "types"))
    bad = label / "PartsSegmentation/frame225.png"
    mask = cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE)
    mask[5, 5] = 50
    write_png(bad, mask)
    with pytest.raises(DatasetError, match=rf"{bad}: mask values \[50\]"):
        preflight(_ev17_test(root, "parts"))
    (label / "BinarySegmentation").rename(label / "Binary")
    with pytest.raises(DatasetError, match="no BinarySegmentation labels for task binary"):
        _ev17_test(root, "binary")
    # A second copy of a video's frames is ambiguous.
    copy = tmp_path / "test/extra/instrument_dataset_2/left_frames"
    copy.mkdir(parents=True)
    with pytest.raises(DatasetError, match="instrument_dataset_2/left_frames found twice"):
        _ev17_test(root, "types")
    with pytest.raises(DatasetError, match="split 'test' is for endovis2017 only"):
        build_dataset("generic", root=root, task="binary", split="test")


def test_endovis2015_snaps_noisy_levels(tmp_path: Path):
    assert snap_levels(np.array([0, 34, 36, 70, 114, 116, 160, 255], np.uint8)).tolist() == [
        0, 0, 70, 70, 70, 160, 160, 160,
    ]  # fmt: skip
    root = make_endovis2015(tmp_path, frames=3)
    binary = build_dataset("endovis2015", root=root, task="binary")
    parts = build_dataset("endovis2015", root=root, task="parts", videos=[1])
    assert len(binary) == 3 and binary.video_of(2) == "Dataset1"
    assert binary.name_of(2) == "frame0002.png"
    expected = np.zeros((48, 64), np.uint8)
    expected[SHAFT_BLOCK] = SHAFT
    expected[MANIPULATOR_BLOCK] = CLASPER
    for i in range(3):
        image, mask = parts[i]
        assert image.shape == (48, 64, 3)
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(binary[i][1], expected > 0)
    with pytest.raises(DatasetError, match="types"):
        build_dataset("endovis2015", root=root, task="types")


def test_endovis2015_left_right_masks_combined(tmp_path: Path):
    root = make_endovis2015(tmp_path, left_right=True, frames=2, codec="mpeg4")
    ds = build_dataset("endovis2015", root=root, task="parts", step=2)
    assert len(ds) == 1
    _, mask = ds[0]
    assert (mask[SHAFT_BLOCK] == SHAFT).mean() > 0.99
    assert (mask[MANIPULATOR_BLOCK] == CLASPER).mean() > 0.99
    assert (mask == 0).sum() > 0.99 * (mask.size - 16 * 24 * 2)


def test_generic_class_map(tmp_path: Path):
    root = make_generic(tmp_path)
    ds = build_dataset("generic", root=root, task="parts", class_map={0: 0, 100: "shaft", 200: 3})
    assert len(ds) == 4 and ds.video_of(3) == "vid_b" and ds.name_of(3) == "001.png"
    image, mask = ds[0]
    assert image.shape == (12, 16, 3)
    assert (mask[0, 0], mask[0, 15], mask[11, 0], mask[11, 15]) == (0, SHAFT, CLASPER, 255)
    only_b = build_dataset(
        "generic", root=root, task="parts", videos=["vid_b"], class_map={0: 0, 100: 1, 200: 2}
    )
    assert len(only_b) == 2
    val = build_dataset(
        "generic",
        root=root,
        task="binary",
        split="train",
        val_videos=["vid_a"],
        class_map={0: 0, 100: 1, 200: 1},
    )
    assert {val.video_of(i) for i in range(len(val))} == {"vid_b"}
    # validation videos named and no split: the validation videos, never the training ones
    held_out = build_dataset("generic", root=root, task="binary", val_videos=["vid_a"],
                             class_map={0: 0, 100: 1, 200: 1})  # fmt: skip
    assert {held_out.video_of(i) for i in range(len(held_out))} == {"vid_a"}
    preflight(ds)


def test_preflight_accepts_good_sets(ev17: Path, tmp_path: Path):
    preflight(_ev17(ev17, "types"))
    preflight(build_dataset("endovis2015", root=make_endovis2015(tmp_path / "e15"), task="binary"))


def test_preflight_missing_mask(ev17: Path):
    missing = ev17 / "instrument_dataset_2/ground_truth/Other_labels/frame001.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"{missing}: mask not found"):
        preflight(_ev17(ev17, "binary"))


def test_preflight_values_outside_the_map(ev17: Path, tmp_path: Path):
    bad = ev17 / "instrument_dataset_1/ground_truth/Left_Prograsp_Forceps_labels/frame001.png"
    mask = cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE)
    mask[5, 5] = 15
    write_png(bad, mask)
    with pytest.raises(DatasetError, match=rf"{bad}: mask values \[15\]"):
        preflight(_ev17(ev17, "parts"))
    root = make_generic(tmp_path / "g", values=(0, 100, 200, 7))
    ds = build_dataset("generic", root=root, task="parts", class_map={0: 0, 100: 1, 200: 2})
    with pytest.raises(DatasetError, match=r"vid_a/000.png: mask values \[7\]"):
        preflight(ds)


def test_preflight_size_mismatch(ev17: Path, tmp_path: Path):
    bad = ev17 / "instrument_dataset_2/ground_truth/Maryland_Bipolar_Forceps_labels/frame000.png"
    write_png(bad, np.zeros((20, 30), np.uint8))
    with pytest.raises(DatasetError, match=f"{bad}: mask is 30×20, image is 32×20"):
        preflight(_ev17(ev17, "binary"))
    root = make_generic(tmp_path / "g")
    bad = root / "masks/vid_b/001.png"
    write_png(bad, np.zeros((12, 15), np.uint8))
    ds = build_dataset("generic", root=root, task="parts", class_map={0: 0, 100: 1, 200: 2})
    with pytest.raises(DatasetError, match=f"{bad}: mask is 15×12"):
        preflight(ds)


def test_preflight_empty_split_and_unknown_names(tmp_path: Path):
    root = make_generic(tmp_path)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DatasetError, match=f"{empty}: no items"):
        preflight(build_dataset("generic", root=empty, task="binary"))
    with pytest.raises(DatasetError, match="unknown class 'jaw'"):
        build_dataset("generic", root=root, task="parts", class_map={0: 0, 100: "jaw"})
    with pytest.raises(DatasetError, match="unknown task 'tools'"):
        build_dataset("generic", root=root, task="tools")
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        build_dataset("cityscapes", root=root, task="binary")
    with pytest.raises(DatasetError, match="no images of videos"):
        build_dataset("generic", root=root, task="binary", videos=["vid_c"])
    with pytest.raises(DatasetError, match="dataset folder not found"):
        build_dataset("endovis2017", root=tmp_path / "nope", task="binary")


def test_synthetic_clips(tmp_path: Path):
    synthetic = pytest.importorskip("surgseg.synthetic")
    for seed in (1, 2):
        synthetic.write_clip(tmp_path / f"clip{seed}", num_frames=3, width=64, height=48, seed=seed)
    ds = build_dataset("synthetic", root=tmp_path, task="parts")
    assert len(ds) == 6 and ds.video_of(0) == "clip1" and ds.video_of(5) == "clip2"
    clip = synthetic.load_clip(tmp_path / "clip2")
    image, mask = ds[4]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, clip.mask("parts", 1))
    preflight(ds)
    one = build_dataset("synthetic", root=tmp_path / "clip1", task="binary")
    assert len(one) == 3 and one.video_of(0) == "clip1"
    with pytest.raises(DatasetError, match="clip3"):
        build_dataset("synthetic", root=tmp_path, task="binary", videos=["clip3"])
