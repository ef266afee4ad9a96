"""Stable instrument ids across frames: Hungarian matching of entry points.

Instruments pivot about their trocar, so where an instrument enters the view moves little
from frame to frame; that is what the tracker matches on, with a smaller term for the tip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from surgseg.cues import Instrument

_INFEASIBLE = 1e9  # cost of a pair beyond the gate, so the solver uses it only when forced


@dataclass
class _Track:
    id: int
    entry: np.ndarray
    tip: np.ndarray
    label: int
    missed: int = 0


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
    """

    def __init__(
        self,
        *,
        max_distance: float = 80.0,
        max_missed: int = 10,
        tip_weight: float = 0.25,
        label_penalty: float = 40.0,
    ):
        self.max_distance = max_distance
        self.max_missed = max_missed
        self.tip_weight = tip_weight
        self.label_penalty = label_penalty
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
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        return instruments
