"""Synthetic endoscopic surgery: the embedded default data set.

A seeded generator renders a circular endoscopic view of pink tissue with one to three
articulated instruments (shaft, wrist, two-jawed clasper) that pivot about a trocar, slide in
and out, bend at the wrist and open their jaws. Each frame comes with exact ground truth:
`parts` and `types` masks (the EndoVis 2017 label sets of ``surgseg.tasks``), an `instances`
mask, and per instrument its tip, shaft axis and entry point.

Geometry convention (shared with the pose cues measured from masks): the entry is where the
shaft's centre line crosses the field-of-view circle, the axis is the unit shaft direction
pointing into the view, and the tip is the point of the drawn clasper farthest from the entry
(for closed jaws, the midpoint of the two jaw ends).

``write_clip`` stores a clip as a folder: ``video.mp4``, ``masks.npz``, ``instruments.jsonl``
and, last, ``clip.json``; ``load_clip`` reads it back.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from surgseg.atomic import atomic_path, write_json
from surgseg.encode import CODECS, VideoWriter
from surgseg.errors import ConfigError, DatasetError
from surgseg.tasks import CLASPER, INSTRUMENT_TYPES, SHAFT, WRIST, class_names

GENERATOR_VERSION = 1
CLIP_FILE = "clip.json"
MASKS_FILE = "masks.npz"
INSTRUMENTS_FILE = "instruments.jsonl"
MAX_INSTRUMENTS = 3

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_CROSSING_STREAM = 0x63726F73  # the random stream of the crossings setting: [seed, this]
_MAX_BEND = math.radians(35.0)


@dataclass(frozen=True)
class _Look:
    """Per-type appearance: shaft tint and clasper shape."""

    tint: tuple[float, float, float]
    jaw_length: float
    jaw_width: float
    jaw_tip: str  # "round", "blunt" or "pointed"


# EndoVis 2017 type label (1..7) → appearance.
_LOOKS = {
    1: _Look((1.00, 1.00, 1.06), 1.05, 0.85, "round"),  # bipolar forceps
    2: _Look((1.03, 1.00, 0.96), 1.10, 1.00, "round"),  # prograsp forceps
    3: _Look((0.94, 0.97, 1.02), 0.80, 1.25, "blunt"),  # large needle driver
    4: _Look((0.80, 0.80, 0.84), 1.25, 1.15, "blunt"),  # vessel sealer
    5: _Look((1.06, 1.04, 1.00), 1.00, 0.80, "round"),  # grasping retractor
    6: _Look((1.00, 0.97, 0.92), 1.00, 0.75, "pointed"),  # monopolar curved scissors
    7: _Look((0.97, 1.00, 1.00), 0.90, 1.00, "blunt"),  # other
}


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _perp(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]])


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → OpenCV fixed-point int32 (``_SHIFT`` fractional bits)."""
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance noise that varies over about ``cell`` pixels."""
    step = max(1.0, cell / 4)  # sample finely, blur, then upsample: no grid artefacts
    grid = rng.standard_normal((round(h / step) + 8, round(w / step) + 8)).astype(np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 2.0)[4:-4, 4:-4]
    noise = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _wave(t: float, amp: float, freqs: np.ndarray, phases: np.ndarray) -> float:
    """A smooth oscillation in [-amp, amp]: two sines weighted 0.7 / 0.3."""
    s = np.sin(2.0 * np.pi * freqs * t + phases)
    return amp * float(0.7 * s[0] + 0.3 * s[1])


def _tissue(
    rng: np.random.Generator, h: int, w: int, scale: float, *, highlights: bool
) -> np.ndarray:
    """Static tissue texture (H×W×3 uint8 RGB): multi-scale pink/red noise, lit folds, fat,
    vessels and wet specular glints. ``scale`` is the field-of-view radius in pixels."""
    cells, amps = (0.8, 0.4, 0.18, 0.08, 0.03), (1.0, 0.6, 0.35, 0.2, 0.12)
    octaves = [
        a * _smooth_noise(rng, h, w, max(1.5, c * scale)) for c, a in zip(cells, amps, strict=True)
    ]
    fbm = sum(octaves) / 1.25
    relief = octaves[0] + octaves[1] + octaves[2]  # folds, lit from the upper left
    gy, gx = np.gradient(relief)
    slope = cv2.GaussianBlur(-(gx + gy), (0, 0), max(1.0, 0.04 * scale))
    slope /= slope.std() + 1e-6
    lit = 1.0 + 0.22 * np.tanh(0.8 * slope)

    dark, light = np.array([150, 38, 46], np.float32), np.array([246, 146, 130], np.float32)
    tone = (1.0 / (1.0 + np.exp(-1.2 * fbm)))[..., None]
    color = dark + (light - dark) * tone
    fat = _smoothstep(1.0, 2.0, _smooth_noise(rng, h, w, 0.4 * scale)) * rng.uniform(0.0, 0.7)
    color += (np.array([236, 196, 128], np.float32) - color) * fat[..., None]

    vessels = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(4, 10)):
        _draw_vessel(vessels, rng, h, w, scale, thickness=rng.uniform(1.0, 4.0))
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.8, scale / 200))[..., None]
    color += (np.array([128, 14, 36], np.float32) - color) * (0.55 * vessels)
    color *= lit[..., None]

    if highlights:  # wet glints where folds face the light, with a soft glow around them
        wet = 0.9 * slope + 0.6 * _smooth_noise(rng, h, w, max(1.5, 0.04 * scale))
        glint = cv2.GaussianBlur(_smoothstep(2.7, 3.3, wet), (0, 0), max(0.6, scale / 400))
        glow = cv2.GaussianBlur(glint, (0, 0), max(1.5, scale / 60))
        color += (255.0 * np.clip(glint + 0.6 * glow, 0.0, 1.0))[..., None]
    return np.clip(color, 0, 255).astype(np.uint8)


def _draw_vessel(
    canvas: np.ndarray, rng: np.random.Generator, h: int, w: int, scale: float, *, thickness: float
) -> None:
    """A meandering vessel (random walk with slowly turning heading) and a few branches."""
    p = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    heading, step = rng.uniform(0, 2 * np.pi), 0.025 * scale
    points = [p]
    for _ in range(rng.integers(15, 45)):
        heading += rng.normal(0.0, 0.25)
        p = p + step * np.array([math.cos(heading), math.sin(heading)])
        points.append(p)
    line = _fixed(np.array(points))
    width = max(1, round(thickness * scale / 240))
    cv2.polylines(canvas, [line], False, 1.0, width, cv2.LINE_AA, _SHIFT)
    if thickness > 1.5:
        for start in rng.choice(len(points), size=2):
            sub = points[start]
            branch = [sub]
            bh = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            for _ in range(rng.integers(5, 15)):
                bh += rng.normal(0.0, 0.3)
                sub = sub + step * np.array([math.cos(bh), math.sin(bh)])
                branch.append(sub)
            cv2.polylines(canvas, [_fixed(np.array(branch))], False, 0.7, 1, cv2.LINE_AA, _SHIFT)


def _ellipse(canvas: np.ndarray, center, axes, angle: float, value) -> None:
    cv2.ellipse(canvas, _fixed(center), _fixed(axes), angle, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)


@dataclass
class _Pose:
    """One instrument's drawn geometry at one instant (pixel coordinates, float)."""

    entry: np.ndarray
    axis: np.ndarray
    shaft: tuple[np.ndarray, np.ndarray, float, float]  # start, end, width at start, at end
    wrist: tuple[np.ndarray, np.ndarray, float, float]
    joints: list[tuple[np.ndarray, float]]  # wrist joints: centre, radius
    jaws: list[np.ndarray]  # two polygons
    tip: np.ndarray


