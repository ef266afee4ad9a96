"""Touching and crossing instruments split into one instrument per entry
(``surgseg.instances``, through ``find_instruments``), on masks drawn here with known geometry
and on the synthetic generator's crossing scenes; and the far end read from a confidence map."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from surgseg.cues import FieldOfView, border_band_mask, find_instruments
from surgseg.instances import far_end, split_component
from surgseg.synthetic import SyntheticSurgery
from surgseg.tasks import CLASPER, SHAFT, WRIST

H, W = 512, 640
CENTRE, RADIUS = np.array([320.0, 256.0]), 240.0


def _unit(deg: float) -> np.ndarray:
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def _bar(mask: np.ndarray, start, end, width: float, value: int) -> None:
    start, end = np.asarray(start, float), np.asarray(end, float)
    d = (end - start) / np.linalg.norm(end - start)
    n = np.array([-d[1], d[0]]) * width / 2
    corners = np.array([start + n, end + n, end - n, start - n])
    cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], value, cv2.LINE_8, shift=4)


def _instrument(mask, entry_deg: float, angle: float, *, length: float, bend: float = 0.0,
                jaws: float = 0.0):  # fmt: skip
    """An instrument entering the circular view at ``entry_deg`` (polar angle about the
    centre), pointing along ``angle``: a 40 px shaft, a wrist bent by ``bend``, two 8 px jaws
    opened by ±``jaws``. Returns (entry, tip): the tip is the farther jaw end from the entry,
    or their midpoint for closed jaws."""
    entry = CENTRE + RADIUS * _unit(entry_deg)
    axis = _unit(angle)
    shaft_end = entry + length * axis
    _bar(mask, entry - 60 * axis, shaft_end, 40, SHAFT)
    wrist = _unit(angle + bend)
    hinge = shaft_end + 30 * wrist
    _bar(mask, shaft_end - 2 * wrist, hinge, 28, WRIST)
    ends = []
    for side in (-1, 1):
        jaw = _unit(angle + bend + side * jaws)
        ends.append(hinge + 35 * jaw)
        _bar(mask, hinge - 2 * jaw, ends[-1], 8, CLASPER)
    ends = np.array(ends)
    tip = ends.mean(axis=0) if not jaws else ends[np.argmax(np.linalg.norm(ends - entry, axis=1))]
    return entry, tip


def _view() -> np.ndarray:
    y, x = np.mgrid[:H, :W]
    return np.hypot(x - CENTRE[0], y - CENTRE[1]) <= RADIUS


# name: two instruments (entry_deg, angle, keywords), tip tolerance (px) for parts and binary
SCENES = {
    "shafts crossing": ([(180, 0, {"length": 330}), (270, 90, {"length": 300})], 2, 2),
    "bent wrists, crossing": (
        [(180, 0, {"length": 300, "bend": 30, "jaws": 20}),
         (270, 90, {"length": 280, "bend": -30, "jaws": 15})],
        2,
        2,
    ),
    "jaws on a shaft": ([(180, 0, {"length": 330}), (90, -90, {"length": 156})], 3, 10),
    "tips meeting": ([(150, -32.5, {"length": 160}), (210, 32.5, {"length": 160})], 3, 8),
    "head on, jaws overlapping": ([(180, 0, {"length": 178}), (0, 180, {"length": 178})], 6, 8),
    "side by side, converging": (
        [(174, -9, {"length": 170}), (186, 9, {"length": 170})], 2, None),
}


@pytest.mark.parametrize("task", ["parts", "binary"])
@pytest.mark.parametrize("scene", list(SCENES))
def test_touching_and_crossing_pairs_are_split(task, scene):
    """One connected component, two entries: two instruments, each with its own entry and
    tip (binary masks: looser, the parts labels carry most of the evidence)."""
    layers, parts_tolerance, binary_tolerance = SCENES[scene]
    view = _view()
    mask = np.zeros((H, W), np.uint8)
    truth = [_instrument(mask, entry, angle, **kw) for entry, angle, kw in layers]
    mask[~view] = 0
    if task == "binary":
        mask = (mask > 0).astype(np.uint8)
    assert cv2.connectedComponents((mask > 0).view(np.uint8))[0] == 2  # one component
    assert len(find_instruments(mask, task=task, view=view, split=False)) == 1
    found = find_instruments(mask, task=task, view=view)
    assert len(found) == 2
    tolerance = parts_tolerance if task == "parts" else binary_tolerance
    for entry, tip in truth:
        inst = min(found, key=lambda f: math.dist(f.entry, entry))
        assert math.dist(inst.entry, entry) <= 3.0
        assert inst.entry_on_border and inst.tip_in_view
        if tolerance is not None:
            assert math.dist(inst.tip, tip) <= tolerance, (scene, task)
    assert sum(inst.area_px for inst in found) == np.count_nonzero(mask)


@pytest.mark.parametrize("task", ["parts", "binary"])
def test_one_instrument_is_not_split(task):
    """Two stretches on the border that are one instrument: a shaft crossing the view from
    border to border, and jaws reaching the far border. Nothing is split; a component with
    one stretch returns at once."""
    view = _view()
    band = border_band_mask(view, (H, W), 3.0)
    for layers in ([(180, 0, {"length": 600})],  # shaft through the whole view
                   [(180, 0, {"length": 420})],  # its closed jaws reach the far border
                   [(180, 0, {"length": 410, "jaws": 20})],
                   [(200, 10, {"length": 150})]):  # fmt: skip
        mask = np.zeros((H, W), np.uint8)
        for entry, angle, kw in layers:
            _instrument(mask, entry, angle, **kw)
        mask[~view] = 0
        if task == "binary":
            mask = (mask > 0).astype(np.uint8)
        labels = mask if task == "parts" else None
        assert split_component(mask > 0, band, labels) is None
        [inst] = find_instruments(mask, task=task, view=view)
        assert inst.entry_on_border


def test_pieces_cover_the_component_once():
    view = _view()
    band = border_band_mask(view, (H, W), 3.0)
    mask = np.zeros((H, W), np.uint8)
    for entry, angle, kw in SCENES["bent wrists, crossing"][0]:
        _instrument(mask, entry, angle, **kw)
    mask[~view] = 0
    inside = mask > 0
    for labels in (mask, None):
        pieces = split_component(inside, band, labels, min_area=50)
        assert len(pieces) == 2
        count = np.zeros((H, W), np.int64)
        for piece, (x, y) in pieces:
            count[y : y + piece.shape[0], x : x + piece.shape[1]] += piece
            assert piece[0].any() and piece[-1].any() and piece[:, 0].any() and piece[:, -1].any()
        np.testing.assert_array_equal(count, inside.astype(np.int64))


def _merged_pairs(task: str, seeds, frames):
    """(found instruments, true instruments) of each component holding two or more true
    instruments in the generator's crossing scenes."""
    for seed in seeds:
        surgery = SyntheticSurgery(seed=seed, crossings=1.0)
        view = FieldOfView.from_image(surgery.render(0).image)
        for index in frames:
            frame = surgery.render(index)
            n, comp = cv2.connectedComponents((frame.parts > 0).view(np.uint8), connectivity=8)
            found = find_instruments(frame.mask(task), task=task, view=view)
            for k in range(1, n):
                ids = set(np.unique(frame.instances[comp == k])) - {0}
                if len(ids) < 2:
                    continue
                truth = [t for t in frame.instruments if t["id"] + 1 in ids]
                mine = [f for f in found if comp[round(f.entry[1]), round(f.entry[0])] == k
                        or (comp == k)[max(round(f.tip[1]) - 2, 0) : round(f.tip[1]) + 3,
                                       max(round(f.tip[0]) - 2, 0) : round(f.tip[0]) + 3].any()]
                yield mine, truth


