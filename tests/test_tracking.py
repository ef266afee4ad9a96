"""Tracker: stable ids for moving instruments, new ids for new ones, no swaps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from surgseg.cues import Instrument, find_instruments
from surgseg.tracking import Tracker


def _inst(entry, tip, label: int = 1) -> Instrument:
    return Instrument(
        label=label,
        area_px=100,
        bbox=(0, 0, 1, 1),
        centroid=(0.0, 0.0),
        axis=(1.0, 0.0),
        angle_deg=0.0,
        entry=tuple(map(float, entry)),
        entry_on_border=True,
        tip=tuple(map(float, tip)),
    )


def _ids(instruments) -> list[int | None]:
    return [inst.id for inst in instruments]


def test_ids_follow_instruments_drawn_in_moving_masks():
    tracker = Tracker()
    seen = []
    for step in range(12):
        mask = np.zeros((240, 320), np.uint8)
        # Two instruments pivoting about their trocars; the list order changes with their area.
        a = 80 + 4 * step
        cv2.line(mask, (0, 60 + 2 * step), (a, 100), 1, 12)
        cv2.line(mask, (319, 200), (200 - 3 * step, 150 - 2 * step), 1, 12)
        found = tracker.update(find_instruments(mask))
        seen.append({round(inst.entry[0]): inst.id for inst in found})
    assert all(s == seen[0] for s in seen)
    assert sorted(seen[0].values()) == [0, 1]


def test_new_instrument_gets_new_id_and_lost_tracks_expire():
    tracker = Tracker(max_missed=2)
    assert _ids(tracker.update([_inst((0, 100), (150, 120))])) == [0]
    both = tracker.update([_inst((2, 101), (155, 122)), _inst((639, 300), (400, 280))])
    assert _ids(both) == [0, 1]
    for _ in range(2):  # instrument 0 missing for two frames: kept
        assert _ids(tracker.update([_inst((639, 302), (405, 280))])) == [1]
    assert _ids(tracker.update([_inst((1, 100), (150, 121)), _inst((639, 303), (404, 281))])) == [
        0,
        1,
    ]
    for _ in range(3):  # missing for three frames: dropped, comes back as a new one
        tracker.update([])
    assert _ids(tracker.update([_inst((1, 100), (150, 121))])) == [2]


def test_no_swap_when_two_close_instruments_move_slightly():
    tracker = Tracker()
    first = tracker.update([_inst((0, 200), (180, 190)), _inst((0, 240), (180, 250))])
    assert _ids(first) == [0, 1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        jitter = rng.normal(0, 3, size=(2, 2, 2))
        moved = [
            _inst(np.array([0, 240]) + jitter[1, 0], np.array([180, 250]) + jitter[1, 1]),
            _inst(np.array([0, 200]) + jitter[0, 0], np.array([180, 190]) + jitter[0, 1]),
        ]
        assert _ids(tracker.update(moved)) == [1, 0]


def test_gate_and_label_penalty():
    tracker = Tracker(max_distance=80.0)
    tracker.update([_inst((0, 100), (100, 100), label=3)])
    far = tracker.update([_inst((0, 200), (100, 200), label=3)])  # entry moved 100 px
    assert _ids(far) == [1]
    tracker = Tracker(max_distance=80.0, label_penalty=40.0)
    tracker.update([_inst((0, 100), (100, 100), label=3), _inst((0, 130), (100, 130), label=5)])
    # Both entries are 15 px from either track; the labels decide.
    swapped = tracker.update(
        [_inst((0, 115), (100, 115), label=5), _inst((0, 115), (100, 115), label=3)]
    )
    assert _ids(swapped) == [1, 0]
    tracker = Tracker(max_distance=80.0, label_penalty=40.0)
    tracker.update([_inst((0, 100), (100, 100), label=3)])
    relabelled = tracker.update([_inst((0, 110), (100, 110), label=6)])  # 10 + 2.5 + 40 < 80
    assert _ids(relabelled) == [0]
    relabelled = tracker.update([_inst((0, 140), (100, 140), label=3)])  # 30 + 7.5 + 40 < 80
    assert _ids(relabelled) == [0]
    assert _ids(tracker.update([_inst((0, 180), (100, 180), label=6)])) == [1]  # 40 + 10 + 40


def test_empty_frames():
    tracker = Tracker()
    assert tracker.update([]) == []
    assert _ids(tracker.update([_inst((0, 0), (10, 10))])) == [0]


def test_smoothing_steadies_a_noisy_track_and_keeps_the_raw_cues():
    """A tip moving at constant speed, measured with 2 px noise: the smoothed tip is closer to
    the truth and far steadier from frame to frame; an instrument holding still barely moves."""
    from surgseg.tracking import Smoothing

    rng = np.random.default_rng(0)
    tracker = Tracker(smoothing=Smoothing())
    truth, raw, smooth = [], [], []
    for t in range(120):
        tip = np.array([100.0 + 1.5 * t, 200.0 - 0.5 * t])
        noisy = tip + rng.normal(0, 2.0, 2)
        angle = 0.3 + rng.normal(0, 0.02)
        inst = _inst((20.0, 200.0), noisy)
        inst.axis = (float(np.cos(angle)), float(np.sin(angle)))
        [out] = tracker.update([inst])
        assert out.tip == tuple(noisy)  # the raw cue stays as measured
        assert np.hypot(*out.smoothed["axis"]) == pytest.approx(1, abs=1e-3)
        truth.append(tip), raw.append(noisy), smooth.append(out.smoothed["tip"])
    truth, raw, smooth = (np.array(a)[20:] for a in (truth, raw, smooth))  # after settling

    def jitter(track):  # frame-to-frame change of velocity
        return np.linalg.norm(np.diff(track, n=2, axis=0), axis=1).mean()

    error = lambda track: np.linalg.norm(track - truth, axis=1).mean()  # noqa: E731
    assert error(smooth) < 0.6 * error(raw)
    assert jitter(smooth) < 0.5 * jitter(raw)
    record = out.to_dict()
    assert set(record["smoothed"]) == {"entry", "tip", "axis"}
    assert "smoothed" not in _inst((0, 0), (5, 5)).to_dict()  # without smoothing: no key


def test_crossing_instruments_keep_their_ids():
    """The generator's crossing scenes: the split instruments keep the ids of the true
    instruments they are, frame after frame, through crossings and touches."""
    from surgseg.cues import FieldOfView
    from surgseg.synthetic import SyntheticSurgery

    surgery = SyntheticSurgery(seed=101, crossings=1.0)
    view = FieldOfView.from_image(surgery.render(0).image)
    tracker = Tracker()
    pairs = {}  # track id -> the true instrument ids it was nearest to
    for index in range(0, 60, 2):
        frame = surgery.render(index)
        for inst in tracker.update(find_instruments(frame.parts, task="parts", view=view)):
            true = min(frame.instruments, key=lambda t: np.hypot(*np.subtract(t["entry"],
                                                                               inst.entry)))
            pairs.setdefault(inst.id, []).append(true["id"])
    assert len(pairs) == len(frame.instruments)  # no track lost and started again
    for seen in pairs.values():
        assert len(seen) >= 27  # found in (nearly) every one of the 30 frames, not merged
        assert max(seen.count(v) for v in set(seen)) >= 0.95 * len(seen)
