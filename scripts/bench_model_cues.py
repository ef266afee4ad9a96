"""Tip and axis errors of the pose cues from a trained model's masks of a synthetic clip,
read in several ways, against the clip's ground truth: one trained model, every idea measured
on the same predictions.

    PYTHONPATH=. python scripts/bench_model_cues.py --run demo_out
    PYTHONPATH=. python scripts/bench_model_cues.py --run demo_out --checkpoint other/model.pt
    PYTHONPATH=. python scripts/bench_model_cues.py --run demo_out --clip other_clip

The model (``RUN/model.pt``) segments the held-out clip (``RUN/data/heldout``, or another
clip folder with ``--clip``) once, as ``surgseg-infer`` does (``Predictor``: labels and the
winning class's probability × 255); the predictions are kept in
``RUN/model_predictions_heldout.npz`` (``RUN/model_predictions_CLIPFOLDERNAME.npz`` for
``--clip``; reused when present, keyed by the checkpoint's and the video's path, size and
time). Each reading is then scored as ``surgseg.demo.evaluate_run`` scores the demo:
instruments matched to the true ones by tip distance (≤ 50 px), the median and 90th
percentile of the tip and axis errors. The readings:

* ``ground truth``: the clip's own parts masks (the floor);
* ``model``: the predicted labels alone, as the demo's "model masks alone" row
  (``find_instruments`` without a confidence map: tips from the mask);
* ``model, confidence``: ``find_instruments(..., confidence=...)``, as ``surgseg-infer``
  writes its cues: each tip read out to where the instrument's probability falls below
  ``tip_probability`` (0.2; README, "Pose cues", "Tip from the confidence map");
* ``model as binary, confidence``: the same with the part labels dropped (``binary``): what
  the shaft, wrist and clasper labels give (the shaft's axis, the split's parts order);
* ``model, smoothed`` / ``model, confidence, smoothed``: the same, tracked with per-track
  Kalman smoothing (``Tracker(smoothing=Smoothing())``), scoring the smoothed tips and axes.

``--input-size H W`` runs the model at another size than it was trained at (for instance the
frame's own, 512 640: finer logits, at four times the cost).

Also printed: the signed error of the tip along the true instrument's direction (negative:
the tip found short of the true one), the mean over matched instruments; and the masks'
binary IoU and parts mIoU (foreground classes) against the truth.
Writes only the cache; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from surgseg.cues import (
    FieldOfView,
    cue_errors,
    find_instruments,
    match_to_ground_truth,
    summarize_errors,
)
from surgseg.decode import read_frames
from surgseg.metrics import SegmentationMetrics
from surgseg.predictor import Predictor
from surgseg.synthetic import load_clip
from surgseg.tracking import Smoothing, Tracker


def predictions(checkpoint: Path, video: Path, cache: Path,
                input_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Labels and confidence (uint8, as the pipeline has them) of every frame, cached (keyed
    by the checkpoint and the video); the model runs at ``input_size`` (height, width;
    default: its training size)."""
    key = ":".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                   for p in (checkpoint, video)) + f":{input_size}"  # fmt: skip
    if cache.is_file():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                return {name: saved[name] for name in ("labels", "confidence")}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictor = Predictor.from_checkpoint(checkpoint, input_size=input_size)
    frames = [frame.image for frame in read_frames(video)]
    labels, confidence = [], []
    for start in range(0, len(frames), 8):
        for p in predictor.predict(frames[start : start + 8]):
            labels.append(p.mask)
            confidence.append(p.confidence)
    out = {"labels": np.stack(labels), "confidence": np.stack(confidence)}
    np.savez_compressed(cache, key=np.array(key), **out)
    return out


