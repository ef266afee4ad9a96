"""Pose cues from masks drawn here with OpenCV, whose tip, axis and entry are known exactly."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.cues import (
    FieldOfView,
    border_band_mask,
    cue_errors,
    cues_from_mask,
    estimate_view,
    find_instruments,
    match_to_ground_truth,
    summarize_errors,
)
from surgseg.synthetic import SyntheticSurgery
from surgseg.tasks import CLASPER, SHAFT, WRIST

H, W = 512, 640
CENTRE, RADIUS = np.array([320.0, 256.0]), 240.0


def _unit(deg: float) -> np.ndarray:
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def _bar(mask: np.ndarray, start, end, width: float, value: int) -> None:
    """Filled rectangle of ``width`` from ``start`` to ``end`` (sub-pixel corners)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    d = (end - start) / np.linalg.norm(end - start)
    n = np.array([-d[1], d[0]]) * width / 2
    corners = np.array([start + n, end + n, end - n, start - n])
    cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], value, cv2.LINE_8, shift=4)


def _circle_view() -> np.ndarray:
    y, x = np.mgrid[:H, :W]
    return np.hypot(x - CENTRE[0], y - CENTRE[1]) <= RADIUS


def _instrument(mask, entry, angle_deg, *, length=150, width=40, bend=0.0, jaws=0.0):
    """Shaft from outside ``entry`` inwards along ``angle_deg`` (labels SHAFT), a wrist bent by
    ``bend`` degrees (WRIST) and two jaws opened by ±``jaws`` degrees (CLASPER) that end in
    points. Returns the two jaw end points and the shaft axis."""
    axis, entry = _unit(angle_deg), np.asarray(entry, float)
    shaft_end = entry + length * axis
    _bar(mask, entry - 60 * axis, shaft_end, width, SHAFT)
    wrist_dir = _unit(angle_deg + bend)
    hinge = shaft_end + 30 * wrist_dir
    _bar(mask, shaft_end - 2 * wrist_dir, hinge, 0.7 * width, WRIST)
    ends = []
    for side in (-1, 1):
        jaw_dir = _unit(angle_deg + bend + side * jaws)
        end = hinge + 35 * jaw_dir
        tri = np.array([hinge + side * 6 * np.array([-jaw_dir[1], jaw_dir[0]]), end, hinge])
        cv2.fillPoly(mask, [np.round(tri * 16).astype(np.int32)], CLASPER, cv2.LINE_8, shift=4)
        _bar(mask, hinge - 2 * jaw_dir, end, 8, CLASPER)
        ends.append(end)
    return np.array(ends), axis


def _on_circle(deg: float) -> np.ndarray:
    return CENTRE + RADIUS * _unit(deg)


def _axis_error(a, b) -> float:
    return cue_errors([({"tip": [0, 0], "axis": a}, {"tip": [0, 0], "axis": b})])["axis_deg"][0]


@pytest.mark.parametrize("task", ["parts", "binary"])
@pytest.mark.parametrize("where", [0.0, 100.0, 215.0, 300.0])
def test_straight_instrument_in_circular_view(task, where):
    view = _circle_view()
    mask = np.zeros((H, W), np.uint8)
    entry = _on_circle(where)
    ends, axis = _instrument(mask, entry, where + 180 + 12)
    tip = ends.mean(axis=0)
    mask[~view] = 0
    if task == "binary":
        mask = (mask > 0).astype(np.uint8)
    [inst] = find_instruments(mask, task=task, view=view)
    assert math.dist(inst.tip, tip) <= 1.5
    assert _axis_error(inst.axis, axis) <= 1.0
    assert inst.entry_on_border
    assert math.dist(inst.entry, entry) <= 4.0
    assert np.dot(inst.axis, axis) > 0
    assert inst.angle_deg == pytest.approx(math.degrees(math.atan2(axis[1], axis[0])), abs=1.0)
    if task == "parts":
        assert set(inst.parts) == {"shaft", "wrist", "clasper"}
        assert math.dist(inst.parts["wrist"], entry + 165 * axis) <= 2.0


