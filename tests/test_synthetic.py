"""Synthetic surgery generator: determinism, exact ground truth, clip files (checked with PyAV
and ffprobe)."""

from __future__ import annotations

import json
import subprocess

import av
import cv2
import numpy as np
import pytest

from surgseg.errors import ConfigError, DatasetError
from surgseg.synthetic import SyntheticSurgery, load_clip, write_clip
from surgseg.tasks import CLASPER, SHAFT

SIZE = {"width": 320, "height": 256}


def _fov_mask(surgery: SyntheticSurgery) -> np.ndarray:
    cx, cy, radius = surgery.fov
    y, x = np.mgrid[0 : surgery.height, 0 : surgery.width]
    return np.hypot(x - cx, y - cy) <= radius


def test_render_is_deterministic_and_random_access():
    a = SyntheticSurgery(seed=3, **SIZE)
    b = SyntheticSurgery(seed=3, **SIZE)
    for _ in range(3):
        a.render(0)  # rendering other frames first must not change frame 7
    fa, fb = a.render(7), b.render(7)
    for name in ("image", "parts", "types", "instances"):
        assert np.array_equal(getattr(fa, name), getattr(fb, name)), name
    assert fa.instruments == fb.instruments
    other = SyntheticSurgery(seed=4, **SIZE).render(7)
    assert not np.array_equal(fa.image, other.image)
    assert not np.array_equal(fa.image, a.render(8).image)


def test_masks_are_consistent_and_inside_the_view():
    for seed in range(4):
        surgery = SyntheticSurgery(seed=seed, **SIZE)
        outside = ~_fov_mask(surgery)
        for index in (0, 17):
            frame = surgery.render(index)
            assert frame.image.shape == (256, 320, 3) and frame.image.dtype == np.uint8
            assert np.array_equal(frame.types > 0, frame.parts > 0)
            assert np.array_equal(frame.instances > 0, frame.parts > 0)
            assert not frame.parts[outside].any() and not frame.types[outside].any()
            assert not frame.image[outside].any()  # black outside the circle
            assert set(np.unique(frame.parts)) <= {0, 1, 2, 3}
            for inst in frame.instruments:
                pixels = frame.instances == inst["id"] + 1
                assert set(np.unique(frame.types[pixels])) <= {inst["type"]}
                assert inst["visible_area"] == pixels.sum()
                assert inst["visible"] == (inst["visible_area"] > 0)
                assert inst["area"] >= inst["visible_area"]


def test_instrument_count_and_types():
    counts = {
        len(SyntheticSurgery(seed=s, width=64, height=64).instrument_types) for s in range(20)
    }
    assert counts == {1, 2, 3}
    for seed in range(5):
        types = SyntheticSurgery(seed=seed, num_instruments=3, width=64, height=64).instrument_types
        assert len(set(types)) == 3 and all(1 <= t <= 7 for t in types)
    with pytest.raises(ConfigError):
        SyntheticSurgery(num_instruments=4)
    with pytest.raises(ConfigError):
        SyntheticSurgery(width=16)


def test_tip_axis_and_entry_match_the_masks():
    checked = 0
    for seed in range(6):
        surgery = SyntheticSurgery(seed=seed, **SIZE)
        cx, cy, radius = surgery.fov
        for index in (0, 31, 77):
            frame = surgery.render(index)
            for inst in frame.instruments:
                tip, entry, axis = (np.array(inst[k]) for k in ("tip", "entry", "axis"))
                assert abs(np.linalg.norm(axis) - 1.0) < 1e-9
                assert abs(np.hypot(entry[0] - cx, entry[1] - cy) - radius) < 1.0
                inward = entry + 5.0 * axis  # the axis points into the view
                assert np.hypot(inward[0] - cx, inward[1] - cy) < radius
                if inst["visible_area"] != inst["area"]:
                    continue  # occluded: its far end may be hidden
                ys, xs = np.nonzero(frame.instances == inst["id"] + 1)
                points = np.stack([xs, ys], axis=1).astype(float)
                clasper = points[frame.parts[ys, xs] == CLASPER]
                assert np.linalg.norm(clasper - tip, axis=1).min() <= 1.5
                farthest = np.linalg.norm(points - entry, axis=1).max()
                assert abs(farthest - np.linalg.norm(tip - entry)) <= 1.5
                shaft = points[frame.parts[ys, xs] == SHAFT] - entry
                across = shaft @ np.array([-axis[1], axis[0]])  # distance from the centre line
                assert abs(across.mean()) < 1.5 and np.abs(across).max() < 0.13 * radius
                checked += 1
    assert checked >= 15


def test_instruments_move():
    surgery = SyntheticSurgery(seed=1, num_instruments=2, **SIZE)
    first, later = surgery.render(0).instruments, surgery.render(25).instruments
    for a, b in zip(first, later, strict=True):
        assert np.linalg.norm(np.subtract(a["tip"], b["tip"])) > 2.0
    assert not np.array_equal(surgery.render(0).parts, surgery.render(25).parts)


