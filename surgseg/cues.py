"""Geometric pose cues of instruments from a label mask in frame coordinates.

Each instrument is a connected component of the mask (split per entry where instruments touch
or cross: ``surgseg.instances``); for it we report where it enters the endoscope's view
(entry), its far end (tip), its shaft axis, and a few plain measurements.
Image coordinates: x right, y down, pixel centres at integer coordinates. The exact
definitions are in the README, section "Pose cues". Nothing here knows about networks. Also
here: matching measured cues to ground-truth instruments and summarizing their errors.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from surgseg.instances import (
    band_floor,
    components,
    contact_stretches,
    far_end,
    split_component,
)
from surgseg.options import CueOptions
from surgseg.tasks import CLASPER, IGNORE_INDEX, SHAFT, WRIST, class_names
from surgseg.tracking import Tracker

__all__ = [
    "FieldOfView",
    "Instrument",
    "Tracker",
    "border_band_mask",
    "cue_errors",
    "cues_from_mask",
    "estimate_view",
    "find_instruments",
    "match_to_ground_truth",
    "summarize_errors",
]

PART_LABELS = {"shaft": SHAFT, "wrist": WRIST, "clasper": CLASPER}

_MIN_AXIS_PX = 20  # fewer pixels than this in the axis region: fall back to a larger region
_MIN_VIEW_FRACTION = 0.2  # estimate_view falls back to the whole frame below / above these
_FULL_VIEW_FRACTION = 0.98


def _wrap_deg(angle: float) -> float:
    return angle + 360.0 if angle <= -180.0 else angle


def _xy(point: Any, ndigits: int = 2) -> list[float]:
    return [round(float(point[0]), ndigits), round(float(point[1]), ndigits)]


@dataclass
class Instrument:
    """Pose cues of one instrument, in frame pixel coordinates (x right, y down)."""

    label: int
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, w, h
    centroid: tuple[float, float]
    axis: tuple[float, float]  # unit vector from the entry into the view
    angle_deg: float  # atan2(axis y, axis x) in (-180, 180]
    entry: tuple[float, float]
    entry_on_border: bool
    tip: tuple[float, float]
    tip_in_view: bool = True  # False: the far end touches the view's border (the tip is cut off)
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float | None = None
    id: int | None = None
    smoothed: dict[str, list[float]] | None = None  # set by a smoothing Tracker

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: coordinates and angle to 2 decimals, axis and confidence to 4."""
        return {
            "id": self.id,
            "label": int(self.label),
            "area_px": int(self.area_px),
            "bbox": [int(v) for v in self.bbox],
            "centroid": _xy(self.centroid),
            "axis": _xy(self.axis, 4),
            "angle_deg": _wrap_deg(round(float(self.angle_deg), 2)),
            "entry": _xy(self.entry),
            "entry_on_border": bool(self.entry_on_border),
            "tip": _xy(self.tip),
            "tip_in_view": bool(self.tip_in_view),
            "parts": {name: _xy(p) for name, p in self.parts.items()},
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            **({} if self.smoothed is None else {"smoothed": self.smoothed}),
        }


