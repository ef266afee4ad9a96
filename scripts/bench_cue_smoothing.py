"""Tip jitter and error of the pose cues with and without per-track smoothing, on a model's
masks of a synthetic clip whose instruments are known.

    PYTHONPATH=. python scripts/bench_cue_smoothing.py --masks demo_out/heldout/masks \
        --clip demo_out/data/heldout

The cues are found on every mask (``find_instruments`` with the view estimated from the first
video frame), tracked once without and once with smoothing (``Tracker(smoothing=...)``), and
matched to the ground-truth instruments per frame by tip distance. Reported, for the raw and
the smoothed tips: the median and 90th-percentile tip error against ground truth, and the
jitter: the mean frame-to-frame change of the tip's velocity beyond the ground truth's own
(|Δ²tip − Δ²truth| over three consecutive frames of one track matched to one true instrument).
Writes nothing; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from surgseg.cues import FieldOfView, find_instruments, match_to_ground_truth
from surgseg.decode import read_frames
from surgseg.sinks import read_masks
from surgseg.synthetic import load_clip
from surgseg.tracking import Smoothing, Tracker


def tracks(masks: list[np.ndarray], view: FieldOfView, task: str,
           smoothing: Smoothing | None) -> list[list[dict]]:  # fmt: skip
    tracker = Tracker(smoothing=smoothing)
    out = []
    for mask in masks:
        found = tracker.update(find_instruments(mask, task=task, view=view))
        out.append([inst.to_dict() for inst in found])
    return out


def figures(frames: list[list[dict]], truth: list[list[dict]], key: str) -> dict[str, float]:
    """Tip errors and jitter of ``frames`` (each instrument's ``tip`` or smoothed tip)."""
    errors, paths = [], {}
    for index, (found, gt) in enumerate(zip(frames, truth, strict=True)):
        tips = [dict(inst, tip=inst["smoothed"]["tip"] if key == "smoothed" else inst["tip"])
                for inst in found]  # fmt: skip
        for pred, true in match_to_ground_truth(tips, gt):
            errors.append(float(np.hypot(*np.subtract(pred["tip"], true["tip"]))))
            paths.setdefault((pred["id"], true["id"]), {})[index] = (pred["tip"], true["tip"])
    jitter = []
    for path in paths.values():
        for i in path:
            if i + 1 in path and i + 2 in path:
                p, t = (np.array([path[i + k][j] for k in range(3)]) for j in (0, 1))
                excess = (p[2] - 2 * p[1] + p[0]) - (t[2] - 2 * t[1] + t[0])
                jitter.append(float(np.hypot(*excess)))
    return {"matched": len(errors), "tip_px_median": float(np.median(errors)),
            "tip_px_p90": float(np.percentile(errors, 90)),
            "jitter_px_mean": float(np.mean(jitter)), "jitter_px_median": float(np.median(jitter))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=Path, required=True, help="masks/ folder or masks.mkv")
    parser.add_argument("--clip", type=Path, required=True, help="the synthetic clip folder")
    parser.add_argument("--task", default="parts")
    args = parser.parse_args()
    clip = load_clip(args.clip)
    masks = [m for _, _, m in read_masks(args.masks)]
    view = FieldOfView.from_image(next(iter(read_frames(clip.video))).image)
    truth = [[g for g in frame if g.get("visible", True)] for frame in clip.instruments]
    results = {}
    for name, smoothing in (("raw", None), ("smoothed", Smoothing())):
        frames = tracks(masks, view, args.task, smoothing)
        results[name] = figures(frames, truth, name)
    print(f"{'':10} {'matched':>8} {'tip median':>11} {'tip p90':>8} {'jitter mean':>12}")
    for name, r in results.items():
        print(f"{name:10} {r['matched']:8d} {r['tip_px_median']:11.2f} {r['tip_px_p90']:8.2f} "
              f"{r['jitter_px_mean']:12.2f}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
