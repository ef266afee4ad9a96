"""Which pixels are which instrument: a connected component of a binary or parts mask split
into one region per instrument where instruments touch or cross (``split_component``), and an
instrument's far end read from a model's confidence map (``far_end``).

A component is split only when it touches the view's border in two or more separate stretches
that are entries of different instruments; otherwise ``split_component`` returns None at the
cost of one pass over the component's box. Each entry seeds an instrument, with a shaft axis
fitted beyond it. The pixels then go to the seeds part by part, as instruments are built:
shafts from their entries along their strips, wrists from the shafts' ends, jaws within the
cone that continues each wrist (shortest paths on the pixel grid, coarsened for large
components). The exact rules are in the README, section "Pose cues" ("Touching and crossing
instruments", "Tip from the confidence map").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from surgseg.tasks import CLASPER, SHAFT, WRIST

__all__ = ["band_floor", "components", "contact_stretches", "far_end", "split_component"]

_MIN_STRETCH_PX = 3  # smaller contact stretches are specks, not entries
_MIN_AXIS_PX = 20
_COLLINEAR_COS = math.cos(math.radians(25.0))  # a shaft crossing the view border to border
_MAX_NODES = 1500  # larger components are split on a grid coarsened to about this many pixels
_OFF_STRIP = 4.0  # extra cost per pixel of a step, per shaft half-width outside the strip
_BEHIND = 8.0  # extra cost per pixel of a step behind the seed's entry
_JUMP = 2.0  # a path may jump over another instrument's pixels, at this cost per pixel
_TURN = 40.0  # extra cost per pixel of a step, per radian of turning beyond the spread
_WRIST_TURN = math.radians(40.0)  # the wrist bends by up to about 35° from the shaft
_OPEN = 0.2  # the jaws' cone widens by this many pixels per pixel beyond the wrist
_ALONG = 0.1  # of two jaw cones holding a pixel alike, the nearer hinge's wins
_BEND = 0.7  # without labels: the cone beyond a shaft's end (tan 35°, a bent wrist)


@dataclass
class _Seed:
    """An entry stretch and the shaft axis fitted beyond it (crop coordinates)."""

    entry: np.ndarray  # (x, y)
    axis: np.ndarray  # unit vector into the view
    centre: np.ndarray  # a point on the axis line
    half_width: float
    xs: np.ndarray  # the stretch's pixels
    ys: np.ndarray


def components(binary: np.ndarray, min_area: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """(boolean crop, origin (x, y)) of each 8-connected component of the nonzero pixels of the
    uint8 ``binary`` with at least ``min_area`` pixels, in raster order of their first pixel.

    A component is found by its outer contour (the top level of ``RETR_CCOMP``, which starts at
    its first pixel in raster order); only its bounding box is read, and labelled only when
    another component's box overlaps it. There is no full-frame labelling pass.
    """
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    outer = [c for c, link in zip(contours, hierarchy[0], strict=True) if link[3] < 0]
    boxes = np.array([cv2.boundingRect(c) for c in outer]).reshape(-1, 4)  # x, y, w, h
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    found = []
    for i in np.flatnonzero(boxes[:, 2] * boxes[:, 3] >= min_area):
        x, y, w, h = (int(v) for v in boxes[i])
        box = binary[y : y + h, x : x + w]
        first_x, first_y = (int(v) for v in outer[i][0, 0])
        if np.count_nonzero((x0 < x + w) & (x < x1) & (y0 < y + h) & (y < y1)) > 1:
            _, labels = cv2.connectedComponents(box, connectivity=8)
            inside = labels == labels[first_y - y, first_x - x]
        else:  # no other component reaches into the box
            inside = box > 0
        if np.count_nonzero(inside) >= min_area:
            found.append(((first_y, first_x), inside, (x, y)))
    found.sort(key=lambda item: item[0])
    return [(inside, origin) for _, inside, origin in found]


def contact_stretches(inside: np.ndarray, band: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel coordinates (xs, ys) of each 8-connected stretch of the pixels of the boolean crop
    ``inside`` that lie in ``band`` (the view's border band, same shape), largest first (ties
    in raster order of their first pixel)."""
    contact = (inside & band).view(np.uint8)
    contours, _ = cv2.findContours(contact, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 1:  # one stretch without holes (the usual entry): every contact pixel
        x, y, w, h = cv2.boundingRect(contours[0])
        ys, xs = np.nonzero(contact[y : y + h, x : x + w])
        return [(xs + x, ys + y)]
    found = []
    for piece, (x, y) in components(contact, 1):
        ys, xs = np.nonzero(piece)
        found.append((xs + x, ys + y))
    found.sort(key=lambda stretch: -len(stretch[0]))
    return found


def _seed(xs: np.ndarray, ys: np.ndarray, inside: np.ndarray, shaft: np.ndarray | None,
          axis_span: float) -> _Seed | None:  # fmt: skip
    """The seed of one stretch (its pixels ``xs``, ``ys``): its centroid, and the line fitted to
    the instrument's pixels in the ring of radii ρ..ρ·(1 + 2·axis_span) about it (ρ: the
    stretch's reach), shaft pixels only where there are enough; None when too few pixels lie
    there."""
    entry = np.array([xs.mean(), ys.mean()])
    reach2 = float(((xs - entry[0]) ** 2 + (ys - entry[1]) ** 2).max())
    outer = math.sqrt(max(reach2, 4.0)) * (1 + 2 * axis_span)
    h, w = inside.shape  # the ring's window
    x0, y0 = max(int(entry[0] - outer), 0), max(int(entry[1] - outer), 0)
    x1, y1 = min(int(entry[0] + outer) + 2, w), min(int(entry[1] + outer) + 2, h)
    gy, gx = np.ogrid[y0:y1, x0:x1]
    dist2 = (gx - entry[0]) ** 2 + (gy - entry[1]) ** 2
    region = inside[y0:y1, x0:x1] & (dist2 > reach2) & (dist2 <= outer * outer)
    if shaft is not None and np.count_nonzero(region & shaft[y0:y1, x0:x1]) >= _MIN_AXIS_PX:
        region &= shaft[y0:y1, x0:x1]
    if np.count_nonzero(region) < _MIN_AXIS_PX:
        return None
    m = cv2.moments(region.view(np.uint8), binaryImage=True)
    centre = np.array([m["m10"] / m["m00"] + x0, m["m01"] / m["m00"] + y0])
    angle = 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])
    axis = np.array([math.cos(angle), math.sin(angle)])
    if axis @ (centre - entry) < 0:
        axis = -axis
    across = (xs - centre[0]) * -axis[1] + (ys - centre[1]) * axis[0]
    half_width = max(0.5 * float(np.ptp(across)) + 0.5, 1.5)
    return _Seed(entry, axis, centre, half_width, xs, ys)