def test_instruments_occlude_each_other():
    """Some frame has overlapping instruments: the per-instrument areas add up to more than the
    union, and the occluded one keeps fewer pixels than it was drawn with."""
    found = False
    for seed in range(30):
        surgery = SyntheticSurgery(seed=seed, num_instruments=3, width=160, height=128)
        for index in range(0, 250, 25):
            frame = surgery.render(index)
            union = int(np.count_nonzero(frame.parts))
            if sum(inst["area"] for inst in frame.instruments) > union:
                hidden = [i for i in frame.instruments if i["visible_area"] < i["area"]]
                front = max(frame.instruments, key=lambda i: i["layer"])
                assert hidden and front["visible_area"] == front["area"]
                found = True
                break
        if found:
            break
    assert found


def test_mask_tasks():
    frame = SyntheticSurgery(seed=2, **SIZE).render(0)
    assert set(np.unique(frame.mask("binary"))) == {0, 1}
    assert frame.mask("parts") is frame.parts and frame.mask("types") is frame.types
    with pytest.raises(ConfigError):
        frame.mask("instances")


def test_write_and_load_clip(tmp_path):
    root = write_clip(tmp_path / "clip", num_frames=8, width=160, height=128, seed=5)
    clip = load_clip(root)
    surgery = SyntheticSurgery(seed=5, width=160, height=128)
    assert len(clip) == 8 and clip.meta["num_frames"] == 8 and clip.meta["seed"] == 5
    frames = [surgery.render(i) for i in range(8)]
    for i, frame in enumerate(frames):
        assert np.array_equal(clip.parts[i], frame.parts)
        assert np.array_equal(clip.mask("types", i), frame.types)
        assert np.array_equal(clip.mask("binary", i), frame.mask("binary"))
        assert clip.instruments[i] == frame.instruments
    records = [json.loads(line) for line in (root / "instruments.jsonl").read_text().splitlines()]
    assert [r["pts"] for r in records] == list(range(8))
    assert records[5]["time_s"] == pytest.approx(5 / 25)

    with av.open(str(clip.video)) as container:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert [time for time, _ in decoded] == pytest.approx([i / 25 for i in range(8)])
    for (_, image), frame in zip(decoded, frames, strict=True):
        assert image.shape == (128, 160, 3)
        assert np.abs(image.astype(int) - frame.image).mean() < 4.0

    probe = subprocess.run(
        ["/usr/bin/ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json",
         str(clip.video)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 160, 128)
    assert int(stream["nb_read_frames"]) == 8


def test_incomplete_clip_raises(tmp_path):
    root = write_clip(tmp_path / "clip", num_frames=2, width=64, height=64, seed=0)
    (root / "masks.npz").unlink()
    with pytest.raises(DatasetError, match="clip"):
        load_clip(root)
    (root / "clip.json").unlink()
    with pytest.raises(DatasetError, match=r"clip\.json missing") as err:
        load_clip(root)
    assert err.value.path == root
    with pytest.raises(ConfigError):
        write_clip(tmp_path / "odd", num_frames=1, width=65, height=64)


def test_crossings_make_instruments_cross_and_touch(tmp_path):
    """``crossings``: off (0), every clip is as before; on (1), each clip's first two
    instruments are aimed at one point and share a connected component in most frames (the
    default scenes almost never do)."""
    plain, off = SyntheticSurgery(seed=3, **SIZE), SyntheticSurgery(seed=3, crossings=0.0, **SIZE)
    for name in ("image", "parts", "instances"):
        assert np.array_equal(getattr(plain.render(40), name), getattr(off.render(40), name))
    assert not off.crossing

    def merged(frame) -> bool:
        n, comp = cv2.connectedComponents((frame.parts > 0).view(np.uint8), connectivity=8)
        return any(len(set(np.unique(frame.instances[comp == k])) - {0}) >= 2
                   for k in range(1, n))  # fmt: skip

    frames = {0.0: [], 1.0: []}
    for seed in range(6):
        for crossings in frames:
            surgery = SyntheticSurgery(seed=seed, crossings=crossings, **SIZE)
            frames[crossings] += [merged(surgery.render(i)) for i in range(0, 250, 25)]
            if crossings:
                assert surgery.crossing and len(surgery.instrument_types) >= 2
                assert surgery.render(7).instruments == surgery.render(7).instruments
    assert np.mean(frames[1.0]) >= 0.6 > 0.2 >= np.mean(frames[0.0])
    one = SyntheticSurgery(seed=0, num_instruments=1, crossings=1.0, **SIZE)
    assert not one.crossing and len(one.instrument_types) == 1  # nothing to cross
    with pytest.raises(ConfigError, match="crossings"):
        SyntheticSurgery(crossings=1.5)
    root = write_clip(tmp_path / "clip", num_frames=2, width=160, height=128, seed=5,
                      crossings=1.0)  # fmt: skip
    meta = load_clip(root).meta
    assert meta["crossings"] == 1.0 and meta["crossing"] is True


def test_still_instruments():
    """``still``: the instruments keep their pose of time 0; the scene around them moves."""
    surgery = SyntheticSurgery(seed=2, still=True, **SIZE)
    first, later = surgery.render(0), surgery.render(30)
    assert first.instruments == later.instruments
    assert np.array_equal(first.parts, later.parts)
    assert not np.array_equal(first.image, later.image)  # the tissue breathes
    assert first.instruments == SyntheticSurgery(seed=2, **SIZE).render(0).instruments