@dataclass
class _Instrument:
    """One instrument's fixed parameters for a clip; ``pose(t)`` moves it smoothly."""

    id: int
    type: int
    pivot: np.ndarray  # remote centre of motion (trocar), outside the view
    inward: float  # heading from the pivot to the view centre, radians
    size: float  # pixels: the field-of-view radius times a per-instrument scale
    motion: dict[str, tuple[float, float, np.ndarray, np.ndarray]]  # name → mean, amp, f, φ

    def _value(self, name: str, t: float) -> float:
        mean, amp, freqs, phases = self.motion[name]
        return mean + _wave(t, amp, freqs, phases)

    def pose(self, t: float, center: np.ndarray, radius: float) -> _Pose:
        look, k = _LOOKS[self.type], self.size
        u = np.array([math.cos(self.inward), math.sin(self.inward)])
        u = _rot(u, self._value("pivot", t))
        # Entry: where the ray pivot + s·u first crosses the field-of-view circle.
        d = self.pivot - center
        b = float(d @ u)
        s_in = -b - math.sqrt(b * b - (float(d @ d) - radius * radius))
        entry = self.pivot + s_in * u
        width_in, width_out = 0.2 * k, 0.16 * k
        shaft_end = entry + self._value("depth", t) * radius * u
        v = _rot(u, self._value("bend", t))
        wrist_width = 0.13 * k
        hinge = shaft_end + 0.2 * k * v
        jaw_length, jaw_width = 0.2 * k * look.jaw_length, 0.065 * k * look.jaw_width
        opening = max(0.0, self._value("jaw", t))
        jaws = [
            _jaw(hinge, _rot(v, side * opening / 2), side, jaw_length, jaw_width, look)
            for side in (-1, 1)
        ]
        corners = np.concatenate(jaws)
        tip = corners[np.argmax(np.linalg.norm(corners - entry, axis=1))]
        return _Pose(
            entry=entry,
            axis=u,
            shaft=(entry - 1.5 * width_in * u, shaft_end, width_in, width_out),
            wrist=(shaft_end - 0.2 * wrist_width * v, hinge, wrist_width, wrist_width),
            joints=[(shaft_end, 0.47 * width_out), (hinge, 0.42 * wrist_width)],
            jaws=jaws,
            tip=tip,
        )