def test_bent_wrist_and_open_jaws():
    """The axis follows the shaft, not the 30° wrist; the tip is the jaw end farthest from the
    entry, or between both when they are about equally far (weighted by how many pixels of
    each lie in the tip band, so only roughly the midpoint: 30 px apart here)."""
    view = _circle_view()
    for bend, expected, tolerance in ((30.0, "far end", 1.5), (0.0, "midpoint", 5.0)):
        parts = np.zeros((H, W), np.uint8)
        entry = _on_circle(160)
        ends, axis = _instrument(parts, entry, 160 + 180 - 20, length=160, bend=bend, jaws=25)
        parts[~view] = 0
        far = np.linalg.norm(ends - entry, axis=1)
        tip = ends[np.argmax(far)] if expected == "far end" else ends.mean(axis=0)
        for task, mask in (("parts", parts), ("binary", (parts > 0).astype(np.uint8))):
            [inst] = find_instruments(mask, task=task, view=view)
            assert _axis_error(inst.axis, axis) <= 1.0, (task, bend)
            assert math.dist(inst.tip, tip) <= tolerance, (task, bend)


def test_image_border_counts_as_boundary_and_orientation_sign():
    mask = np.zeros((H, W), np.uint8)
    _bar(mask, (-10, 200), (300, 260), 30, 1)  # enters through the left edge, points right
    [inst] = find_instruments(mask)
    assert inst.entry_on_border and inst.entry[0] < 2.0
    assert inst.axis[0] > 0 and inst.tip[0] > 295
    flipped = np.ascontiguousarray(mask[:, ::-1])  # enters through the right edge
    [inst] = find_instruments(flipped)
    assert inst.entry[0] > W - 3 and inst.axis[0] < 0
    assert abs(abs(inst.angle_deg) - 180) < 15


def test_free_floating_instrument():
    """Not touching the boundary: the entry is the axis end away from the jaws."""
    mask = np.zeros((H, W), np.uint8)
    _bar(mask, (200, 300), (400, 300), 30, SHAFT)
    _bar(mask, (400, 300), (440, 300), 12, CLASPER)
    [inst] = find_instruments(mask, task="parts")
    assert not inst.entry_on_border
    assert inst.entry[0] == pytest.approx(200, abs=1.5)
    assert inst.tip[0] == pytest.approx(440, abs=1.5)
    assert inst.axis[0] == pytest.approx(1.0, abs=1e-3)


def test_two_instruments_and_min_area():
    mask = np.zeros((H, W), np.uint8)
    _bar(mask, (-5, 100), (250, 150), 30, 1)
    _bar(mask, (W + 5, 400), (380, 330), 26, 1)
    cv2.circle(mask, (320, 40), 3, 1, -1)  # 29 px speck
    found = find_instruments(mask)
    assert len(found) == 2
    assert found[0].area_px >= found[1].area_px
    assert len(find_instruments(mask, min_area=10)) == 3
    assert find_instruments(mask, min_area=10**6) == []


def test_types_separates_touching_instruments():
    mask = np.zeros((H, W), np.uint8)
    _bar(mask, (-5, 200), (300, 200), 30, 3)
    _bar(mask, (300, -5), (300, 190), 30, 6)  # touches the first one
    assert len(find_instruments(mask, task="binary", split=False)) == 1  # one component
    # split at its two entries (surgseg.instances; tests/test_instances.py)
    assert sorted(inst.entry for inst in find_instruments(mask, task="binary")) == [
        pytest.approx((1, 200)), pytest.approx((300, 1))]  # fmt: skip
    found = find_instruments(mask, task="types")
    assert sorted(inst.label for inst in found) == [3, 6]
    for inst in found:
        rows, cols = np.nonzero(mask == inst.label)
        assert inst.area_px == len(rows)
        assert inst.centroid == pytest.approx((cols.mean(), rows.mean()))


def test_measurements_agree_with_numpy():
    rng = np.random.default_rng(0)
    mask = np.zeros((H, W), np.uint8)
    _bar(mask, (50, 480), (260, 330), 24, SHAFT)
    _bar(mask, (260, 330), (300, 300), 14, WRIST)
    confidence = rng.random((H, W)).astype(np.float32)
    [inst] = find_instruments(mask, task="parts", confidence=confidence)
    rows, cols = np.nonzero(mask)
    assert inst.area_px == len(rows)
    assert inst.bbox == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
    assert inst.centroid == pytest.approx((cols.mean(), rows.mean()))
    assert inst.confidence == pytest.approx(float(confidence[mask > 0].mean()), rel=1e-5)
    sr, sc = np.nonzero(mask == SHAFT)
    assert inst.parts["shaft"] == pytest.approx((sc.mean(), sr.mean()))
    assert "clasper" not in inst.parts
    assert find_instruments(mask, task="parts")[0].confidence is None


