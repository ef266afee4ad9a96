"""Draw docs/cues.png: the pose cues of one instrument in a circular endoscopic view.

    python scripts/draw_cue_diagram.py [--out docs/cues.png]

The instrument is a parts mask drawn with OpenCV; the cues are measured by
``surgseg.cues.find_instruments`` with the bands widened for visibility.
"""

from __future__ import annotations

import argparse
import math

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from surgseg.cues import border_band_mask, find_instruments
from surgseg.tasks import CLASPER, SHAFT, WRIST, palette

H, W = 512, 640
CENTRE, RADIUS = (320.0, 256.0), 230.0
BORDER_BAND, TIP_BAND = 10.0, 8.0  # defaults are 3 and 2 px; widened to be seen


def bar(mask, start, end, width, value):
    start, end = np.asarray(start, float), np.asarray(end, float)
    d = (end - start) / np.linalg.norm(end - start)
    n = np.array([-d[1], d[0]]) * width / 2
    corners = np.array([start + n, end + n, end - n, start - n])
    cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], value, cv2.LINE_8, shift=4)


def unit(deg):
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="docs/cues.png")
args = parser.parse_args()

yy, xx = np.mgrid[:H, :W]
view = np.hypot(xx - CENTRE[0], yy - CENTRE[1]) <= RADIUS
mask = np.zeros((H, W), np.uint8)
entry = np.array(CENTRE) + RADIUS * unit(200)
axis = unit(200 + 180 - 15)
shaft_end = entry + 200 * axis
bar(mask, entry - 60 * axis, shaft_end, 44, SHAFT)
wrist = unit(math.degrees(math.atan2(axis[1], axis[0])) + 30)
hinge = shaft_end + 40 * wrist
bar(mask, shaft_end - 2 * wrist, hinge, 30, WRIST)
for side in (-1, 1):
    jaw = unit(math.degrees(math.atan2(wrist[1], wrist[0])) + side * 8)
    bar(mask, hinge - 2 * jaw, hinge + 70 * jaw, 14, CLASPER)
mask[~view] = 0

[inst] = find_instruments(mask, task="parts", view=view, border_band=BORDER_BAND, tip_band=TIP_BAND)
band = border_band_mask(view, mask.shape, BORDER_BAND)
ys, xs = np.nonzero(mask)
dist = np.hypot(xs - inst.entry[0], ys - inst.entry[1])
tip_px = dist >= dist.max() - TIP_BAND

rgb = np.where(view[..., None], np.uint8(40), np.uint8(0)).repeat(3, axis=2)
rgb[band & view] = (90, 90, 140)
rgb[mask > 0] = palette(4)[mask[mask > 0]]
rgb[(mask > 0) & band] = (255, 255, 0)
rgb[ys[tip_px], xs[tip_px]] = (255, 40, 40)

fig, ax = plt.subplots(figsize=(8, 6.4), dpi=100)
ax.imshow(rgb)
ex, ey = inst.entry
tx, ty = inst.tip
dx, dy = inst.axis
ax.annotate("", xy=(ex + 230 * dx, ey + 230 * dy), xytext=(ex, ey),
            arrowprops={"arrowstyle": "-|>", "color": "white", "lw": 2})  # fmt: skip
ax.add_patch(plt.Circle((ex, ey), dist.max(), fill=False, ls="--", color="red", lw=1))
ax.set_xlim(0, W)
ax.set_ylim(H, 0)
ax.plot([ex], [ey], "o", color="yellow", ms=9, mec="black")
ax.plot([tx], [ty], "o", color="red", ms=9, mec="white")
labels = [
    ((ex - 5, ey + 40), "entry: centroid of the instrument's\npixels in the border band", "yellow"),
    ((ex + 120 * dx - 40, ey + 120 * dy - 30), f"axis, angle {inst.angle_deg:.1f}°", "white"),
    ((tx + 15, ty + 5), "tip: centroid of the pixels within\ntip_band of the farthest", "red"),
    ((CENTRE[0] - 60, 8), "border band along the view boundary", "#aab"),
    ((ex + 250, ey - 150), "farthest distance\nfrom the entry", "red"),
]
for (x, y), text, color in labels:
    ax.text(x, y, text, color=color, fontsize=9, va="top")
for name, (px, py) in inst.parts.items():
    ax.plot([px], [py], "+", color="white", ms=8)
    ax.text(px + 4, py - 4, name, color="white", fontsize=8)
ax.set_title(
    f"Pose cues (parts mask; border_band = {BORDER_BAND:g} px, tip_band = {TIP_BAND:g} px,\n"
    "widened for visibility: defaults 3 and 2 px)",
    fontsize=10,
)
ax.set_axis_off()
fig.tight_layout()
fig.savefig(args.out)
print(f"wrote {args.out}: {inst.to_dict()}")