def _jaw(
    hinge: np.ndarray, d: np.ndarray, side: int, length: float, width: float, look: _Look
) -> np.ndarray:
    """Polygon of one jaw: a straight inner edge along ``d`` and a profiled outer edge that
    meets it at the jaw's end point, so two closed jaws share one tip."""
    s = np.linspace(1.0, -0.15, 12)
    sp = np.clip(s, 0.0, 1.0)
    if look.jaw_tip == "pointed":
        profile = (1.0 - sp) ** 0.8
    elif look.jaw_tip == "blunt":
        profile = (1.0 - sp**8) ** 0.25
    else:
        profile = np.sqrt(1.0 - sp**3)
    n = side * _perp(d)
    outer = hinge + np.outer(s * length, d) + np.outer(profile * width, n)
    return np.vstack([hinge - 0.15 * length * d, hinge + length * d, outer[1:]])


def _strips(start, end, w0, w1, count: int):
    """Split a tapered bar into ``count`` strips across its width; yield (polygon, t) with t
    the strip's centre across the width in [-1, 1]."""
    axis = (end - start) / (np.linalg.norm(end - start) + 1e-9)
    n = _perp(axis)
    edges = np.linspace(-1.0, 1.0, count + 1)
    for a, b in itertools.pairwise(edges):
        poly = np.array(
            [
                start + a * w0 / 2 * n,
                end + a * w1 / 2 * n,
                end + b * w1 / 2 * n,
                start + b * w0 / 2 * n,
            ]
        )
        yield poly, (a + b) / 2


def _bar_outline(bar) -> np.ndarray:
    start, end, w0, w1 = bar
    n = _perp((end - start) / (np.linalg.norm(end - start) + 1e-9))
    return np.array([start + w0 / 2 * n, end + w1 / 2 * n, end - w1 / 2 * n, start - w0 / 2 * n])