def _distinct(seeds: list[_Seed], inside: np.ndarray, shaft: np.ndarray | None) -> list[_Seed]:
    """The seeds less those that are an earlier one's shaft leaving the view (see
    ``_continues``)."""
    kept: list[_Seed] = []
    for seed in seeds:
        if not any(_continues(other, seed, inside, shaft) for other in kept):
            kept.append(seed)
    return kept


def _continues(first: _Seed, other: _Seed, inside: np.ndarray, shaft: np.ndarray | None) -> bool:
    """Whether ``other`` is ``first``'s shaft leaving the view: it enters on ``first``'s shaft
    line the opposite way, and the strip between the two entries (the middle 60 % of the
    shaft's width) is filled, with shaft pixels where there are labels. Two instruments
    meeting head-on leave gaps or jaws between them."""
    offset = other.entry - first.centre
    across = abs(offset[0] * -first.axis[1] + offset[1] * first.axis[0])
    if first.axis @ other.axis > -_COLLINEAR_COS or across > first.half_width + other.half_width:
        return False
    h, w = inside.shape
    gy, gx = np.mgrid[0:h, 0:w]
    along = (gx - first.entry[0]) * first.axis[0] + (gy - first.entry[1]) * first.axis[1]
    side = np.abs((gx - first.centre[0]) * -first.axis[1] + (gy - first.centre[1]) * first.axis[0])
    span = float((other.entry - first.entry) @ first.axis)
    strip = (side <= 0.6 * first.half_width) & (along > 0) & (along < span)
    filled = inside if shaft is None else inside & shaft
    return bool(np.count_nonzero(filled & strip) >= 0.95 * np.count_nonzero(strip))