def test_to_dict_is_json_ready():
    mask = np.zeros((H, W), np.uint8)
    _instrument(mask, (0, 250), 10)
    conf = np.full((H, W), 0.75, np.float32)
    [record] = cues_from_mask(mask, task="parts", confidence=conf, min_area=10)
    assert json.loads(json.dumps(record)) == record
    assert list(record) == [
        "id", "label", "area_px", "bbox", "centroid", "axis", "angle_deg", "entry",
        "entry_on_border", "tip", "tip_in_view", "parts", "confidence",
    ]  # fmt: skip
    assert record["confidence"] == 0.75 and record["id"] is None
    assert record["tip"] == [round(v, 2) for v in record["tip"]]
    assert -180 < record["angle_deg"] <= 180


def test_ignore_label_is_background_and_bad_inputs():
    mask = np.full((64, 80), 255, np.uint8)
    assert find_instruments(mask) == []
    with pytest.raises(ValueError, match="shape"):
        find_instruments(np.zeros((64, 80), np.uint8), view=np.ones((64, 81), bool))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        find_instruments(np.full((4, 4), 300))
    with pytest.raises(Exception, match="unknown task"):
        find_instruments(mask, task="nope")


def _distance_to_outside(view: np.ndarray) -> np.ndarray:
    """d(p) of the README: distance to the nearest pixel outside the view padded by one."""
    padded = cv2.copyMakeBorder(view.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0, 3.0, 4.5])
@pytest.mark.parametrize("whole_frame", [False, True])
def test_border_band_matches_distance_transform(width, whole_frame):
    rng = np.random.default_rng(1)
    view = _circle_view()
    view[rng.integers(0, H, 40), rng.integers(0, W, 40)] = False
    if whole_frame:
        view[:] = True
    expected = _distance_to_outside(view) <= width
    np.testing.assert_array_equal(border_band_mask(view, view.shape, width), expected)
    if whole_frame:
        np.testing.assert_array_equal(border_band_mask(None, view.shape, width), expected)


def test_estimate_view():
    view = _circle_view()
    rng = np.random.default_rng(2)
    image = np.where(view[..., None], rng.integers(60, 250, (H, W, 3)), 0).astype(np.uint8)
    image[200:260, 100:200] = 5  # a dark patch inside the view is still view
    image[10, 10] = 255  # a bright speck outside is not
    estimated = estimate_view(image)
    assert (estimated & view).sum() / (estimated | view).sum() > 0.99
    assert estimated[230, 150] and not estimated[10, 10]
    assert estimate_view(np.full((H, W, 3), 128, np.uint8)).all()  # no dark surround
    assert estimate_view(np.zeros((H, W, 3), np.uint8)).all()  # nothing bright


def test_matching_and_error_summary():
    gt = [
        {"tip": [100, 100], "axis": [1, 0], "entry": [0, 100]},
        {"tip": [300, 300], "axis": [0, 1], "entry": [300, 0]},
        {"tip": [500, 50], "axis": [-1, 0], "entry": [639, 50]},
    ]
    pred = [
        {"tip": [303, 304], "axis": [0, -1]},  # 5 px, pointing the wrong way: 180°
        {"tip": [100, 101], "axis": [math.cos(0.1), math.sin(0.1)]},  # 1 px, 5.73°
        {"tip": [400, 400], "axis": [1, 0]},  # nothing within 50 px
    ]
    pairs = match_to_ground_truth(pred, gt)
    assert [(p["tip"], g["tip"]) for p, g in pairs] == [
        ([303, 304], [300, 300]),
        ([100, 101], [100, 100]),
    ]
    errors = cue_errors(pairs)
    assert errors["tip_px"] == pytest.approx([5.0, 1.0])
    assert errors["axis_deg"] == pytest.approx([180.0, math.degrees(0.1)])
    assert match_to_ground_truth(pred, gt, max_distance=4.0) == [(pred[1], gt[0])]
    assert match_to_ground_truth([], gt) == []

    tips = [1.0, 2.0, 3.0, 4.0, 10.0]
    axes = [0.5, 0.1, 0.2, 0.4, 0.3]
    summary = summarize_errors(tips, axes)
    assert summary == {
        "count": 5,
        "tip_px_median": 3.0,
        "tip_px_p90": pytest.approx(7.6),  # 4 + 0.6·(10 − 4)
        "axis_deg_median": 0.3,
        "axis_deg_p90": pytest.approx(0.46),
    }
    assert summary["tip_px_p90"] == pytest.approx(np.percentile(tips, 90))
    assert summarize_errors([], [])["tip_px_median"] is None