def _draw_labels(canvas: np.ndarray, pose: _Pose) -> None:
    """Paint one instrument's part labels (shaft, wrist, clasper) into ``canvas``."""
    cv2.fillPoly(canvas, [_fixed(_bar_outline(pose.shaft))], SHAFT, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(canvas, [_fixed(_bar_outline(pose.wrist))], WRIST, cv2.LINE_8, _SHIFT)
    for center, radius in pose.joints:
        cv2.circle(
            canvas, _fixed(center), round(radius * (1 << _SHIFT)), WRIST, -1, cv2.LINE_8, _SHIFT
        )
    cv2.fillPoly(canvas, [_fixed(j) for j in pose.jaws], CLASPER, cv2.LINE_8, _SHIFT)


def _metal(t: float, base: np.ndarray, shine: float) -> tuple[float, ...]:
    """Colour of a metal cylinder at width position t ∈ [-1, 1], lit from the upper left."""
    diffuse = 0.35 + 0.65 * math.sqrt(max(0.0, 1.0 - t * t))
    spec = shine * math.exp(-(((t + 0.35) / 0.2) ** 2))
    return tuple(float(c) for c in np.clip(base * diffuse + spec, 0, 255))


def _paint(image: np.ndarray, pose: _Pose, look: _Look, highlights: bool) -> None:
    """Paint one instrument's shaded colours into ``image`` (uint8 RGB, anti-aliased)."""
    tint = np.array(look.tint)
    shine = 120.0 if highlights else 35.0
    for bar, base, count in ((pose.shaft, 165.0, 14), (pose.wrist, 85.0, 8)):
        for poly, t in _strips(*bar, count):
            cv2.fillPoly(image, [_fixed(poly)], _metal(t, base * tint, shine), cv2.LINE_AA, _SHIFT)
    for center, radius in pose.joints:
        color = _metal(0.0, 70.0 * tint, 0.3 * shine)
        cv2.circle(
            image, _fixed(center), round(radius * (1 << _SHIFT)), color, -1, cv2.LINE_AA, _SHIFT
        )
    if highlights:  # a glint along the shaft's highlight stripe
        start, end, w0, w1 = pose.shaft
        n = _perp(pose.axis)
        spot = end + 0.35 * (start - end) - 0.35 * (w0 + w1) / 4 * n
        angle = math.degrees(math.atan2(pose.axis[1], pose.axis[0]))
        _ellipse(image, spot, (0.5 * w1, 0.07 * w1), angle, (250, 250, 250))
    for jaw in pose.jaws:
        cv2.fillPoly(image, [_fixed(jaw)], tuple(150.0 * tint), cv2.LINE_AA, _SHIFT)
        base = (jaw[0] + jaw[-1]) / 2
        ridge = np.array([base, 0.8 * jaw[1] + 0.2 * base])
        bright = (235, 235, 235) if highlights else (190, 190, 190)
        cv2.polylines(image, [_fixed(ridge)], False, bright, 1, cv2.LINE_AA, _SHIFT)


@dataclass
class SyntheticFrame:
    """One rendered frame and its exact ground truth.

    Attributes:
        image: H×W×3 uint8 RGB.
        parts: H×W uint8, 0 background, 1 shaft, 2 wrist, 3 clasper.
        types: H×W uint8, 0 background, 1..7 EndoVis 2017 instrument type.
        instances: H×W uint8, 0 background, instrument id + 1.
        instruments: per instrument (by id): ``id``, ``type``, ``name``, ``tip`` [x, y],
            ``axis`` [dx, dy], ``entry`` [x, y], ``visible``, ``area`` (pixels in the view
            before occlusion), ``visible_area`` (after), ``layer`` (0 = painted first).
    """

    image: np.ndarray
    parts: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    instruments: list[dict]

    def mask(self, task: str) -> np.ndarray:
        """Label mask for ``task`` (binary, parts or types)."""
        return _task_mask(task, self.parts, self.types)


def _task_mask(task: str, parts: np.ndarray, types: np.ndarray) -> np.ndarray:
    class_names(task)
    if task == "binary":
        return (parts > 0).astype(np.uint8)
    return parts if task == "parts" else types


def check_clip_settings(settings: Mapping[str, Any], *, prefix: str = "") -> None:
    """Refuse a generator setting that cannot work with a ConfigError naming it: the checks
    of ``SyntheticSurgery`` and ``write_clip`` (which call this), made callable before
    anything is written. Only the settings given are checked; ``prefix`` goes before each
    name (``clips.`` names ``clips.width``)."""
    known = {"num_frames", "width", "height", "fps", "seed", "num_instruments", "smoke", "blur",
             "highlights", "crossings", "still", "codec"}  # fmt: skip
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not a generator setting ({sorted(known)})")

    def refuse(key: str, what: str, value: object) -> ConfigError:
        return ConfigError(f"{prefix}{key} must be {what}, got {value!r}")

    def integer(value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)

    given = settings.get
    if "num_frames" in settings and not (integer(given("num_frames")) and given("num_frames") >= 1):
        raise refuse("num_frames", "an integer ≥ 1", given("num_frames"))
    for key in ("width", "height"):
        if key in settings and not (integer(given(key)) and given(key) >= 32):  # view, tissue
            raise refuse(key, "an integer ≥ 32", given(key))
    fps = given("fps", 25.0)
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool | np.bool_)
            and math.isfinite(fps) and fps > 0):  # fmt: skip
        raise refuse("fps", "a positive number", fps)
    if not (integer(given("seed", 0)) and given("seed", 0) >= 0):
        raise refuse("seed", "an integer ≥ 0", given("seed"))
    count = given("num_instruments")
    if count is not None and not (integer(count) and 1 <= count <= MAX_INSTRUMENTS):
        raise refuse("num_instruments", f"1..{MAX_INSTRUMENTS} or null", count)
    for key in ("smoke", "blur", "highlights", "still"):
        if key in settings and not isinstance(given(key), bool | np.bool_):
            raise refuse(key, "true or false", given(key))
    crossings = given("crossings", 0.0)
    if not (isinstance(crossings, numbers.Real) and not isinstance(crossings, bool | np.bool_)
            and 0.0 <= crossings <= 1.0):  # fmt: skip
        raise refuse("crossings", "a probability in 0..1", crossings)
    if "codec" not in settings:
        return
    codec = given("codec")
    if not isinstance(codec, str) or codec not in CODECS or CODECS[codec][0] == "gray":
        rgb = sorted(c for c, (fmt, _) in CODECS.items() if fmt != "gray")  # ffv1: masks only
        raise refuse("codec", f"one of {rgb}", codec)
    if CODECS[codec][0].startswith("yuv"):  # chroma at half the size: even sides
        for key in ("width", "height"):
            if given(key, 0) % 2:
                raise refuse(key, f"even for codec {codec}", given(key))