def test_synthetic_crossings_are_found_as_two_with_their_tips():
    """The generator's crossing scenes (parts): at least 90 % of the merged pairs found as
    two, and their median tip error at most 5 px (scripts/bench_crossings.py measures more)."""
    pairs = list(_merged_pairs("parts", seeds=(100, 101, 102), frames=range(0, 250, 25)))
    assert len(pairs) >= 15
    as_two = [len(found) == len(truth) for found, truth in pairs]
    assert np.mean(as_two) >= 0.9
    errors = []
    for found, truth in pairs:
        for t in truth:
            errors.append(min(math.dist(f.tip, t["tip"]) for f in found))
    assert np.median(errors) <= 5.0


def test_the_split_leaves_single_instruments_alone():
    """The default scenes' cues are the same with and without splitting."""
    for seed in (100, 101):
        surgery = SyntheticSurgery(seed=seed, width=480, height=270)
        view = FieldOfView.from_image(surgery.render(0).image)
        for index in (0, 60, 120):
            mask = surgery.render(index).parts
            split = find_instruments(mask, task="parts", view=view)
            plain = find_instruments(mask, task="parts", view=view, split=False)
            assert [i.to_dict() for i in split] == [i.to_dict() for i in plain]


def test_far_end_with_zero_tip_band_is_the_farthest_pixel():
    """tip_band = 0: the far end is the farthest of the grown pixels, never NaN (it was for
    about one entry in five, when sqrt(d²)² rounded above d² and no pixel passed the band)."""
    labels = np.zeros((100, 300), np.uint8)
    labels[40:60, 0:200] = CLASPER
    confidence = np.full(labels.shape, 250, np.uint8)
    confidence[40:60, 200:210] = 153  # the instrument at 0.4, beyond the mask
    inside, tip = labels[40:60, 0:200] > 0, np.array([198.5, 49.5])
    ys, xs = np.mgrid[40:60, 0:210]
    near = (xs - tip[0]) ** 2 + (ys - tip[1]) ** 2 <= 12.0**2  # the grown pixels near the tip
    for step in range(25):
        entry = np.array([0.3 * step, 37.0 + 0.55 * step])
        d2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2
        farthest = near & (d2 == d2[near].max())
        found = far_end(inside, (0, 40), entry, tip, labels, confidence, probability=0.3,
                        tip_band=0.0, reach=12.0)  # fmt: skip
        assert found == pytest.approx([xs[farthest].mean(), ys[farthest].mean()], abs=1e-9)