def test_cue_config_composes_and_drives_the_functions():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="infer", overrides=["input=x", "checkpoint=x", "output_dir=x"])
    c = cfg.cues
    mask = np.zeros((H, W), np.uint8)
    _instrument(mask, (0, 250), 10)
    found = find_instruments(
        mask, task="parts", min_area=c.min_area, border_band=c.border_band, tip_band=c.tip_band
    )
    assert len(found) == 1 and c.view in ("auto", "full")
    assert c.track_max_distance > 0 and c.track_max_missed >= 0


def _reference(mask, task, view, confidence, *, min_area=50, border_band=3.0, tip_band=2.0,
               axis_span=1.5) -> list[dict]:  # fmt: skip
    """The README's definitions computed plainly on the whole frame: pixel lists, a distance
    transform for the band, full-frame labelling, an eigenvector for the least-squares line."""
    view = np.ones(mask.shape, bool) if view is None else view
    band = _distance_to_outside(view) <= border_band
    foreground = ((mask > 0) & (mask != 255)).astype(np.uint8)
    pieces = []
    count, components = cv2.connectedComponents(foreground, connectivity=8)
    for k in range(1, count):
        component = components == k
        values = np.unique(mask[component]) if task == "types" else [None]
        for value in values:
            piece = component if value is None else component & (mask == value)
            n, labels = cv2.connectedComponents(piece.astype(np.uint8), connectivity=8)
            pieces += [(labels == j, 1 if value is None else int(value)) for j in range(1, n)]
    found = []
    for piece, label in pieces:
        ys, xs = np.nonzero(piece)
        if len(xs) < min_area:
            continue
        values = mask[ys, xs]
        parts = {}
        if task == "parts":
            for name, value in (("shaft", SHAFT), ("wrist", WRIST), ("clasper", CLASPER)):
                if (values == value).any():
                    parts[name] = (xs[values == value].mean(), ys[values == value].mean())
        shaft_labelled = task == "parts" and np.count_nonzero(values == SHAFT) >= 20
        axis_px = values == SHAFT if shaft_labelled else np.ones(len(xs), bool)
        contact = np.zeros(mask.shape, np.uint8)
        contact[ys, xs] = band[ys, xs]
        n, stretches, stats, _ = cv2.connectedComponentsWithStats(contact, connectivity=8)
        on_border = n > 1
        if on_border:
            sy, sx = np.nonzero(stretches == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            entry = np.array([sx.sum() / len(sx), sy.sum() / len(sy)])
            r2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2
            rho2 = ((sx - entry[0]) ** 2 + (sy - entry[1]) ** 2).max()
            kept = axis_px & (r2 > rho2)
            if not shaft_labelled:
                kept &= r2 <= rho2 * (1 + 2 * axis_span) ** 2
            if np.count_nonzero(kept) >= 20:
                axis_px = kept
        points = np.column_stack([xs[axis_px], ys[axis_px]]).astype(np.float64)
        centre = points.mean(axis=0)
        axis = np.linalg.eigh(np.cov(points.T, bias=True))[1][:, -1]
        if not on_border:
            t = (np.column_stack([xs, ys]) - centre) @ axis
            ends = centre + np.outer([t.min(), t.max()], axis)
            vy, vx = np.nonzero(view)
            away = parts.get("clasper", parts.get("wrist", (vx.mean(), vy.mean())))
            entry = ends[np.argmax(np.linalg.norm(ends - away, axis=1))]
            r2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2
        far = r2 >= min(max(math.sqrt(r2.max()) - tip_band, 0.0) ** 2, r2.max())
        tip = np.array([xs[far].mean(), ys[far].mean()])
        tip_in_view = not band[ys[far], xs[far]].any()
        axis = axis if axis @ (tip - entry) >= 0 else -axis
        scale = 1 / 255 if confidence is not None and confidence.dtype == np.uint8 else 1.0
        found.append({
            "label": label, "area_px": len(xs),
            "bbox": (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1),
            "centroid": (xs.mean(), ys.mean()), "axis": tuple(axis), "entry": tuple(entry),
            "entry_on_border": on_border, "tip": tuple(tip), "tip_in_view": tip_in_view,
            "parts": parts,
            "confidence": None if confidence is None
            else confidence[ys, xs].mean(dtype=np.float64) * scale,
        })  # fmt: skip
    return sorted(found, key=lambda inst: -inst["area_px"])


def _assert_same(found, expected) -> None:
    assert len(found) == len(expected) > 0
    for inst, ref in zip(found, expected, strict=True):
        assert (inst.label, inst.area_px, inst.bbox, inst.entry_on_border, inst.tip_in_view) == (
            ref["label"], ref["area_px"], ref["bbox"], ref["entry_on_border"],
            ref["tip_in_view"])  # fmt: skip
        for name in ("centroid", "axis", "entry", "tip"):
            assert getattr(inst, name) == pytest.approx(ref[name], abs=1e-6), name
        assert inst.parts.keys() == ref["parts"].keys()
        for name, centre in ref["parts"].items():
            assert inst.parts[name] == pytest.approx(centre, abs=1e-9)
        if ref["confidence"] is None:
            assert inst.confidence is None
        else:
            assert inst.confidence == pytest.approx(ref["confidence"], abs=1e-9)


def _synthetic(seed: int, index: int):
    return SyntheticSurgery(width=480, height=270, seed=seed, num_instruments=3).render(index)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("task", ["parts", "binary", "types"])
def test_matches_full_frame_reference(seed, task):
    """The per-box computation equals a plain full-frame one on synthetic masks, with the
    view estimated, the whole frame, and as a shared FieldOfView; float and uint8 confidence."""
    rng = np.random.default_rng(seed)
    first = _synthetic(seed, 0)
    estimated = estimate_view(first.image)
    fov = FieldOfView(estimated)
    checked = 0
    for index in (0, 7, 19):
        frame = _synthetic(seed, index)
        mask = {"parts": frame.parts, "binary": (frame.parts > 0).astype(np.uint8),
                "types": frame.types}[task]  # fmt: skip
        conf = rng.random(mask.shape).astype(np.float32)
        for view, given, confidence in ((estimated, fov, conf), (estimated, estimated, None),
                                        (None, None, (conf * 255).astype(np.uint8))):  # fmt: skip
            expected = _reference(mask, task, view, confidence)
            found = find_instruments(mask, task=task, view=given, confidence=confidence,
                                     tip_probability=None)  # tips from the mask, as here
            _assert_same(found, expected)
            checked += sum(inst.entry_on_border for inst in found)
    assert checked > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_touching_and_nested_blobs(seed):
    """Components whose boxes overlap, touch the frame edge, or sit in another's hole."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((160, 200), np.uint8)
    for _ in range(12):
        start, end = rng.uniform(-20, 220, 2), rng.uniform(-20, 220, 2)
        _bar(mask, start, end, rng.uniform(3, 14), int(rng.integers(1, 4)))
    cv2.circle(mask, (100, 80), 40, 0, -1)
    cv2.circle(mask, (100, 80), 30, SHAFT, 6)  # a ring ...
    cv2.circle(mask, (100, 80), 8, CLASPER, -1)  # ... with a blob in its hole
    mask[rng.random(mask.shape) < 0.01] = 255  # ignored pixels
    view = np.hypot(*np.mgrid[-80:80, -100:100]) < 95
    conf = rng.random(mask.shape)  # float64
    for task in ("parts", "binary", "types"):
        for given in (None, view):
            expected = _reference(mask, task, given, conf, min_area=5)
            # one instrument per component, as the reference (splits: tests/test_instances.py)
            _assert_same(find_instruments(mask, task=task, view=given, confidence=conf,
                                          min_area=5, split=False, tip_probability=None),
                         expected)  # fmt: skip


def test_zero_tip_band_gives_the_farthest_pixels():
    """tip_band = 0: the tip is the centroid of the pixels farthest from the entry (it was NaN
    for about one instrument in five, when sqrt(r_max²)² rounded above r_max²)."""
    view = estimate_view(_synthetic(0, 0).image)
    for index in range(0, 30, 3):
        mask = _synthetic(0, index).parts
        found = find_instruments(mask, task="parts", view=view, tip_band=0.0)
        _assert_same(found, _reference(mask, "parts", view, None, tip_band=0.0))
        for inst in found:
            assert np.isfinite(inst.tip).all()


def test_field_of_view_is_computed_once_and_read_only():
    view = _circle_view()
    fov = FieldOfView(view)
    band = fov.band(3.0)
    assert fov.band(3.0) is band and not band.flags.writeable
    np.testing.assert_array_equal(band, border_band_mask(view, view.shape, 3.0))
    rows, cols = np.nonzero(view)
    assert fov.centre == pytest.approx((cols.mean(), rows.mean()))
    whole = FieldOfView(shape=(H, W))
    assert whole.mask is None and whole.centre == ((W - 1) / 2, (H - 1) / 2)
    np.testing.assert_array_equal(whole.band(2.0), border_band_mask(None, (H, W), 2.0))
    view[:] = False  # the object keeps its own copy
    assert fov.mask.sum() == len(rows)
    image = np.where(_circle_view()[..., None], 120, 0).astype(np.uint8).repeat(3, axis=2)
    np.testing.assert_array_equal(FieldOfView.from_image(image).mask, estimate_view(image))
    with pytest.raises(ValueError, match="shape"):
        FieldOfView()
    with pytest.raises(ValueError, match="shape"):
        find_instruments(np.zeros((H, W + 1), np.uint8), view=fov)


def test_uint8_confidence_is_probability_times_255():
    mask = np.zeros((H, W), np.uint8)
    _instrument(mask, (0, 250), 10)
    levels = np.random.default_rng(3).integers(0, 256, (H, W)).astype(np.uint8)
    [scaled] = find_instruments(mask, task="parts", confidence=levels)
    [plain] = find_instruments(mask, task="parts", confidence=levels.astype(np.float32) / 255)
    assert 0 < scaled.confidence < 1
    assert scaled.confidence == pytest.approx(plain.confidence, rel=1e-6)
    assert scaled.confidence == pytest.approx(levels[mask > 0].mean() / 255, rel=1e-9)


def test_threads_share_one_field_of_view():
    fov = FieldOfView(estimate_view(_synthetic(5, 0).image))
    masks = [_synthetic(5, i).parts for i in range(8)]
    alone = [[i.to_dict() for i in find_instruments(m, task="parts", view=fov)] for m in masks]
    fresh = FieldOfView(fov.mask)  # its band is first computed under contention
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(lambda m: find_instruments(m, task="parts", view=fresh), masks * 3))
    assert [[i.to_dict() for i in found] for found in shared] == alone * 3


def test_a_tip_cut_by_the_view_border_is_flagged():
    """A shaft crossing the view from border to border: its far end is the border, not a tip."""
    h, w = 120, 200
    crossing = np.zeros((h, w), np.uint8)
    crossing[50:62, :] = SHAFT  # left edge to right edge
    [inst] = find_instruments(crossing, task="parts")
    assert inst.entry_on_border and not inst.tip_in_view
    assert inst.tip[0] > w - 5  # the far end found is on the right edge
    inside = np.zeros((h, w), np.uint8)
    inside[50:62, :120] = SHAFT  # enters at the left, ends inside the view
    [inst] = find_instruments(inside, task="parts")
    assert inst.entry_on_border and inst.tip_in_view and inst.tip[0] == pytest.approx(118.5, abs=1)


def test_cue_defaults_are_those_of_cue_options():
    """One copy of the cue defaults: ``surgseg.options.CueOptions`` (the apps' ``cues.*``);
    ``find_instruments`` and ``Tracker`` called without them behave as the apps do."""
    import inspect

    from surgseg.options import CueOptions
    from surgseg.tracking import Tracker

    options = CueOptions()
    finder = inspect.signature(find_instruments).parameters
    tracker = inspect.signature(Tracker).parameters
    assert {k: finder[k].default for k in ("min_area", "border_band", "tip_band")} == {
        "min_area": options.min_area, "border_band": options.border_band,
        "tip_band": options.tip_band}  # fmt: skip
    assert tracker["max_distance"].default == options.track_max_distance
    assert tracker["max_missed"].default == options.track_max_missed