@dataclass
class SyntheticSurgery:
    """A seeded synthetic endoscopic clip with random access: ``render(i)`` depends only on
    (seed, i). Clip-level content (tissue, instruments, their motion) is drawn from ``seed``.

    Args:
        width, height: frame size in pixels.
        seed: clip seed.
        num_instruments: 1..3, or None for a random count.
        fps: frame rate; motion is a function of time ``index / fps``.
        smoke, blur, highlights: allow surgical smoke (on some clips), blurred frames (some
            frames) and specular highlights.
        crossings: probability (0..1) that the clip's first two instruments are aimed at one
            point, so that they cross, touch and part again as they move (a clip drawn with one
            instrument gets a second). 0 (the default) leaves every clip as it was: the choice
            and the aiming draw from a random stream of their own.
        still: the instruments hold still (at their pose of time 0); the tissue still
            breathes, smoke drifts and frames blur.
    """

    width: int = 640
    height: int = 512
    seed: int = 0
    num_instruments: int | None = None
    fps: float = 25.0
    smoke: bool = True
    blur: bool = True
    highlights: bool = True
    crossings: float = 0.0
    still: bool = False
    fov: tuple[float, float, float] = field(init=False)  # centre x, centre y, radius
    has_smoke: bool = field(init=False)
    crossing: bool = field(init=False)  # the first two instruments are aimed to cross

    def __post_init__(self) -> None:
        check_clip_settings({f.name: getattr(self, f.name) for f in fields(self) if f.init})
        rng = np.random.default_rng(self.seed)
        w, h = self.width, self.height
        half = min(w, h) / 2
        radius = half * rng.uniform(0.9, 0.98)
        slack = half - radius
        cx, cy = w / 2 + rng.uniform(-slack, slack), h / 2 + rng.uniform(-slack, slack)
        self.fov = (float(cx), float(cy), float(radius))
        self._center = np.array([cx, cy])

        self._margin = max(2, round(0.03 * min(w, h)))
        m = self._margin
        self._tissue = _tissue(rng, h + 2 * m, w + 2 * m, radius, highlights=self.highlights)
        self._breath = (rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi, size=2))

        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = np.hypot(x - cx, y - cy)
        self._fov_mask = dist <= radius
        rho = dist / radius
        vignette = 1.0 - rng.uniform(0.4, 0.65) * rho**2.5
        edge = np.clip(radius - dist + 0.5, 0.0, 1.0)
        self._gain = (vignette * edge * self._fov_mask).astype(np.float32)

        n = self.num_instruments or int(rng.choice([1, 2, 3], p=[0.25, 0.5, 0.25]))
        types = rng.choice(len(INSTRUMENT_TYPES), size=n, replace=False) + 1
        first = rng.uniform(0, 2 * np.pi)
        self._instruments = [
            _sample_instrument(
                rng, i, int(types[i]), first + 2 * np.pi * i / n, self._center, radius
            )
            for i in range(n)
        ]
        self._order = [int(i) for i in rng.permutation(n)]  # painting order, back to front
        self.crossing = False
        if self.crossings > 0 and (self.num_instruments or 2) >= 2:
            cross = np.random.default_rng([self.seed, _CROSSING_STREAM])
            if cross.random() < self.crossings:
                self._aim_to_cross(cross, types)

        self.has_smoke = bool(self.smoke and rng.random() < 0.6)
        self._smoke = (
            rng.uniform(-0.4, 0.3),  # density offset: below zero, some frames are clear
            rng.uniform(0.05, 0.2),  # density frequency, Hz
            rng.uniform(0, 2 * np.pi),
            rng.normal(size=(6, 2)) * np.array([[1.0, 1.0]]) * 2.5,  # wave vectors (view units)
            rng.uniform(0.1, 0.5, size=6),  # wave speeds, rad/s
            rng.uniform(0, 2 * np.pi, size=6),
        )

    def _aim_to_cross(self, rng: np.random.Generator, types: np.ndarray) -> None:
        """Re-aim instruments 0 and 1 at one point near the view centre (adding instrument 1
        when the clip has only one), drawing from ``rng`` only."""
        radius = self.fov[2]
        if len(self._instruments) == 1:
            spare = np.setdiff1d(np.arange(1, len(INSTRUMENT_TYPES) + 1), types)
            heading = self._instruments[0].inward + rng.uniform(-1.0, 1.0)  # opposite side
            self._instruments.append(
                _sample_instrument(rng, 1, int(rng.choice(spare)), heading, self._center, radius)
            )
            self._order = [int(i) for i in rng.permutation(2)]
        self._instruments[:2] = _crossing_pair(rng, *self._instruments[:2], self._center, radius)
        self.crossing = True

    @property
    def instrument_types(self) -> list[int]:
        """Type label (1..7) of each instrument, by id."""
        return [inst.type for inst in self._instruments]

    def render(self, index: int) -> SyntheticFrame:
        """Render frame ``index`` (0-based) with its ground truth."""
        if index < 0:
            raise ValueError(f"frame index must be non-negative, got {index}")
        t = index / self.fps
        h, w, m = self.height, self.width, self._margin
        freq, phases = self._breath
        ox = m + round(0.9 * m * math.sin(2 * np.pi * freq * t + phases[0]))
        oy = m + round(0.9 * m * math.cos(2 * np.pi * 0.8 * freq * t + phases[1]))
        image = self._tissue[oy : oy + h, ox : ox + w].copy()

        parts = np.zeros((h, w), np.uint8)
        types = np.zeros((h, w), np.uint8)
        instances = np.zeros((h, w), np.uint8)
        canvas = np.empty((h, w), np.uint8)
        moment = 0.0 if self.still else t
        poses = [inst.pose(moment, self._center, self.fov[2]) for inst in self._instruments]
        areas = {}
        for i in self._order:
            inst = self._instruments[i]
            canvas[:] = 0
            _draw_labels(canvas, poses[i])
            drawn = (canvas > 0) & self._fov_mask
            np.copyto(parts, canvas, where=drawn)
            np.copyto(types, inst.type, where=drawn)
            np.copyto(instances, inst.id + 1, where=drawn)
            areas[i] = int(np.count_nonzero(drawn))
            _paint(image, poses[i], _LOOKS[inst.type], self.highlights)

        out = image.astype(np.float32)
        if self.has_smoke:
            alpha = self._smoke_alpha(t)
            if alpha is not None:
                out += (np.float32(235.0) - out) * alpha[..., None]
        if self.blur:
            out = _random_blur(out, np.random.default_rng([self.seed, index]), self.fov[2])
        out *= (self._gain * self._shadow(parts))[..., None]
        out += 0.5
        image = out.astype(np.uint8)

        visible = np.bincount(instances.ravel(), minlength=len(poses) + 1)
        instruments = [
            {
                "id": inst.id,
                "type": inst.type,
                "name": INSTRUMENT_TYPES[inst.type - 1],
                "tip": [float(v) for v in pose.tip],
                "axis": [float(v) for v in pose.axis],
                "entry": [float(v) for v in pose.entry],
                "visible": bool(visible[inst.id + 1] > 0),
                "area": areas[inst.id],
                "visible_area": int(visible[inst.id + 1]),
                "layer": self._order.index(inst.id),
            }
            for inst, pose in zip(self._instruments, poses, strict=True)
        ]
        return SyntheticFrame(image, parts, types, instances, instruments)

    def _shadow(self, parts: np.ndarray) -> np.ndarray:
        """Brightness factor (H×W float32) of the instruments' soft shadows on the tissue, cast
        down and to the right (computed at quarter resolution)."""
        h, w, radius = self.height, self.width, self.fov[2]
        small = cv2.resize(
            (parts > 0).astype(np.float32), (w // 4, h // 4), interpolation=cv2.INTER_AREA
        )
        shift = np.float32([[1, 0, 0.01 * radius], [0, 1, 0.015 * radius]])
        small = cv2.warpAffine(small, shift, (w // 4, h // 4))
        small = cv2.GaussianBlur(small, (0, 0), max(0.8, 0.012 * radius))
        shadow = 1.0 - 0.5 * cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        shadow[parts > 0] = 1.0
        return shadow

    def _smoke_alpha(self, t: float) -> np.ndarray | None:
        """Whitish haze opacity (H×W float32) at time ``t``, or None when the view is clear."""
        offset, freq, phase, waves, speeds, phases = self._smoke
        density = offset + 0.7 * (0.5 + 0.5 * math.sin(2 * np.pi * freq * t + phase))
        if density <= 0.0:
            return None
        gh, gw = max(4, self.height // 16), max(4, self.width // 16)
        y, x = np.mgrid[0:gh, 0:gw].astype(np.float32)
        y, x = y / max(gh, gw), x / max(gh, gw)
        field = (
            sum(
                np.cos(2 * np.pi * (k[0] * x + k[1] * y) + s * t + p)
                for k, s, p in zip(waves, speeds, phases, strict=True)
            )
            / 3.0
        )
        low = np.clip(density * (0.55 + 0.45 * field), 0.0, 0.85).astype(np.float32)
        return cv2.resize(low, (self.width, self.height), interpolation=cv2.INTER_CUBIC)


def _random_blur(image: np.ndarray, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Blur about one frame in five: Gaussian (defocus) or linear motion blur."""
    if rng.random() >= 0.2:
        return image
    if rng.random() < 0.5:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.8) * radius / 240)
    length = max(3, round(rng.uniform(0.02, 0.05) * radius)) | 1
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    angle = rng.uniform(0, np.pi)
    dx, dy = c * math.cos(angle), c * math.sin(angle)
    cv2.line(
        kernel, _fixed((c - dx, c - dy)), _fixed((c + dx, c + dy)), 1.0, 1, cv2.LINE_AA, _SHIFT
    )
    return cv2.filter2D(image, -1, kernel / kernel.sum())


def _crossing_pair(
    rng: np.random.Generator, a: _Instrument, b: _Instrument, center: np.ndarray, radius: float
) -> tuple[_Instrument, _Instrument]:
    """``a`` and ``b`` re-aimed so that their shafts meet at a point ``x`` near the view centre:
    ``b``'s trocar is moved to 45°..130° from ``a``'s around the view; each pivots about the
    direction to ``x`` with a small sway, and slides in and out about a depth that takes ``a``'s
    shaft end and ``b``'s jaws near ``x``. So the pair crosses (shaft over shaft), touches (jaws
    on a shaft, jaws on jaws) or parts, in turn, within a clip."""
    x = center + rng.uniform(0.0, 0.35) * radius * _rot(np.array([1.0, 0.0]), rng.uniform(0, 6.3))
    heading = a.inward - np.pi + rng.choice([-1, 1]) * rng.uniform(0.8, 2.3)
    distance = float(np.linalg.norm(b.pivot - center))
    b = replace(b, pivot=center + distance * np.array([math.cos(heading), math.sin(heading)]),
                inward=heading + np.pi)  # fmt: skip
    aimed = []
    for inst, reach in ((a, rng.uniform(-0.1, 0.4)), (b, rng.uniform(-0.45, 0.05))):
        outside = float(np.linalg.norm(inst.pivot - center)) - radius
        max_pivot = math.asin(0.5 * radius / (radius + outside))
        to_x = x - inst.pivot
        turn = (math.atan2(to_x[1], to_x[0]) - inst.inward + np.pi) % (2 * np.pi) - np.pi
        mean_pivot = float(np.clip(turn, -0.8 * max_pivot, 0.8 * max_pivot))
        # the entry at that pivot, and how far along the shaft x lies from it
        u = _rot(np.array([math.cos(inst.inward), math.sin(inst.inward)]), mean_pivot)
        d = inst.pivot - center
        s = float(d @ u)
        entry = inst.pivot + (-s - math.sqrt(max(s * s - float(d @ d) + radius**2, 0.0))) * u
        along = float((x - entry) @ u) / radius
        depth = float(np.clip(along + reach, 0.2, 0.85))
        _, _, freqs, phases = inst.motion["depth"]
        _, _, pfreqs, pphases = inst.motion["pivot"]
        sway = rng.uniform(0.1, 0.35) * (max_pivot - abs(mean_pivot))
        aimed.append(replace(inst, motion={
            **inst.motion,
            "depth": (depth, min(rng.uniform(0.08, 0.18), 0.95 - depth), freqs, phases),
            "pivot": (mean_pivot, sway, pfreqs, pphases),
        }))  # fmt: skip
    return aimed[0], aimed[1]


def _sample_instrument(
    rng: np.random.Generator,
    index: int,
    kind: int,
    heading: float,
    center: np.ndarray,
    radius: float,
) -> _Instrument:
    """Random trocar position and motion ranges that keep the clasper inside the view."""
    heading += rng.uniform(-0.35, 0.35)
    outside = radius * rng.uniform(0.3, 0.8)
    pivot = center + (radius + outside) * np.array([math.cos(heading), math.sin(heading)])
    # Keep the shaft within 30° of the entry radius: sin(γ) = (R + d)/R · sin(δ) ≤ 0.5.
    max_pivot = math.asin(0.5 * radius / (radius + outside))
    mean_pivot = rng.uniform(-0.4, 0.4) * max_pivot
    size = radius * rng.uniform(0.85, 1.15)

    def motion(mean: float, amp: float, lo: float, hi: float):
        return mean, amp, rng.uniform(lo, hi, size=2), rng.uniform(0, 2 * np.pi, size=2)

    return _Instrument(
        id=index,
        type=kind,
        pivot=pivot,
        inward=heading + np.pi,
        size=size,
        motion={
            "pivot": motion(mean_pivot, max_pivot - abs(mean_pivot), 0.04, 0.25),
            "depth": motion(0.5, rng.uniform(0.1, 0.22), 0.04, 0.2),  # × radius
            "bend": motion(0.0, rng.uniform(0.4, 1.0) * _MAX_BEND, 0.08, 0.4),
            "jaw": motion(rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.6), 0.1, 0.6),
        },
    )


@dataclass
class SyntheticClip:
    """A synthetic clip read back from its folder (see ``write_clip``)."""

    root: Path
    video: Path
    parts: np.ndarray  # (N, H, W) uint8
    types: np.ndarray  # (N, H, W) uint8
    instances: np.ndarray  # (N, H, W) uint8
    instruments: list[list[dict]]  # per frame, per instrument
    meta: dict

    def mask(self, task: str, index: int) -> np.ndarray:
        """Label mask of frame ``index`` for ``task`` (binary, parts or types)."""
        return _task_mask(task, self.parts[index], self.types[index])

    def __len__(self) -> int:
        return len(self.parts)


def write_clip(
    out_dir: str | Path,
    *,
    num_frames: int,
    width: int = 640,
    height: int = 512,
    fps: float = 25.0,
    seed: int = 0,
    num_instruments: int | None = None,
    smoke: bool = True,
    blur: bool = True,
    highlights: bool = True,
    crossings: float = 0.0,
    still: bool = False,
    codec: str = "libx264",
    progress: bool = False,
) -> Path:
    """Render ``num_frames`` frames into ``out_dir`` and return the folder.

    Writes ``video.mp4`` (``video.mkv`` for FFV1; pts = frame index in time base 1/fps),
    ``masks.npz`` (``parts``, ``types``, ``instances``: (N, H, W) uint8),
    ``instruments.jsonl`` (one line per frame) and finally ``clip.json``; a folder without
    ``clip.json`` is incomplete. All masks are held in memory until the end (3 bytes per
    pixel per frame). ``crossings``, ``still``: see ``SyntheticSurgery``.
    """
    # the frames' own settings are checked by SyntheticSurgery
    check_clip_settings({"num_frames": num_frames, "codec": codec, "width": width,
                         "height": height})  # fmt: skip
    surgery = SyntheticSurgery(
        width=width,
        height=height,
        seed=seed,
        num_instruments=num_instruments,
        fps=fps,
        smoke=smoke,
        blur=blur,
        highlights=highlights,
        crossings=crossings,
        still=still,
    )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / CLIP_FILE).unlink(missing_ok=True)
    video = root / ("video.mkv" if codec.startswith("ffv1") else "video.mp4")
    masks = {
        name: np.zeros((num_frames, height, width), np.uint8)
        for name in ("parts", "types", "instances")
    }
    records = []
    with VideoWriter(video, width=width, height=height, fps=fps, codec=codec) as writer:
        for i in tqdm(range(num_frames), desc="synthetic", unit="frame", disable=not progress):
            frame = surgery.render(i)
            writer.write(frame.image, pts=i)
            masks["parts"][i], masks["types"][i] = frame.parts, frame.types
            masks["instances"][i] = frame.instances
            time_s = float(i * writer.time_base)
            records.append(
                {"index": i, "pts": i, "time_s": time_s, "instruments": frame.instruments}
            )
        time_base = str(writer.time_base)
    with atomic_path(root / MASKS_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **masks)
    with atomic_path(root / INSTRUMENTS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    cx, cy, radius = surgery.fov
    write_json(
        root / CLIP_FILE,
        {
            "generator": "surgseg.synthetic",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "width": width,
            "height": height,
            "fps": fps,
            "time_base": time_base,
            "num_frames": num_frames,
            "codec": codec,
            "video": video.name,
            "num_instruments": len(surgery.instrument_types),
            "instrument_types": surgery.instrument_types,
            "fov": {"cx": cx, "cy": cy, "radius": radius},
            "smoke": surgery.has_smoke,
            "blur": blur,
            "highlights": highlights,
            "crossings": crossings,
            "crossing": surgery.crossing,
            "still": still,
        },
    )
    return root


def load_clip(path: str | Path) -> SyntheticClip:
    """Read a clip folder written by ``write_clip``; DatasetError if incomplete or inconsistent."""
    root = Path(path)
    if not (root / CLIP_FILE).is_file():
        raise DatasetError(f"not a complete synthetic clip ({CLIP_FILE} missing)", root)
    try:
        meta = json.loads((root / CLIP_FILE).read_text())
        n, h, w = meta["num_frames"], meta["height"], meta["width"]
        video = root / meta["video"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"unreadable {CLIP_FILE}: {exc}", root) from None
    if not video.is_file():
        raise DatasetError(f"video {video.name} missing", root)
    try:
        with np.load(root / MASKS_FILE) as npz:
            masks = {name: npz[name] for name in ("parts", "types", "instances")}
        lines = (root / INSTRUMENTS_FILE).read_text().splitlines()
        records = [json.loads(line) for line in lines]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"unreadable clip data: {exc}", root) from None
    for name, array in masks.items():
        if array.shape != (n, h, w) or array.dtype != np.uint8:
            raise DatasetError(
                f"{MASKS_FILE}: {name} is {array.dtype} {array.shape}, expected uint8 {(n, h, w)}",
                root,
            )
    if [r.get("index") for r in records] != list(range(n)):
        raise DatasetError(f"{INSTRUMENTS_FILE} does not hold frames 0..{n - 1} in order", root)
    return SyntheticClip(
        root=root,
        video=video,
        parts=masks["parts"],
        types=masks["types"],
        instances=masks["instances"],
        instruments=[r["instruments"] for r in records],
        meta=meta,
    )