def test_far_end_from_confidence():
    """A mask that stops at x = 199 where the model still gives the instrument 40 %: with a
    probability threshold of 0.3 the far end moves to x ≈ 209 (within the 12 px reach); at
    0.5 nothing changes; another instrument's pixels are never taken. ``find_instruments``
    reads its tips so by default (``tip_probability=0.2``) when given a confidence map."""
    labels = np.zeros((100, 300), np.uint8)
    labels[40:60, 0:200] = CLASPER
    confidence = np.full(labels.shape, 250, np.uint8)  # background, sure
    confidence[40:60, 200:210] = 153  # background at 0.6: the instrument at 0.4
    inside = labels[40:60, 0:200] > 0
    entry, tip = np.array([0.0, 49.5]), np.array([198.5, 49.5])
    options = {"tip_band": 2.0, "reach": 12.0}
    found = far_end(inside, (0, 40), entry, tip, labels, confidence, probability=0.3, **options)
    assert found[0] == pytest.approx(208.5, abs=1.0) and found[1] == pytest.approx(49.5, abs=0.5)
    assert far_end(inside, (0, 40), entry, tip, labels, confidence, probability=0.5,
                   **options) is None  # fmt: skip
    as_float = confidence.astype(np.float32) / 255
    again = far_end(inside, (0, 40), entry, tip, labels, as_float, probability=0.3, **options)
    assert again == pytest.approx(found)
    confidence[40:60, 210:240] = 153  # the halo goes on, but only `reach` px are read
    capped = far_end(inside, (0, 40), entry, tip, labels, confidence, probability=0.3, **options)
    assert capped[0] == pytest.approx(209.5, abs=1.0)
    labels[40:60, 200:240] = SHAFT  # another instrument there: not background, not taken
    assert far_end(inside, (0, 40), entry, tip, labels, confidence, probability=0.3,
                   **options) is None  # fmt: skip

    labels[40:60, 200:240] = 0
    [plain] = find_instruments(labels, task="parts", confidence=confidence, tip_probability=None)
    [read] = find_instruments(labels, task="parts", confidence=confidence)
    assert plain.tip[0] == pytest.approx(198.5, abs=1.0) and read.tip[0] > plain.tip[0] + 8
    assert (read.entry, read.axis, read.area_px) == (plain.entry, plain.axis, plain.area_px)
    [no_map] = find_instruments(labels, task="parts")
    assert no_map.tip == plain.tip  # without a confidence map the tip is the mask's