def score(found_per_frame: list[list[dict]], truth: list[list[dict]], key: str = "raw") -> dict:
    """Summary of the tip and axis errors (``key``: raw cues or the smoothed ones), and the
    mean signed error of the tip along the true instrument's direction."""
    tips, axes, along = [], [], []
    for found, gt in zip(found_per_frame, truth, strict=True):
        if key == "smoothed":
            found = [dict(f, tip=f["smoothed"]["tip"], axis=f["smoothed"]["axis"]) for f in found]
        pairs = match_to_ground_truth(found, gt)
        errors = cue_errors(pairs)
        tips += errors["tip_px"]
        axes += errors["axis_deg"]
        for pred, true in pairs:
            direction = np.subtract(true["tip"], true["entry"])
            direction /= max(np.linalg.norm(direction), 1e-9)
            along.append(float(np.subtract(pred["tip"], true["tip"]) @ direction))
    summary = summarize_errors(tips, axes)
    summary["tip_along_mean_px"] = float(np.mean(along)) if along else None
    return summary


def cues(masks, view, *, confidence=None, smooth: bool = False,
         task: str = "parts") -> list[list[dict]]:  # fmt: skip
    tracker = Tracker(smoothing=Smoothing()) if smooth else None
    out = []
    for index, mask in enumerate(masks):
        conf = None if confidence is None else confidence[index]
        mask = (mask > 0).astype(np.uint8) if task == "binary" else mask
        found = find_instruments(mask, task=task, view=view, confidence=conf)
        if tracker is not None:
            found = tracker.update(found)
        out.append([inst.to_dict() for inst in found])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the demo's output folder")
    parser.add_argument("--checkpoint", type=Path, help="default: RUN/model.pt")
    parser.add_argument("--clip", type=Path,
                        help="a write_clip folder (default: RUN/data/heldout)")  # fmt: skip
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="run the model at this size (default: its training size)")
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.run / "model.pt"
    clip = load_clip(args.clip or args.run / "data" / "heldout")
    size = tuple(args.input_size) if args.input_size else None
    stem = args.clip.resolve().name if args.clip else "heldout"
    name = f"model_predictions_{stem}" + (f"_{size[0]}x{size[1]}" if size else "") + ".npz"
    predicted = predictions(checkpoint, clip.video, args.run / name, size)
    view = FieldOfView.from_image(next(iter(read_frames(clip.video))).image)
    truth = [[g for g in frame if g.get("visible", True)] for frame in clip.instruments]
    labels, confidence = predicted["labels"], predicted["confidence"]
    ground = [clip.mask("parts", i) for i in range(len(clip))]
    binary, parts = SegmentationMetrics(2), SegmentationMetrics(4)
    for mask, truth_mask in zip(labels, ground, strict=True):
        binary.update((mask > 0).astype(np.uint8), (truth_mask > 0).astype(np.uint8))
        parts.update(mask, truth_mask)
    masks = {"binary_iou": float(binary.compute()["iou"][1]),
             "parts_miou": float(parts.compute()["miou"])}  # fmt: skip
    results = {
        "ground truth": score(cues(ground, view), truth),
        "model": score(cues(labels, view), truth),
        "model, confidence": score(cues(labels, view, confidence=confidence), truth),
        "model as binary, confidence": score(
            cues(labels, view, confidence=confidence, task="binary"), truth),
        "model, smoothed": score(cues(labels, view, smooth=True), truth, "smoothed"),
        "model, confidence, smoothed": score(
            cues(labels, view, confidence=confidence, smooth=True), truth, "smoothed"),
    }  # fmt: skip
    print(f"masks: binary IoU {masks['binary_iou']:.3f}, parts mIoU {masks['parts_miou']:.3f}")
    print(f"{'reading':30} {'matched':>7} {'tip med':>8} {'tip p90':>8} {'axis med':>9} "
          f"{'axis p90':>9} {'tip along':>10}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:30} {r['count']:7d} {r['tip_px_median']:8.2f} {r['tip_px_p90']:8.2f} "
              f"{r['axis_deg_median']:9.2f} {r['axis_deg_p90']:9.2f} "
              f"{r['tip_along_mean_px']:10.2f}")  # fmt: skip
    print(json.dumps({"checkpoint": str(checkpoint), "input_size": size, "masks": masks,
                      "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
