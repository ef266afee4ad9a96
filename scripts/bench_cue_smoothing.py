"""Tip jitter and error of the pose cues with and without per-track smoothing, from a trained
model's masks of synthetic clips whose instruments are known.

    PYTHONPATH=. python scripts/bench_cue_smoothing.py --run demo_out
    PYTHONPATH=. python scripts/bench_cue_smoothing.py --run demo_out --still-frames 25  # small

The demo's model (``RUN/model.pt``) segments two clips, as ``surgseg-infer`` does (labels and
confidence; cached beside them, see ``scripts/bench_model_cues.py``):

* *moving*: the demo's held-out clip (``RUN/data/heldout``, instruments in motion);
* *still*: the same scene with its instruments holding still (``write_clip(still=True)``,
  written to ``RUN/data/still``): the tissue breathes, smoke drifts, frames blur, and the
  instruments do not move, so any motion of a tip is jitter.

The cues are found on every mask (``find_instruments`` with the confidence map, the view
estimated from the first frame), tracked once without and once with smoothing
(``Tracker(smoothing=Smoothing())``), and matched per frame to the true instruments by tip
distance. For the raw and the smoothed tips:

* tip error against the truth: median and 90th percentile;
* still clip, jitter: the frame-to-frame movement of each tracked tip, |tip_t − tip_t−1|,
  median and mean over consecutive frames of one track matched to one true instrument;
* moving clip, jitter beyond the true motion: |Δ²tip − Δ²truth| over three consecutive
  frames (the change of velocity that the instrument did not make), mean.

Writes the still clip and the prediction caches; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_model_cues import predictions

from surgseg.cues import FieldOfView, find_instruments, match_to_ground_truth
from surgseg.decode import read_frames
from surgseg.synthetic import load_clip, write_clip
from surgseg.tracking import Smoothing, Tracker


def tracks(labels, confidence, view, smoothing: Smoothing | None) -> list[list[dict]]:
    tracker = Tracker(smoothing=smoothing)
    return [[inst.to_dict() for inst in tracker.update(
        find_instruments(mask, task="parts", view=view, confidence=conf))]
        for mask, conf in zip(labels, confidence, strict=True)]  # fmt: skip


def figures(frames: list[list[dict]], truth: list[list[dict]], key: str) -> dict[str, float]:
    """Tip errors and jitter of ``frames`` (each instrument's ``tip`` or smoothed tip)."""
    errors, paths = [], {}
    for index, (found, gt) in enumerate(zip(frames, truth, strict=True)):
        tips = [dict(inst, tip=inst["smoothed"]["tip"] if key == "smoothed" else inst["tip"])
                for inst in found]  # fmt: skip
        for pred, true in match_to_ground_truth(tips, gt):
            errors.append(float(np.hypot(*np.subtract(pred["tip"], true["tip"]))))
            paths.setdefault((pred["id"], true["id"]), {})[index] = (pred["tip"], true["tip"])
    step, excess = [], []
    for path in paths.values():
        for i in path:
            if i + 1 in path:
                step.append(float(np.hypot(*np.subtract(path[i + 1][0], path[i][0]))))
            if i + 1 in path and i + 2 in path:
                p, t = (np.array([path[i + k][j] for k in range(3)]) for j in (0, 1))
                extra = (p[2] - 2 * p[1] + p[0]) - (t[2] - 2 * t[1] + t[0])
                excess.append(float(np.hypot(*extra)))
    return {"matched": len(errors), "tip_px_median": float(np.median(errors)),
            "tip_px_p90": float(np.percentile(errors, 90)),
            "step_px_median": float(np.median(step)), "step_px_mean": float(np.mean(step)),
            "excess_jitter_px_mean": float(np.mean(excess))}  # fmt: skip


def measure(run: Path, checkpoint: Path, clip_dir: Path, name: str) -> dict:
    clip = load_clip(clip_dir)
    predicted = predictions(checkpoint, clip.video, run / f"model_predictions_{name}.npz")
    view = FieldOfView.from_image(next(iter(read_frames(clip.video))).image)
    truth = [[g for g in frame if g.get("visible", True)] for frame in clip.instruments]
    out = {}
    for key, smoothing in (("raw", None), ("smoothed", Smoothing())):
        frames = tracks(predicted["labels"], predicted["confidence"], view, smoothing)
        out[key] = figures(frames, truth, key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the demo's output folder")
    parser.add_argument("--checkpoint", type=Path, help="default: RUN/model.pt")
    parser.add_argument("--still-frames", type=int, default=50)
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.run / "model.pt"
    heldout = args.run / "data" / "heldout"
    meta = load_clip(heldout).meta
    still = args.run / "data" / "still"
    made = (still / "clip.json").is_file() and load_clip(still).meta
    if not made or made["num_frames"] != args.still_frames:
        write_clip(still, num_frames=args.still_frames, width=meta["width"], still=True,
                   height=meta["height"], fps=meta["fps"], seed=meta["seed"])  # fmt: skip
    results = {"moving": measure(args.run, checkpoint, heldout, "heldout"),
               "still": measure(args.run, checkpoint, still, "still")}  # fmt: skip
    print(f"{'clip':7} {'tips':9} {'matched':>7} {'tip med':>8} {'tip p90':>8} "
          f"{'step med':>9} {'step mean':>10} {'excess':>7}")  # fmt: skip
    for clip, by_key in results.items():
        for key, r in by_key.items():
            print(f"{clip:7} {key:9} {r['matched']:7d} {r['tip_px_median']:8.2f} "
                  f"{r['tip_px_p90']:8.2f} {r['step_px_median']:9.2f} {r['step_px_mean']:10.2f} "
                  f"{r['excess_jitter_px_mean']:7.2f}")  # fmt: skip
    print(json.dumps({"checkpoint": str(checkpoint), "results": results}, indent=2))


if __name__ == "__main__":
    main()
