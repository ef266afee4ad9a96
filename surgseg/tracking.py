"""Stable instrument ids across frames: Hungarian matching of entry points, and optional
smoothing of each track's cues.

Instruments pivot about their trocar, so where an instrument enters the view moves little
from frame to frame; that is what the tracker matches on, with a smaller term for the tip.
With ``smooth``, each track runs constant-velocity Kalman filters (``cv2.KalmanFilter``) on
its entry, tip and axis; the smoothed values are added beside the raw ones, which stay as
measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from surgseg.options import CueOptions

if TYPE_CHECKING:
    from surgseg.cues import Instrument

_INFEASIBLE = 1e9  # cost of a pair beyond the gate, so the solver uses it only when forced


def _constant_velocity(point: np.ndarray, *, q: float, r: float) -> cv2.KalmanFilter:
    """A Kalman filter on (x, y, vx, vy), one frame per step, started at ``point`` at rest.
    ``q``: the standard deviation of the unmodelled acceleration per frame; ``r``: that of a
    measurement (both in the point's units)."""
    kf = cv2.KalmanFilter(4, 2)
    kf.transitionMatrix = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]],
                                   np.float32)  # fmt: skip
    kf.measurementMatrix = np.eye(2, 4, dtype=np.float32)
    g = np.array([[0.5, 0], [0, 0.5], [1, 0], [0, 1]], np.float32)  # acceleration → state
    kf.processNoiseCov = (g @ g.T * q * q).astype(np.float32)
    kf.measurementNoiseCov = np.eye(2, dtype=np.float32) * r * r
    kf.errorCovPost = np.diag([r * r, r * r, q * q * 100, q * q * 100]).astype(np.float32)
    kf.statePost = np.array([[point[0]], [point[1]], [0], [0]], np.float32)
    return kf


@dataclass
class Smoothing:
    """Noise levels of the per-track Kalman filters: ``point_q``/``point_r`` (pixels) for the
    entry and the tip, ``axis_q``/``axis_r`` (unit-vector components) for the axis."""

    point_q: float = 0.5
    point_r: float = 2.0
    axis_q: float = 0.005
    axis_r: float = 0.03


@dataclass
class _Track:
    id: int
    entry: np.ndarray
    tip: np.ndarray
    label: int
    missed: int = 0
    filters: dict[str, cv2.KalmanFilter] = field(default_factory=dict)

    def smooth(self, inst: Instrument, smoothing: Smoothing) -> dict[str, list[float]]:
        """Filter this frame's entry, tip and axis; the smoothed values, JSON-ready."""
        measured = {"entry": inst.entry, "tip": inst.tip, "axis": inst.axis}
        out = {}
        for name, value in measured.items():
            point = np.asarray(value, np.float32)
            kf = self.filters.get(name)
            if kf is None:
                q, r = ((smoothing.axis_q, smoothing.axis_r) if name == "axis"
                        else (smoothing.point_q, smoothing.point_r))  # fmt: skip
                kf = self.filters[name] = _constant_velocity(point, q=q, r=r)
                estimate = point
            else:
                kf.predict()
                estimate = kf.correct(point.reshape(2, 1))[:2, 0]
            if name == "axis":
                estimate = estimate / max(float(np.hypot(*estimate)), 1e-9)
                out[name] = [round(float(v), 4) for v in estimate]
            else:
                out[name] = [round(float(v), 2) for v in estimate]
        return out


class Tracker:
    """Assigns each instrument the id of the track it continues, or a new id.

    The cost of continuing a track with an instrument is
    ``|entry − track entry| + tip_weight · |tip − track tip| + label_penalty · [labels differ]``
    (pixels), against the track's last matched position. Pairs costing more than
    ``max_distance`` are never matched; among the rest the assignment of least total cost
    wins. Unmatched instruments start new tracks (ids 0, 1, 2, ... in order of appearance);
    a track unmatched for more than ``max_missed`` consecutive frames is dropped.

    Args:
        max_distance: gate on the matching cost, pixels.
        max_missed: frames a track survives without a match.
        tip_weight: weight of the tip distance relative to the entry distance.
        label_penalty: cost added when the labels differ (instrument types), pixels.
        smoothing: noise levels of per-track Kalman filters on entry, tip and axis; each
            instrument then gets ``.smoothed`` ({"entry", "tip", "axis"}); None: no filtering.
    """

    def __init__(
        self,
        *,
        max_distance: float = CueOptions.track_max_distance,  # defaults defined once, there
        max_missed: int = CueOptions.track_max_missed,
        tip_weight: float = 0.25,
        label_penalty: float = 40.0,
        smoothing: Smoothing | None = None,
    ):
        self.max_distance = max_distance
        self.max_missed = max_missed
        self.tip_weight = tip_weight
        self.label_penalty = label_penalty
        self.smoothing = smoothing
        self._tracks: list[_Track] = []
        self._next_id = 0

    def _costs(self, instruments: list[Instrument]) -> np.ndarray:
        """(tracks, instruments) matching costs."""
        entries = np.array([inst.entry for inst in instruments], dtype=np.float64)
        tips = np.array([inst.tip for inst in instruments], dtype=np.float64)
        labels = np.array([inst.label for inst in instruments])
        costs = np.empty((len(self._tracks), len(instruments)))
        for row, track in enumerate(self._tracks):
            costs[row] = (
                np.linalg.norm(entries - track.entry, axis=1)
                + self.tip_weight * np.linalg.norm(tips - track.tip, axis=1)
                + self.label_penalty * (labels != track.label)
            )
        return costs

    def update(self, instruments: list[Instrument]) -> list[Instrument]:
        """Set ``.id`` of this frame's instruments in place and return them."""
        matches: dict[int, _Track] = {}
        if self._tracks and instruments:
            costs = self._costs(instruments)
            gated = np.where(costs <= self.max_distance, costs, _INFEASIBLE)
            for row, col in zip(*linear_sum_assignment(gated), strict=True):
                if costs[row, col] <= self.max_distance:
                    matches[int(col)] = self._tracks[row]
        for track in self._tracks:
            track.missed += 1
        for col, inst in enumerate(instruments):
            track = matches.get(col)
            if track is None:
                track = _Track(self._next_id, np.zeros(2), np.zeros(2), inst.label)
                self._next_id += 1
                self._tracks.append(track)
            track.entry = np.array(inst.entry, dtype=np.float64)
            track.tip = np.array(inst.tip, dtype=np.float64)
            track.label = inst.label
            track.missed = 0
            inst.id = track.id
            if self.smoothing is not None:
                inst.smoothed = track.smooth(inst, self.smoothing)
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        return instruments
