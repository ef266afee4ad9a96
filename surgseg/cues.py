"""Geometric pose cues of instruments from a label mask in frame coordinates.

Each instrument is a connected component of the mask; for it we report where it enters the
endoscope's view (entry), its far end (tip), its shaft axis, and a few plain measurements.
Image coordinates: x right, y down, pixel centres at integer coordinates. The exact
definitions are in docs/cues.md. Nothing here knows about networks. Also here: matching
measured cues to ground-truth instruments and summarizing their errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from surgseg.tasks import CLASPER, IGNORE_INDEX, SHAFT, WRIST, class_names
from surgseg.tracking import Tracker

__all__ = [
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
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    confidence: float | None = None
    id: int | None = None

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
            "parts": {name: _xy(p) for name, p in self.parts.items()},
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
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
    as an erosion with the disc of radius ``width``, which is an order of magnitude faster.
    """
    view = np.ones(shape, dtype=np.uint8) if view is None else view.astype(np.uint8)
    r = max(0, math.floor(width))
    padded = cv2.copyMakeBorder(view, r + 1, r + 1, r + 1, r + 1, cv2.BORDER_CONSTANT, value=0)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (dx * dx + dy * dy <= width * width).astype(np.uint8)
    inner = cv2.erode(padded, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inner[r + 1 : -r - 1, r + 1 : -r - 1] == 0


@dataclass
class _Frame:
    """Per-frame arrays and parameters shared by every instrument of a frame."""

    mask: np.ndarray
    band: np.ndarray
    confidence: np.ndarray | None
    view: np.ndarray | None
    task: str
    tip_band: float
    axis_span: float

    @cached_property
    def view_centre(self) -> np.ndarray:
        if self.view is None:
            return np.array([(self.mask.shape[1] - 1) / 2, (self.mask.shape[0] - 1) / 2])
        moments = cv2.moments(self.view.astype(np.uint8), binaryImage=True)
        return np.array([moments["m10"], moments["m01"]]) / max(moments["m00"], 1.0)


def _describe(
    inside: np.ndarray,
    origin: tuple[int, int],
    centroid: np.ndarray,
    label: int,
    frame: _Frame,
) -> Instrument:
    """Cues of one instrument, given as a boolean crop of the frame at ``origin`` (x, y)."""
    x, y = origin
    h, w = inside.shape
    crop = (slice(y, y + h), slice(x, x + w))
    rows, cols = np.nonzero(inside)
    xs, ys = cols + float(x), rows + float(y)
    values = frame.mask[crop][rows, cols]

    parts = {}
    axis_px = np.ones(len(xs), dtype=bool)  # the pixels the axis is fitted to
    shaft_labelled = False
    if frame.task == "parts":
        counts = np.bincount(values, minlength=CLASPER + 1)
        sum_x = np.bincount(values, weights=xs, minlength=CLASPER + 1)
        sum_y = np.bincount(values, weights=ys, minlength=CLASPER + 1)
        for name, value in PART_LABELS.items():
            if counts[value]:
                parts[name] = (sum_x[value] / counts[value], sum_y[value] / counts[value])
        shaft_labelled = counts[SHAFT] >= _MIN_AXIS_PX
        if shaft_labelled:
            axis_px = values == SHAFT

    contact = (inside & frame.band[crop]).view(np.uint8)
    cx, cy, cw, ch = cv2.boundingRect(contact)
    on_border = cw > 0
    if on_border:
        _, stretches, stats, centres = cv2.connectedComponentsWithStats(
            contact[cy : cy + ch, cx : cx + cw], connectivity=8
        )
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        entry = centres[k] + (x + cx, y + cy)
        sy, sx = np.nonzero(stretches == k)
        reach = np.hypot(sx + (x + cx) - entry[0], sy + (y + cy) - entry[1]).max()
        dist2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2
        # Leave out the end cut by the view boundary (a disc of radius `reach` about the
        # entry); without shaft labels keep only the first `axis_span` cut widths beyond it.
        selected = axis_px & (dist2 > reach * reach)
        if not shaft_labelled:
            selected &= dist2 <= (reach * (1 + 2 * frame.axis_span)) ** 2
        if np.count_nonzero(selected) >= _MIN_AXIS_PX:
            axis_px = selected
    fit = np.column_stack([xs[axis_px], ys[axis_px]]).astype(np.float32)
    vx, vy, x0, y0 = cv2.fitLine(fit, cv2.DIST_L2, 0, 0.01, 0.01).ravel()
    axis = np.array([vx, vy], dtype=np.float64)

    if not on_border:
        # The axis end away from the jaws (parts) or else from the view centre.
        t = (xs - x0) * vx + (ys - y0) * vy
        ends = np.array([x0, y0]) + np.outer([t.min(), t.max()], axis)
        away_from = parts.get("clasper", parts.get("wrist", frame.view_centre))
        entry = ends[int(np.argmax(np.linalg.norm(ends - away_from, axis=1)))]
        dist2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2

    far = dist2 >= max(math.sqrt(dist2.max()) - frame.tip_band, 0.0) ** 2
    tip = np.array([xs[far].mean(), ys[far].mean()])
    if axis @ (tip - entry) < 0:
        axis = -axis

    return Instrument(
        label=label,
        area_px=len(xs),
        bbox=(x, y, w, h),
        centroid=_point(centroid),
        axis=_point(axis),
        angle_deg=_wrap_deg(math.degrees(math.atan2(axis[1], axis[0]))),
        entry=_point(entry),
        entry_on_border=bool(on_border),
        tip=_point(tip),
        parts={name: _point(p) for name, p in parts.items()},
        confidence=None
        if frame.confidence is None
        else float(frame.confidence[crop][inside].mean()),
    )


def _point(p: Any) -> tuple[float, float]:
    return float(p[0]), float(p[1])


def _components(
    binary: np.ndarray, min_area: int
) -> Iterator[tuple[np.ndarray, tuple[int, int], np.ndarray]]:
    """(crop of component, origin (x, y), centroid) per 8-connected component ≥ min_area."""
    n, labels, stats, centres = cv2.connectedComponentsWithStatsWithAlgorithm(
        binary, 8, cv2.CV_32S, cv2.CCL_BBDT
    )
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area >= min_area:
            yield labels[y : y + h, x : x + w] == i, (x, y), centres[i]


def find_instruments(
    mask: np.ndarray,
    *,
    task: str = "binary",
    confidence: np.ndarray | None = None,
    view: np.ndarray | None = None,
    min_area: int = 50,
    border_band: float = 3.0,
    tip_band: float = 2.0,
    axis_span: float = 1.5,
) -> list[Instrument]:
    """Instruments in an (H, W) label mask, largest first.

    Args:
        mask: integer labels of ``task`` (0 background; ``IGNORE_INDEX`` counts as background).
        task: ``binary``/``parts``: one instrument per 8-connected component of the
            foreground; ``types``: one per 8-connected component of each type label.
        confidence: optional (H, W) float map; each instrument reports its mean over its pixels.
        view: optional boolean (H, W) field of view; defaults to the whole frame.
        min_area: components smaller than this (pixels) are ignored.
        border_band: pixels within this distance of the view boundary are contact pixels.
        tip_band: the tip is the centroid of the pixels within this distance of the farthest.
        axis_span: without shaft labels, the axis is fitted to the first ``axis_span`` shaft
            widths of the instrument beyond its entry (the shaft, not the bent wrist).

    The exact definitions are in docs/cues.md.
    """
    class_names(task)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    for name, other in (("confidence", confidence), ("view", view)):
        if other is not None and other.shape != mask.shape:
            raise ValueError(f"{name} shape {other.shape} differs from mask shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask labels must lie in 0..255")
        mask = mask.astype(np.uint8)
    foreground = cv2.inRange(mask, 1, IGNORE_INDEX - 1)
    components = list(_components(foreground, min_area))
    if not components:
        return []

    frame = _Frame(
        mask=mask,
        band=border_band_mask(view, mask.shape, border_band),
        confidence=confidence,
        view=view,
        task=task,
        tip_band=tip_band,
        axis_span=axis_span,
    )
    instruments = []
    for inside, (x, y), centroid in components:
        if task != "types":
            instruments.append(_describe(inside, (x, y), centroid, 1, frame))
            continue
        labels = mask[y : y + inside.shape[0], x : x + inside.shape[1]]
        for value in np.unique(labels[inside]):
            piece = (inside & (labels == value)).astype(np.uint8)
            for sub, (sx, sy), sub_centroid in _components(piece, min_area):
                origin = (x + sx, y + sy)
                instruments.append(
                    _describe(sub, origin, sub_centroid + np.array([x, y]), int(value), frame)
                )
    instruments.sort(key=lambda inst: -inst.area_px)
    return instruments


def cues_from_mask(
    mask: np.ndarray,
    *,
    task: str = "binary",
    confidence: np.ndarray | None = None,
    view: np.ndarray | None = None,
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
