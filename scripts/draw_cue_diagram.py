"""Draw docs/cues.png: the pose cues of one instrument in a circular endoscopic view, and a
crossing pair split into two instruments.

    python scripts/draw_cue_diagram.py [--out docs/cues.png]

The instruments are parts masks drawn with OpenCV; the cues are measured by
``surgseg.cues.find_instruments`` (left: with the bands widened for visibility; right: with
the defaults), and the split regions come from ``surgseg.instances.split_component``.
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
from surgseg.instances import components, split_component
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


def instrument(mask, entry_deg, turn, *, length, bend, jaws=8):
    """Shaft from the view border at polar angle ``entry_deg``, pointing ``turn`` degrees off
    the centre; a wrist bent by ``bend``; two jaws."""
    entry = np.array(CENTRE) + RADIUS * unit(entry_deg)
    heading = entry_deg + 180 + turn
    axis = unit(heading)
    shaft_end = entry + length * axis
    bar(mask, entry - 60 * axis, shaft_end, 44, SHAFT)
    wrist = unit(heading + bend)
    hinge = shaft_end + 40 * wrist
    bar(mask, shaft_end - 2 * wrist, hinge, 30, WRIST)
    for side in (-1, 1):
        jaw = unit(heading + bend + side * jaws)
        bar(mask, hinge - 2 * jaw, hinge + 70 * jaw, 14, CLASPER)


def view_image(view, band, mask):
    rgb = np.where(view[..., None], np.uint8(40), np.uint8(0)).repeat(3, axis=2)
    rgb[band & view] = (90, 90, 140)
    rgb[mask > 0] = palette(4)[mask[mask > 0]]
    return rgb


def draw_cues(ax, inst, colour, label):
    ex, ey = inst.entry
    dx, dy = inst.axis
    ax.annotate("", xy=(ex + 170 * dx, ey + 170 * dy), xytext=(ex, ey),
                arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 3,
                            "mutation_scale": 18})  # fmt: skip
    ax.plot([ex], [ey], "o", color="yellow", ms=9, mec="black")
    ax.plot([inst.tip[0]], [inst.tip[1]], "o", color="red", ms=9, mec="white")
    ax.text(ex + 8, ey - 10, label, color=colour, fontsize=11, weight="bold")


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="docs/cues.png")
args = parser.parse_args()

yy, xx = np.mgrid[:H, :W]
view = np.hypot(xx - CENTRE[0], yy - CENTRE[1]) <= RADIUS
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 6.6), dpi=100)

# Left: one instrument, its cues and the bands they come from.
mask = np.zeros((H, W), np.uint8)
instrument(mask, 200, -15, length=200, bend=30)
mask[~view] = 0
[inst] = find_instruments(mask, task="parts", view=view, border_band=BORDER_BAND, tip_band=TIP_BAND)
band = border_band_mask(view, mask.shape, BORDER_BAND)
ys, xs = np.nonzero(mask)
dist = np.hypot(xs - inst.entry[0], ys - inst.entry[1])
tip_px = dist >= dist.max() - TIP_BAND
rgb = view_image(view, band, mask)
rgb[(mask > 0) & band] = (255, 255, 0)
rgb[ys[tip_px], xs[tip_px]] = (255, 40, 40)
ax.imshow(rgb)
ex, ey = inst.entry
tx, ty = inst.tip
dx, dy = inst.axis
ax.annotate("", xy=(ex + 230 * dx, ey + 230 * dy), xytext=(ex, ey),
            arrowprops={"arrowstyle": "-|>", "color": "white", "lw": 2})  # fmt: skip
ax.add_patch(plt.Circle((ex, ey), dist.max(), fill=False, ls="--", color="red", lw=1))
ax.plot([ex], [ey], "o", color="yellow", ms=9, mec="black")
ax.plot([tx], [ty], "o", color="red", ms=9, mec="white")
labels = [
    ((ex - 5, ey + 40), "entry: centroid of the instrument's\npixels in the border band", "yellow"),
    ((ex + 120 * dx - 40, ey + 120 * dy - 30), f"axis, angle {inst.angle_deg:.1f}°", "white"),
    ((tx + 15, ty + 5), "tip: centroid of the pixels within\ntip_band of the farthest", "red"),
    ((CENTRE[0] - 60, 8), "border band along the view boundary", "#aab"),
    ((ex + 330, ey + 215), "farthest distance\nfrom the entry", "red"),
]
for (x, y), text, color in labels:
    ax.text(x, y, text, color=color, fontsize=9, va="top")
for name, (px, py) in inst.parts.items():
    ax.plot([px], [py], "+", color="white", ms=8)
    ax.text(px + 4, py - 4, name, color="white", fontsize=8)
ax.set_title(
    f"Pose cues of one instrument (parts mask; border_band = {BORDER_BAND:g} px, tip_band = "
    f"{TIP_BAND:g} px,\nwidened for visibility: defaults 3 and 2 px)",
    fontsize=10,
)

# Right: two instruments whose jaws lie across each other: one connected component that
# enters the view in two stretches, split into one instrument per entry.
pair = np.zeros((H, W), np.uint8)
instrument(pair, 195, -12, length=190, bend=25)
instrument(pair, 300, 18, length=150, bend=-30)  # drawn last: lies over the first
pair[~view] = 0
found = find_instruments(pair, task="parts", view=view)
found.sort(key=lambda i: i.entry[0])
rgb = view_image(view, border_band_mask(view, pair.shape, 3.0), pair)
ax2.imshow(rgb)
[(inside, (x0, y0))] = components((pair > 0).view(np.uint8), 50)
box = (slice(y0, y0 + inside.shape[0]), slice(x0, x0 + inside.shape[1]))
pieces = split_component(inside, border_band_mask(view, pair.shape, 3.0)[box], pair[box])
colours = ("white", "#ff7f0e")
for piece, (px, py) in pieces:
    region = np.zeros((H, W), np.uint8)
    region[y0 + py : y0 + py + piece.shape[0], x0 + px : x0 + px + piece.shape[1]] = piece
    # the instrument whose entry lies in this region
    k = int(np.argmax([region[round(f.entry[1]), round(f.entry[0])] for f in found]))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    for c in contours:
        closed = np.vstack([c[:, 0], c[:1, 0]])
        ax2.plot(closed[:, 0], closed[:, 1], color=colours[k], lw=2)
for inst2, colour, name in zip(found, colours, ("instrument 1", "instrument 2"), strict=True):
    draw_cues(ax2, inst2, colour, name)
ax2.text(12, 500, "one connected component, two entries on the border: split into one\n"
         "instrument per entry (surgseg.instances); outlines: the two regions",
         color="white", fontsize=9)  # fmt: skip
ax2.set_title("Crossing instruments (parts mask, default bands): yellow = entry, red = tip, "
              "arrow = axis", fontsize=10)  # fmt: skip
for a in (ax, ax2):
    a.set_xlim(0, W)
    a.set_ylim(H, 0)
    a.set_axis_off()
fig.tight_layout(rect=(0, 0, 1, 0.97))
fig.savefig(args.out)
print(f"wrote {args.out}: {inst.to_dict()}; pair: {[i.to_dict() for i in found]}")