def estimate_view(image_rgb: np.ndarray, *, threshold: int = 20) -> np.ndarray:
    """Boolean (H, W) field of view of an endoscopic RGB frame.

    The view is the convex hull of the largest connected region brighter than ``threshold``
    (grey level, after a 5×5 median blur). Falls back to the whole frame when that region is
    small (< 20 % of the frame) or covers nearly everything (≥ 98 %).
    """
    gray = cv2.medianBlur(cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY), 5)
    bright = (gray > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    full = np.ones(gray.shape, dtype=bool)
    if n < 2:
        return full
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    view = np.zeros(gray.shape, dtype=np.uint8)
    cv2.fillConvexPoly(view, cv2.convexHull(points), 1)
    fraction = view.mean()
    if not _MIN_VIEW_FRACTION <= fraction < _FULL_VIEW_FRACTION:
        return full
    return view.astype(bool)


def border_band_mask(view: np.ndarray | None, shape: tuple[int, int], width: float) -> np.ndarray:
    """Boolean (H, W): pixels at Euclidean distance ≤ ``width`` from the nearest pixel outside
    the view, with the image border counting as outside (the view is padded by one background
    pixel, so a view pixel on the image edge is at distance 1). Pixels outside the view are in.

    Equal to thresholding ``cv2.distanceTransform(padded, DIST_L2, DIST_MASK_PRECISE)``, computed
    as an erosion with the disc of radius ``width``, which is an order of magnitude faster; for
    the whole frame (``view`` None) it is the ``floor(width)`` rows and columns at each edge.
    """
    r = max(0, math.floor(width))
    if view is None:
        band = np.zeros(shape, dtype=bool)
        if r:
            band[:r], band[-r:], band[:, :r], band[:, -r:] = True, True, True, True
        return band
    padded = cv2.copyMakeBorder(
        view.astype(np.uint8), r + 1, r + 1, r + 1, r + 1, cv2.BORDER_CONSTANT, value=0
    )
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (dx * dx + dy * dy <= width * width).astype(np.uint8)
    inner = cv2.erode(padded, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inner[r + 1 : -r - 1, r + 1 : -r - 1] == 0


class FieldOfView:
    """The endoscope's field of view in a video's frames, with the geometry the cues need.

    The view is fixed within a video, so build one per video and pass it to every
    ``find_instruments`` call (from any number of threads): its border band for each width and
    its centroid are computed on first use and then reused, read-only.

    Args:
        mask: boolean (H, W) view, or None for the whole frame.
        shape: (H, W) of the frames; required when ``mask`` is None.
    """

    def __init__(self, mask: np.ndarray | None = None, *, shape: tuple[int, int] | None = None):
        if mask is None and shape is None:
            raise ValueError("FieldOfView needs a mask or a shape")
        if mask is not None:
            mask = np.array(mask, dtype=bool)  # a copy, made read-only
            if mask.ndim != 2 or (shape is not None and mask.shape != tuple(shape)):
                raise ValueError(f"view mask shape {mask.shape} does not match shape {shape}")
            mask.flags.writeable = False
        self.mask = mask
        self.shape: tuple[int, int] = mask.shape if mask is not None else tuple(shape)
        self._bands: dict[float, np.ndarray] = {}
        self._centre: tuple[float, float] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_image(cls, image_rgb: np.ndarray, *, threshold: int = 20) -> FieldOfView:
        """The view of an RGB frame as ``estimate_view`` finds it."""
        return cls(estimate_view(image_rgb, threshold=threshold))

    def band(self, width: float) -> np.ndarray:
        """Read-only ``border_band_mask(mask, shape, width)``, computed once per width."""
        with self._lock:
            band = self._bands.get(width)
            if band is None:
                band = border_band_mask(self.mask, self.shape, width)
                band.flags.writeable = False
                self._bands[width] = band
            return band

    @property
    def centre(self) -> tuple[float, float]:
        """Centroid (x, y) of the view's pixels."""
        with self._lock:
            if self._centre is None:
                h, w = self.shape
                if self.mask is None:
                    self._centre = ((w - 1) / 2, (h - 1) / 2)
                else:
                    m = cv2.moments(self.mask.view(np.uint8), binaryImage=True)
                    area = max(m["m00"], 1.0)
                    self._centre = (m["m10"] / area, m["m01"] / area)
            return self._centre


@dataclass
class _Frame:
    """Per-frame arrays and parameters shared by every instrument of a frame."""

    mask: np.ndarray
    band: np.ndarray
    confidence: np.ndarray | None
    view: FieldOfView
    task: str
    tip_band: float
    axis_span: float
    tip_probability: float | None = None
    tip_reach: float = 0.0


def _sums(pixels: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[int, float, float]:
    """Count and coordinate sums (x, y) of the true pixels of a boolean crop whose columns and
    rows lie at ``xs`` and ``ys``: integers, exact in double precision."""
    binary = pixels.view(np.uint8)
    per_col = cv2.reduce(binary, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[0]
    count = int(per_col.sum())
    if not count:
        return 0, 0.0, 0.0
    per_row = cv2.reduce(binary, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
    return count, float(per_col @ xs), float(per_row @ ys)


def _mean(sums: tuple[int, float, float]) -> tuple[float, float]:
    """The mean position (x, y) of ``_sums`` (NaN for no pixel)."""
    count, sum_x, sum_y = sums
    return (sum_x / count, sum_y / count) if count else (math.nan, math.nan)


def _fit_line(pixels: np.ndarray, x: int, y: int) -> tuple[float, float, float, float]:
    """Least-squares line (vx, vy, x0, y0) through the true pixels of a crop at origin (x, y):
    their centroid and principal axis, as ``cv2.fitLine(points, DIST_L2, ...)`` computes it."""
    m = cv2.moments(pixels.view(np.uint8))
    t = 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])
    return math.cos(t), math.sin(t), m["m10"] / m["m00"] + x, m["m01"] / m["m00"] + y


def _span(d2: np.ndarray, limit: float) -> slice:
    """The indices whose squared offset ``d2`` (convex in the index) is at most ``limit``."""
    within = np.flatnonzero(d2 <= limit)
    return slice(int(within[0]), int(within[-1]) + 1) if within.size else slice(0, 0)


def _beyond(pixels: np.ndarray, dx2: np.ndarray, dy2: np.ndarray, inner2: float,
            outer2: float) -> np.ndarray:  # fmt: skip
    """The true pixels of a boolean crop whose dist² ``dx2[col] + dy2[row]`` (squared offsets
    of its columns and rows from a point) lies in (inner2, outer2]. dist² is computed only in
    the boxes about the point that hold the pixels within each bound, as a whole map would."""
    if math.isinf(outer2):
        kept = pixels.copy()
    else:
        kept = np.zeros(pixels.shape, bool)
        rows, cols = _span(dy2, outer2), _span(dx2, outer2)
        kept[rows, cols] = pixels[rows, cols] & (dx2[cols] + dy2[rows, None] <= outer2)
    rows, cols = _span(dy2, inner2), _span(dx2, inner2)
    kept[rows, cols] &= dx2[cols] + dy2[rows, None] > inner2
    return kept


def _far_pixels(inside: np.ndarray, dx2: np.ndarray, dy2: np.ndarray,
                tip_band: float) -> tuple[np.ndarray, int]:  # fmt: skip
    """The pixels of a boolean crop within ``tip_band`` of its farthest from a point (dx2,
    dy2: the squared offsets of the crop's columns and rows from it), as the rows ``top`` to
    ``top + len(far)`` of the crop: (far, top).

    A row's farthest pixel is its first or last (dist² is convex along the row), so the
    farthest distance and the rows that reach the band come from each row's ends; dist² is
    then computed on those rows only, as a whole map would hold it.
    """
    h, w = inside.shape
    first = inside.argmax(axis=1)
    last = w - 1 - cv2.flip(inside.view(np.uint8), 1).view(bool).argmax(axis=1)
    row_max = np.where(inside[np.arange(h), first], np.maximum(dx2[first], dx2[last]) + dy2, -1.0)
    threshold = band_floor(row_max.max(), tip_band)
    rows = np.flatnonzero(row_max >= threshold)
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    return inside[top:bottom] & (dx2 + dy2[top:bottom, None] >= threshold), top


def _describe(
    inside: np.ndarray,
    origin: tuple[int, int],
    label: int,
    frame: _Frame,
    stretches: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Instrument:
    """Cues of one instrument, given as a boolean crop of the frame at ``origin`` (x, y), with
    its ``contact_stretches`` where the caller has them.

    Everything is computed on the crop (its bounding box), as maps and masks rather than
    pixel lists, so the cost is a few passes over the box in OpenCV or numpy.
    """
    x, y = origin
    h, w = inside.shape
    crop = (slice(y, y + h), slice(x, x + w))
    xs = np.arange(x, x + w, dtype=np.float64)  # frame coordinates of the crop's columns
    ys = np.arange(y, y + h, dtype=np.float64)  # and of its rows
    parts = {}
    axis_px = inside  # the pixels the axis is fitted to
    shaft_labelled = False
    whole = None  # _sums of the instrument
    if frame.task == "parts":
        labels = cv2.copyTo(frame.mask[crop], inside.view(np.uint8))  # 0 outside the instrument
        total = np.zeros(3)
        for name, value in PART_LABELS.items():
            part = labels == value
            sums = _sums(part, xs, ys)
            total += sums
            if sums[0]:
                parts[name] = _mean(sums)
            if value == SHAFT and sums[0] >= _MIN_AXIS_PX:
                axis_px, shaft_labelled = part, True
        if total[0] == cv2.countNonZero(inside.view(np.uint8)):  # only part labels: their sum
            whole = (int(total[0]), float(total[1]), float(total[2]))
    if whole is None:
        whole = _sums(inside, xs, ys)
    area, (mean_x, mean_y) = whole[0], _mean(whole)

    if stretches is None:
        stretches = contact_stretches(inside, frame.band[crop])
    on_border = bool(stretches)
    if on_border:
        cols, rows = stretches[0]  # the largest, the first in raster order among equals
        cols, rows = cols + x, rows + y
        entry = np.array([int(cols.sum()) / len(cols), int(rows.sum()) / len(rows)])
        dx2, dy2 = (xs - entry[0]) ** 2, (ys - entry[1]) ** 2  # dist² of a pixel: dx2 + dy2
        # Leave out the end cut by the view boundary (a disc of radius `reach` about the
        # entry); without shaft labels keep only the first `axis_span` cut widths beyond it.
        # reach² is computed as dist² is, so the stretch's farthest pixels are surely left out.
        reach2 = ((cols - entry[0]) ** 2 + (rows - entry[1]) ** 2).max()
        outer2 = math.inf if shaft_labelled else reach2 * (1 + 2 * frame.axis_span) ** 2
        selected = _beyond(axis_px, dx2, dy2, reach2, outer2)
        if np.count_nonzero(selected) >= _MIN_AXIS_PX:
            axis_px = selected
    vx, vy, x0, y0 = _fit_line(axis_px, x, y)
    axis = np.array([vx, vy])

    if not on_border:
        # The axis end away from the jaws (parts) or else from the view centre.
        along = (xs - x0) * vx + (ys[:, None] - y0) * vy
        t_min, t_max, _, _ = cv2.minMaxLoc(along, inside.view(np.uint8))
        ends = np.array([x0, y0]) + np.outer([t_min, t_max], axis)
        away_from = parts.get("clasper", parts.get("wrist", frame.view.centre))
        entry = ends[int(np.argmax(np.linalg.norm(ends - away_from, axis=1)))]
        dx2, dy2 = (xs - entry[0]) ** 2, (ys - entry[1]) ** 2

    far, top = _far_pixels(inside, dx2, dy2, frame.tip_band)
    tip = np.array(_mean(_sums(far, xs, ys[top : top + len(far)])))
    # A tip band reaching into the border band is the view's edge, not the instrument's end.
    band = frame.band[y + top : y + top + len(far), x : x + w]
    tip_in_view = not cv2.countNonZero((far & band).view(np.uint8))
    if frame.tip_probability is not None and frame.confidence is not None and tip_in_view:
        refined = far_end(inside, (x, y), entry, tip, frame.mask, frame.confidence,
                          probability=frame.tip_probability, tip_band=frame.tip_band,
                          reach=frame.tip_reach)  # fmt: skip
        tip = tip if refined is None else refined
    if axis @ (tip - entry) < 0:
        axis = -axis

    return Instrument(
        label=label,
        area_px=area,
        bbox=(x, y, w, h),
        centroid=(mean_x, mean_y),
        axis=_point(axis),
        angle_deg=_wrap_deg(math.degrees(math.atan2(axis[1], axis[0]))),
        entry=_point(entry),
        entry_on_border=bool(on_border),
        tip=_point(tip),
        tip_in_view=tip_in_view,
        parts=parts,
        confidence=None
        if frame.confidence is None
        else _mean_confidence(frame.confidence[crop], inside, area),
    )


def _mean_confidence(values: np.ndarray, inside: np.ndarray, area: int) -> float:
    """Mean of a crop of the confidence map over the instrument's ``area`` pixels, on 0..1
    (a uint8 map holds probability × 255). Summed in double precision."""
    scale = 1 / 255 if values.dtype == np.uint8 else 1.0
    if values.dtype not in (np.uint8, np.float32, np.float64):
        values = values.astype(np.float64)
    # copyTo with a mask zeroes the pixels outside it (sumElems sums in double)
    return cv2.sumElems(cv2.copyTo(values, inside.view(np.uint8)))[0] / area * scale


def _point(p: Any) -> tuple[float, float]:
    return float(p[0]), float(p[1])


def find_instruments(
    mask: np.ndarray,
    *,
    task: str = "binary",
    confidence: np.ndarray | None = None,
    view: FieldOfView | np.ndarray | None = None,
    min_area: int = CueOptions.min_area,  # the defaults are defined once, in CueOptions
    border_band: float = CueOptions.border_band,
    tip_band: float = CueOptions.tip_band,
    axis_span: float = 1.5,
    split: bool = CueOptions.split,
    tip_probability: float | None = CueOptions.tip_probability,
    tip_reach: float = 12.0,
) -> list[Instrument]:
    """Instruments in an (H, W) label mask, largest first.

    Stateless and thread-safe; the work is proportional to the instruments' bounding boxes
    plus one contour pass over the frame.

    Args:
        mask: integer labels of ``task`` (0 background; ``IGNORE_INDEX`` counts as background).
        task: ``binary``/``parts``: one instrument per 8-connected component of the
            foreground (per entry, with ``split``); ``types``: one per 8-connected component
            of each type label.
        confidence: optional (H, W) map; each instrument reports its mean over its pixels, on
            0..1: a float map holds probabilities (0..1), a uint8 map probability × 255.
        view: the field of view: a ``FieldOfView`` (build one per video: its border band is
            then computed once), a boolean (H, W) mask, or None for the whole frame.
        min_area: components smaller than this (pixels) are ignored.
        border_band: pixels within this distance of the view boundary are contact pixels.
        tip_band: the tip is the centroid of the pixels within this distance of the farthest.
        axis_span: without shaft labels, the axis is fitted to the first ``axis_span`` shaft
            widths of the instrument beyond its entry (the shaft, not the bent wrist).
        split: in ``binary``/``parts``, split a component that enters the view in separate
            stretches into one instrument per entry (``surgseg.instances.split_component``).
        tip_probability, tip_reach: with a confidence map, read the tip from the instrument
            grown by the background pixels within ``tip_reach`` px of its tip whose
            instrument probability is at least ``tip_probability``
            (``surgseg.instances.far_end``); None: from the mask alone.

    The exact definitions are in the README, section "Pose cues".
    """
    class_names(task)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    for name, other in (("confidence", confidence), ("view", view)):
        if other is not None and tuple(other.shape) != mask.shape:
            raise ValueError(f"{name} shape {other.shape} differs from mask shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask labels must lie in 0..255")
        mask = mask.astype(np.uint8)
    foreground = mask  # labels 1..254: a mask without IGNORE_INDEX needs no pass to find them
    if mask.max(initial=0) >= IGNORE_INDEX:
        foreground = cv2.inRange(mask, 1, IGNORE_INDEX - 1)
    found = components(foreground, min_area)
    if not found:
        return []

    if not isinstance(view, FieldOfView):
        view = FieldOfView(view, shape=mask.shape)
    frame = _Frame(
        mask=mask,
        band=view.band(border_band),
        confidence=confidence,
        view=view,
        task=task,
        tip_band=tip_band,
        axis_span=axis_span,
        tip_probability=tip_probability,
        tip_reach=tip_reach,
    )
    instruments = []
    for inside, (x, y) in found:
        if task != "types":
            box = (slice(y, y + inside.shape[0]), slice(x, x + inside.shape[1]))
            stretches = contact_stretches(inside, frame.band[box])
            pieces = split and split_component(
                inside, frame.band[box], mask[box] if task == "parts" else None,
                axis_span=axis_span, min_area=min_area, stretches=stretches)  # fmt: skip
            if pieces:
                instruments += [_describe(piece, (x + px, y + py), 1, frame)
                                for piece, (px, py) in pieces]  # fmt: skip
            else:
                instruments.append(_describe(inside, (x, y), 1, frame, stretches))
            continue
        labels = mask[y : y + inside.shape[0], x : x + inside.shape[1]]
        for value in np.unique(labels[inside]):
            piece = (inside & (labels == value)).view(np.uint8)
            for sub, (sx, sy) in components(piece, min_area):
                instruments.append(_describe(sub, (x + sx, y + sy), int(value), frame))
    instruments.sort(key=lambda inst: -inst.area_px)
    return instruments


def cues_from_mask(
    mask: np.ndarray,
    *,
    task: str = "binary",
    confidence: np.ndarray | None = None,
    view: FieldOfView | np.ndarray | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Pose cues of every instrument in ``mask`` as JSON-ready dicts (see ``find_instruments``
    for ``params``: min_area, border_band, tip_band)."""
    instruments = find_instruments(mask, task=task, confidence=confidence, view=view, **params)
    return [inst.to_dict() for inst in instruments]


def match_to_ground_truth(
    pred: list[dict[str, Any]], gt: list[dict[str, Any]], *, max_distance: float = 50.0
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(predicted, ground-truth) instrument pairs: the one-to-one assignment of least total tip
    distance (Hungarian), keeping only pairs whose tips are at most ``max_distance`` px apart.
    Both lists hold dicts with at least ``tip`` [x, y]."""
    if not pred or not gt:
        return []
    p = np.array([d["tip"] for d in pred], dtype=np.float64)
    g = np.array([d["tip"] for d in gt], dtype=np.float64)
    dist = np.linalg.norm(p[:, None] - g[None], axis=2)
    rows, cols = linear_sum_assignment(np.where(dist <= max_distance, dist, 1e9))
    return [(pred[r], gt[c]) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= max_distance]


def cue_errors(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, list[float]]:
    """Per (predicted, ground-truth) pair: ``tip_px``, the Euclidean tip distance in pixels,
    and ``axis_deg``, the angle between the two axis vectors in degrees (0..180; an axis
    pointing the wrong way is 180° off)."""
    tip_px, axis_deg = [], []
    for pred, gt in pairs:
        tip_px.append(math.dist(pred["tip"], gt["tip"]))
        (ax, ay), (bx, by) = pred["axis"], gt["axis"]
        axis_deg.append(math.degrees(math.atan2(abs(ax * by - ay * bx), ax * bx + ay * by)))
    return {"tip_px": tip_px, "axis_deg": axis_deg}


def summarize_errors(tip_errors: list[float], axis_errors: list[float]) -> dict[str, Any]:
    """``count`` and the median and 90th percentile (linear interpolation) of each error list:
    ``tip_px_median``, ``tip_px_p90``, ``axis_deg_median``, ``axis_deg_p90`` (None if empty)."""
    if len(tip_errors) != len(axis_errors):
        raise ValueError(f"{len(tip_errors)} tip errors but {len(axis_errors)} axis errors")
    summary: dict[str, Any] = {"count": len(tip_errors)}
    for name, errors in (("tip_px", tip_errors), ("axis_deg", axis_errors)):
        values = np.asarray(errors, dtype=np.float64)
        empty = values.size == 0
        summary[f"{name}_median"] = None if empty else float(np.median(values))
        summary[f"{name}_p90"] = None if empty else float(np.percentile(values, 90))
    return summary