def split_component(
    inside: np.ndarray,
    band: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    axis_span: float = 1.5,
    min_area: int = 1,
    stretches: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """One region per instrument of a connected component, or None when it is one.

    Args:
        inside: boolean crop of the component.
        band: boolean crop of the view's border band (same shape).
        labels: parts labels of the crop (shaft, wrist, clasper), or None for a binary mask.
        axis_span: the seeds' axes are fitted to the first ``axis_span`` shaft widths beyond
            their entries, as the cues' axis without shaft labels.
        min_area: a seed whose region would be smaller is dropped (its pixels go to the others).
        stretches: ``contact_stretches(inside, band)`` where the caller has them already.

    Returns None (nothing to split) unless the component touches the border in two or more
    stretches that seed different instruments: for parts, a stretch seeds only when at least
    half its pixels are shaft; a stretch on the line of an earlier seed's shaft, entering the
    other way, is that shaft leaving the view. Else a list of (boolean crop, its origin (x, y)
    in ``inside``), one per seed: together they cover the component without overlap (the
    pixels are given out part by part: see the module).
    """
    if stretches is None:
        stretches = contact_stretches(inside, band)
    stretches = [s for s in stretches if len(s[0]) >= _MIN_STRETCH_PX]  # specks are no entries
    if len(stretches) < 2:
        return None
    shaft = None if labels is None else (labels == SHAFT)
    seeds = []
    for xs, ys in stretches:
        if shaft is not None and 2 * np.count_nonzero(shaft[ys, xs]) < len(xs):
            continue  # a wrist or jaw touching the border: not an entry
        seed = _seed(xs, ys, inside, shaft, axis_span)
        if seed is not None:
            seeds.append(seed)
    seeds = _distinct(seeds, inside, shaft)
    while len(seeds) >= 2:
        owner = _assign(inside, labels, seeds)
        areas = np.bincount(owner[inside & (owner >= 0)], minlength=len(seeds))
        if areas.min() >= min_area:
            break
        del seeds[int(np.argmin(areas))]  # too small to be an instrument: its seed goes
    else:
        return None
    pieces = []
    for k in range(len(seeds)):
        piece = (owner == k).view(np.uint8)
        x, y, w, h = cv2.boundingRect(piece)
        pieces.append((piece[y : y + h, x : x + w].view(bool), (x, y)))
    return pieces


class _Grid:
    """The component's pixels as a graph (8-neighbours, each step as long as it is), on a grid
    coarsened by ``factor`` when the component is large."""

    def __init__(self, inside: np.ndarray, labels: np.ndarray | None):
        h, w = inside.shape
        self.shape = (h, w)
        self.factor = f = max(1, math.ceil(math.sqrt(np.count_nonzero(inside) / _MAX_NODES)))
        small = self.coarse(inside)
        if labels is not None and f > 1:  # the highest part label present in each cell
            labels = self._pool(np.where(inside, labels, 0).astype(np.uint8))
        sh, sw = small.shape
        self.nodes = np.flatnonzero(small)
        self.index = np.full(small.shape, -1, np.int64)
        self.index.ravel()[self.nodes] = np.arange(len(self.nodes))
        ys, xs = np.divmod(self.nodes, sw)
        self.x, self.y = (xs + 0.5) * f - 0.5, (ys + 0.5) * f - 0.5  # crop coordinates
        self.labels = None if labels is None else labels.ravel()[self.nodes]
        tails, heads, lengths = [], [], []
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = self.index[: sh - dy, max(0, -dx) : sw - max(0, dx)]
            b = self.index[dy:, max(0, dx) : sw + min(0, dx) or None]
            both = (a >= 0) & (b >= 0)
            a, b = a[both], b[both]
            tails += [a, b]
            heads += [b, a]
            lengths.append(np.full(2 * len(a), math.hypot(dx, dy) * f))
        tail, head = np.concatenate(tails), np.concatenate(heads)
        order = np.argsort(tail, kind="stable")
        self.tail, self.head = tail[order], head[order]
        self.length = np.concatenate(lengths)[order]

    def _pool(self, crop: np.ndarray) -> np.ndarray:
        """The maximum of each cell of ``factor`` × ``factor`` pixels."""
        f, (h, w) = self.factor, crop.shape
        pad = np.zeros((-(-h // f) * f, -(-w // f) * f), crop.dtype)
        pad[:h, :w] = crop
        out = pad[::f, ::f].copy()
        for dy in range(f):
            for dx in range(f):
                np.maximum(out, pad[dy::f, dx::f], out=out)
        return out

    def coarse(self, crop: np.ndarray) -> np.ndarray:
        """A boolean crop on the graph's grid: a cell is set when any of its pixels is."""
        return crop if self.factor == 1 else self._pool(crop)

    def paths(self, allowed: np.ndarray, weight: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Cost per node of the cheapest path that starts at some node at its ``start`` cost
        (inf: not a start) and steps through ``allowed`` nodes at ``weight`` per edge; inf
        where unreached."""
        n = len(self.nodes)
        begin = np.flatnonzero(np.isfinite(start))
        if not len(begin):
            return np.full(n, np.inf)
        keep = allowed[self.tail] & allowed[self.head]
        # one more node, n, linked to each start node at its start cost
        tail = np.concatenate([self.tail[keep], np.full(len(begin), n)])
        head = np.concatenate([self.head[keep], begin])
        cost = np.concatenate([weight[keep], start[begin]]) + 1e-9  # 0 would be no edge
        indptr = np.searchsorted(tail, np.arange(n + 2))
        graph = csr_matrix((cost, head, indptr), shape=(n + 1, n + 1))
        return dijkstra(graph, indices=n)[:n]


def _strip_costs(grid: _Grid, seed: _Seed) -> np.ndarray:
    """Per node: how far it lies outside the seed's shaft strip or behind its entry, in shaft
    half-widths (0 inside the strip)."""
    ox, oy = grid.x - seed.centre[0], grid.y - seed.centre[1]
    across = np.abs(ox * -seed.axis[1] + oy * seed.axis[0])
    along = (grid.x - seed.entry[0]) * seed.axis[0] + (grid.y - seed.entry[1]) * seed.axis[1]
    outside = np.maximum(across - 1.2 * seed.half_width, 0.0) / seed.half_width
    behind = np.maximum(-along - seed.half_width, 0.0) / seed.half_width
    return _OFF_STRIP * np.minimum(outside, 2.0) + _BEHIND * np.minimum(behind, 2.0)


def _compete(grid: _Grid, region: np.ndarray, owner: np.ndarray,
             extra: list[np.ndarray], starts: list[np.ndarray]) -> None:  # fmt: skip
    """Give each ``region`` node to the instrument that reaches it most cheaply: from its
    ``starts`` (start cost per node, inf for none), through ``region``, where a step into a
    node costs its length × (1 + ``extra``)."""
    costs = []
    for penalty, start in zip(extra, starts, strict=True):
        allowed = region | np.isfinite(start)
        cost = grid.paths(allowed, grid.length * (1.0 + penalty[grid.head]), start)
        costs.append(np.where(region, cost, np.inf))
    costs = np.stack(costs)
    reached = region & np.isfinite(costs).any(axis=0)
    owner[reached] = np.argmin(costs[:, reached], axis=0)


def _cone(grid: _Grid, apex: np.ndarray, direction: np.ndarray, *, spread: float,
          radius: float) -> np.ndarray:  # fmt: skip
    """Per node: how far (radians, beyond ``spread``) the direction from ``apex`` turns away
    from ``direction``, times ``_TURN``; 0 within ``radius`` of the apex."""
    dx, dy = grid.x - apex[0], grid.y - apex[1]
    turn = np.abs(np.arctan2(dx * -direction[1] + dy * direction[0],
                             dx * direction[0] + dy * direction[1]))  # fmt: skip
    penalty = _TURN * np.maximum(turn - spread, 0.0)
    return np.where(dx * dx + dy * dy <= radius * radius, 0.0, penalty)


def _ray_distance(x: np.ndarray, y: np.ndarray, apex: np.ndarray, direction: np.ndarray,
                  half_width: float, opening: float) -> np.ndarray:  # fmt: skip
    """Per point (x, y): its distance from the ray from ``apex`` along ``direction`` (started
    one shaft half-width behind the apex, an estimate), relative to a width that grows by
    ``opening`` per pixel along the ray from half a shaft half-width: how far it lies outside
    a cone of that opening; plus ``_ALONG`` per shaft half-width along the ray, so that of
    two rays through a pixel the one from the nearer apex wins."""
    dx, dy = x - apex[0], y - apex[1]
    t = np.maximum(dx * direction[0] + dy * direction[1], -half_width)
    off = np.hypot(dx - t * direction[0], dy - t * direction[1])
    t = np.maximum(t, 0.0)
    return off / (0.5 * half_width + opening * t) + _ALONG * t / half_width


def _straight_parts(grid: _Grid, seeds: list[_Seed]) -> np.ndarray:
    """Nodes (without labels) in some seed's shaft strip, from its entry up to where the strip
    is no longer filled: the first stretch of 2 px along the axis, past one shaft width,
    where less than 85 % of the strip's middle 80 % is instrument."""
    straight = np.zeros(len(grid.nodes), bool)
    for seed in seeds:
        along = (grid.x - seed.entry[0]) * seed.axis[0] + (grid.y - seed.entry[1]) * seed.axis[1]
        side = np.abs((grid.x - seed.centre[0]) * -seed.axis[1]
                      + (grid.y - seed.centre[1]) * seed.axis[0])  # fmt: skip
        step = max(2.0, float(grid.factor))
        middle = (side <= 0.8 * seed.half_width) & (along >= 0)
        bins = (along[middle] / step).astype(np.int64)
        counts = np.bincount(bins) * grid.factor**2
        expected = 2 * 0.8 * seed.half_width * step
        start = int(2 * seed.half_width / step)
        short = np.flatnonzero(counts[start:] < 0.85 * expected)
        end = (start + short[0]) * step if len(short) else (len(counts) + 1) * step
        straight |= (side <= 1.2 * seed.half_width) & (along >= -seed.half_width) & (along < end)
    return straight


def _cut_off(grid: _Grid, left: np.ndarray, owner: np.ndarray, costs: np.ndarray, *,
             limit: float = np.inf, min_nodes: float = 0) -> None:  # fmt: skip
    """Give each 8-connected piece of the ``left`` nodes with at least ``min_nodes`` nodes to
    the instrument of least mean cost (``costs``: instruments × nodes), if at most ``limit``."""
    if not left.any():
        return
    image = np.zeros(grid.index.shape, np.uint8)
    image.ravel()[grid.nodes[left]] = 1
    count, pieces = cv2.connectedComponents(image, connectivity=8)
    piece = pieces.ravel()[grid.nodes]
    for label in range(1, count):
        members = piece == label
        if np.count_nonzero(members) >= min_nodes:
            mean = costs[:, members].mean(axis=1)
            if mean.min() <= limit:
                owner[members] = int(np.argmin(mean))


def _absorb_specks(owner: np.ndarray, count: int, *, min_nodes: float) -> None:
    """Give each piece of an instrument's region that is not its largest and has fewer than
    ``min_nodes`` pixels to the instrument that owns most of the pixels around it."""
    for k in range(count):
        n, pieces, stats, _ = cv2.connectedComponentsWithStats(
            (owner == k).view(np.uint8), connectivity=8
        )
        if n <= 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        for label in range(1, n):
            if label == largest or stats[label, cv2.CC_STAT_AREA] >= min_nodes:
                continue
            speck = pieces == label
            ring = cv2.dilate(speck.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
            around = owner[ring & ~speck]
            around = around[(around >= 0) & (around != k)]
            if len(around):
                owner[speck] = np.bincount(around).argmax()


def _hinge(grid: _Grid, wrist: np.ndarray, end: np.ndarray, axis: np.ndarray):
    """Where an instrument's jaws start, and their direction: the far end of its wrist nodes
    (95th percentile along the line from the shaft's end through their centroid), or the
    shaft's end and axis when no wrist is in sight."""
    if not wrist.any():
        return end, axis
    mid = np.array([grid.x[wrist].mean(), grid.y[wrist].mean()])
    if np.hypot(*(mid - end)) <= 1.0:
        return end, axis
    direction = (mid - end) / np.hypot(*(mid - end))
    along = (grid.x[wrist] - end[0]) * direction[0] + (grid.y[wrist] - end[1]) * direction[1]
    return end + np.percentile(along, 95) * direction, direction


def _assign(inside: np.ndarray, labels: np.ndarray | None, seeds: list[_Seed]) -> np.ndarray:
    """Index of the seed each pixel of ``inside`` belongs to (−1 outside)."""
    grid = _Grid(inside, labels)
    n = len(grid.nodes)
    owner = np.full(n, -1, np.int64)
    min_nodes = seeds[0].half_width ** 2 / grid.factor**2  # pieces smaller are specks
    # 1. Shafts (without labels: the straight parts of the strips): from each entry, along
    #    the shaft pixels, cheapest along its own strip.
    strips = [_strip_costs(grid, seed) for seed in seeds]
    shaft = _straight_parts(grid, seeds) if grid.labels is None else grid.labels == SHAFT
    entries = []
    for seed in seeds:
        start = np.full(n, np.inf)
        nodes = grid.index[seed.ys // grid.factor, seed.xs // grid.factor]
        start[nodes[shaft[nodes]]] = 0.0
        entries.append(start)
    _compete(grid, shaft, owner, strips, entries)
    strip = np.stack(strips)
    ends = []  # where each shaft ends, on its axis (the 99th percentile: specks aside)
    for k, seed in enumerate(seeds):
        mine = shaft & (owner == k)
        along = ((grid.x[mine] - seed.entry[0]) * seed.axis[0]
                 + (grid.y[mine] - seed.entry[1]) * seed.axis[1])  # fmt: skip
        ends.append(seed.entry + (np.percentile(along, 99) if len(along) else 0.0) * seed.axis)
    #    Shaft pieces cut off from their entry (by another instrument over them): the strip
    #    they lie in.
    _cut_off(grid, shaft & (owner < 0), owner, strip, limit=_OFF_STRIP * 0.5,
             min_nodes=min_nodes)  # fmt: skip
    if grid.labels is None:
        # 2. Without labels, what lies beyond: the shaft end whose axis it lies nearest,
        #    within a cone wide enough for a wrist bent by ~35°.
        by_ray = owner < 0
        cones = [(end, seed.axis, seed.half_width, _BEND)
                 for end, seed in zip(ends, seeds, strict=True)]  # fmt: skip
    else:
        # 2. Wrists: from each shaft's end along wrist pixels, or in a jump over whatever
        #    hides them (dearer per pixel), at a cost for turning away from the shaft.
        region = (grid.labels == WRIST) & (owner < 0)
        cones, starts = [], []
        for end, seed, k in zip(ends, seeds, range(len(seeds)), strict=True):
            distance = np.hypot(grid.x - end[0], grid.y - end[1])
            cone = _cone(grid, end, seed.axis, spread=_WRIST_TURN, radius=seed.half_width)
            start = _JUMP * distance * (1.0 + cone)
            begin = shaft & (owner == k) & (distance <= 1.5 * seed.half_width)
            start[begin] = 0.0
            cones.append(cone)
            starts.append(np.where(region | begin, start, np.inf))
        _compete(grid, region, owner, cones, starts)
        # 3. Claspers: the instrument whose jaws' cone, from the far end of its wrist along
        #    the wrist's direction, holds the pixel best.
        by_ray = (grid.labels == CLASPER) & (owner < 0)
        cones = []
        for end, seed, k in zip(ends, seeds, range(len(seeds)), strict=True):
            wrist = (grid.labels == WRIST) & (owner == k)
            apex, direction = _hinge(grid, wrist, end, seed.axis)
            cones.append((apex, direction, seed.half_width, _OPEN))
    rays = np.stack([_ray_distance(grid.x, grid.y, *cone) for cone in cones])
    owner[by_ray] = np.argmin(rays[:, by_ray], axis=0)
    # 4. Anything left (cut off from its instrument): the instrument whose shaft it continues,
    #    turning least from its end.
    turns = np.stack([_cone(grid, end, seed.axis, spread=0.0, radius=0.0)
                      for end, seed in zip(ends, seeds, strict=True)])  # fmt: skip
    _cut_off(grid, owner < 0, owner, turns)
    coarse = np.full(grid.index.shape, -1, np.int16)
    coarse.ravel()[grid.nodes] = owner
    _absorb_specks(coarse, len(seeds), min_nodes=min_nodes)
    if grid.factor == 1:
        return coarse
    # Back to full resolution: each pixel takes its cell's owner; the pixels decided by the
    # cones (claspers; without labels, what lies beyond the shafts) are decided again, pixel
    # by pixel, which keeps the tips sharp.
    h, w = grid.shape
    f = grid.factor
    full = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)[:h, :w]
    full[~inside] = -1
    rows, cols = np.divmod(grid.nodes[by_ray], grid.index.shape[1])
    if not len(rows):
        return full
    cells = np.zeros((rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), bool)
    cells[rows - rows.min(), cols - cols.min()] = True
    y0, x0 = rows.min() * f, cols.min() * f  # the cells' box, in pixels
    again = np.repeat(np.repeat(cells, f, axis=0), f, axis=1)[: h - y0, : w - x0]
    box = (slice(y0, y0 + again.shape[0]), slice(x0, x0 + again.shape[1]))
    again &= inside[box]
    if labels is not None:
        again &= labels[box] == CLASPER
    ys, xs = np.nonzero(again)
    if len(xs):
        ys, xs = ys + y0, xs + x0
        rays = np.stack([_ray_distance(xs, ys, *cone) for cone in cones])
        full[ys, xs] = np.argmin(rays, axis=0)
    return full


def band_floor(reach2: float, band: float) -> float:
    """The squared distance from which a pixel lies within ``band`` of the farthest one (at
    squared distance ``reach2``): (sqrt(reach2) − band)², capped at reach2 (sqrt(x)² may round
    above x, and then no pixel would be within the band)."""
    return min(max(math.sqrt(reach2) - band, 0.0) ** 2, reach2)


def far_end(
    inside: np.ndarray,
    origin: tuple[int, int],
    entry: np.ndarray,
    tip: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    *,
    probability: float,
    tip_band: float,
    reach: float,
) -> np.ndarray | None:
    """The far end (x, y) of an instrument read from a model's confidence map, or None when it
    is the mask's own.

    A segmentation model's mask stops short of thin, pointed jaws: where the instrument's
    probability falls below the other classes' together, the pixel is background, and coarse
    logits upsampled make that happen some pixels before the true end. Here, within ``reach``
    pixels of the mask's ``tip``, the instrument is extended by the background pixels (label
    0) whose instrument probability, 1 − ``confidence`` (the background's winning
    probability), is at least ``probability`` and that connect to it; if that takes it
    farther from ``entry`` than the mask's own pixels reach, the far end is, as the tip, the
    centroid of the extended pixels within ``tip_band`` of the farthest.

    Args:
        inside: boolean crop of the instrument at ``origin`` (x, y) in the frame.
        entry, tip: the instrument's entry point and tip from its mask (frame coordinates).
        labels: the frame's label mask; confidence: the frame's confidence map (float 0..1,
            or uint8 probability × 255).
    """
    r = math.ceil(reach) + 1
    cx, cy = round(float(tip[0])), round(float(tip[1]))
    x0, y0 = max(cx - r, 0), max(cy - r, 0)
    x1, y1 = min(cx + r + 1, labels.shape[1]), min(cy + r + 1, labels.shape[0])
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    disc = (xs - tip[0]) ** 2 + (ys - tip[1]) ** 2 <= reach * reach
    scale = 255.0 if confidence.dtype == np.uint8 else 1.0
    # background where the instrument is likely enough: 1 − conf ≥ p, i.e. conf ≤ 1 − p
    unsure = (labels[y0:y1, x0:x1] == 0) & (confidence[y0:y1, x0:x1] <= (1.0 - probability) * scale)
    unsure &= disc
    if not unsure.any():
        return None
    own = np.zeros(disc.shape, bool)  # the instrument's pixels in the window
    ox, oy = origin
    h, w = inside.shape
    ax0, ay0, ax1, ay1 = max(x0, ox), max(y0, oy), min(x1, ox + w), min(y1, oy + h)
    if ax0 < ax1 and ay0 < ay1:
        own[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = inside[ay0 - oy : ay1 - oy,
                                                               ax0 - ox : ax1 - ox]  # fmt: skip
    own &= disc
    if not own.any():
        return None
    count, pieces = cv2.connectedComponents((own | unsure).view(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[pieces[own]] = True
    keep[0] = False
    grown = keep[pieces]  # the instrument near its tip, and what joins it
    dist2 = (xs - entry[0]) ** 2 + (ys - entry[1]) ** 2
    farthest = dist2[grown].max()
    if farthest <= dist2[own].max():  # not beyond the mask's own reach
        return None
    far = grown & (dist2 >= band_floor(farthest, tip_band))
    fy, fx = np.nonzero(far)
    return np.array([int(fx.sum()) / len(fx) + x0, int(fy.sum()) / len(fy) + y0])
