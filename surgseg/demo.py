"""The demo's evaluation: compare a processed synthetic clip with its ground truth and write a
report with the mask IoU and the tip and axis errors: of the cues the run wrote, of cues found
again on the model's masks alone, and of cues found on the ground-truth masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgseg.atomic import atomic_path
from surgseg.cues import (
    FieldOfView,
    cue_errors,
    find_instruments,
    match_to_ground_truth,
    summarize_errors,
)
from surgseg.decode import read_frames
from surgseg.metrics import SegmentationMetrics
from surgseg.options import CueOptions
from surgseg.sinks import read_masks
from surgseg.synthetic import SyntheticClip
from surgseg.tasks import class_names


def _cue_errors_for(
    masks: list[np.ndarray], clip: SyntheticClip, task: str, view: FieldOfView, cues: CueOptions
) -> dict[str, Any]:
    tips: list[float] = []
    axes: list[float] = []
    for index, mask in enumerate(masks):
        found = find_instruments(
            mask,
            task=task,
            view=view,
            min_area=cues.min_area,
            border_band=cues.border_band,
            tip_band=cues.tip_band,
        )
        gt = [g for g in clip.instruments[index] if g.get("visible", True)]
        pairs = match_to_ground_truth([f.to_dict() for f in found], gt)
        errors = cue_errors(pairs)
        tips += errors["tip_px"]
        axes += errors["axis_deg"]
    return summarize_errors(tips, axes)


def _written_cue_errors(run_dir: Path, clip: SyntheticClip) -> dict[str, Any]:
    """Errors of the cues the run wrote (``cues.jsonl``: found on the model's masks with its
    confidence map), and of their smoothed values when the run smoothed them; and how many
    of the instruments had their tip at the view's border (``tip_in_view`` false)."""
    records = [json.loads(line) for line in (run_dir / "cues.jsonl").read_text().splitlines()]
    errors: dict[str, dict[str, list[float]]] = {"raw": {}, "smoothed": {}}
    found, cut = 0, 0
    for record in records:
        gt = [g for g in clip.instruments[record["index"]] if g.get("visible", True)]
        instruments = record["instruments"]
        found += len(instruments)
        cut += sum(not inst.get("tip_in_view", True) for inst in instruments)
        readings = {"raw": instruments}
        if instruments and all("smoothed" in inst for inst in instruments):
            readings["smoothed"] = [dict(inst, tip=inst["smoothed"]["tip"],
                                         axis=inst["smoothed"]["axis"])
                                    for inst in instruments]  # fmt: skip
        for key, values in readings.items():
            e = cue_errors(match_to_ground_truth(values, gt))
            for name, v in e.items():
                errors[key].setdefault(name, []).extend(v)
    out = {"instruments": found, "tip_not_in_view": cut}
    for key, e in errors.items():
        if e:
            out[key] = summarize_errors(e["tip_px"], e["axis_deg"])
    return out


def evaluate_run(run_dir: Path, clip: SyntheticClip, *, task: str, cues: CueOptions) -> dict:
    """Mask metrics and cue errors of the processed clip in ``run_dir`` against ``clip``.

    Masks and cues are read back from what inference wrote, so the figures describe the real
    outputs: ``cues_written`` (the run's ``cues.jsonl``), ``cues_from_model`` (cues found
    again on the written masks alone, without the confidence map) and
    ``cues_from_ground_truth`` (on the clip's own masks).
    """
    predicted = [
        mask
        for _, _, mask in read_masks(
            run_dir / "masks" if (run_dir / "masks").is_dir() else run_dir / "masks.mkv"
        )
    ]
    if len(predicted) != len(clip):
        raise ValueError(f"{run_dir}: {len(predicted)} masks for {len(clip)} ground-truth frames")
    names = class_names(task)
    task_metrics = SegmentationMetrics(len(names))
    binary_metrics = SegmentationMetrics(2)
    for index, mask in enumerate(predicted):
        truth = clip.mask(task, index)
        task_metrics.update(mask, truth)
        binary_metrics.update((mask > 0).astype(np.uint8), (truth > 0).astype(np.uint8))
    view = FieldOfView.from_image(next(iter(read_frames(clip.video))).image)
    truth_masks = [clip.mask(task, i) for i in range(len(clip))]
    return {
        "task": task,
        "frames": len(clip),
        "binary": binary_metrics.compute(),
        "task_metrics": task_metrics.compute(),
        "class_names": list(names),
        "refine_tips": cues.refine_tips,
        "cues_written": _written_cue_errors(run_dir, clip),
        "cues_from_model": _cue_errors_for(predicted, clip, task, view, cues),
        "cues_from_ground_truth": _cue_errors_for(truth_masks, clip, task, view, cues),
    }


def format_number(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or "n/a" for None or NaN."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def write_report(path: Path, result: dict, *, context: dict[str, Any]) -> None:
    """Write the demo report as Markdown (atomically)."""
    binary = result["binary"]
    lines = [
        "# surgseg demo report",
        "",
        f"Model: {context['model']}, task `{result['task']}`, trained "
        f"{context['train_time_s']:.0f} s ({context['train_steps']} steps) on {context['device']}; "
        f"held-out synthetic clip of {result['frames']} frames "
        f"({context['frame_size']}).",
        "",
        "## Segmentation (held-out clip, at the original frame size)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| binary IoU (tool) | {format_number(binary['iou'][1], 3)} |",
        f"| binary Dice (tool) | {format_number(binary['dice'][1], 3)} |",
        f"| sensitivity | {format_number(binary['sensitivity'], 3)} |",
        f"| specificity | {format_number(binary['specificity'], 3)} |",
    ]
    if result["task"] != "binary":
        tm = result["task_metrics"]
        lines.append(
            f"| {result['task']} mIoU (foreground classes) | {format_number(tm['miou'], 3)} |"
        )
        for name, iou in zip(result["class_names"][1:], tm["iou"][1:], strict=True):
            lines.append(f"| IoU {name} | {format_number(iou, 3)} |")
    lines += [
        "",
        "## Pose cues (matched to ground-truth instruments by tip distance)",
        "",
        "Definitions: README, section \"Pose cues\". *Written*: the cues in "
        "`heldout/cues.jsonl`, found on the model's masks with its confidence map (each tip "
        "read out to where the instrument's probability falls below 0.2"
        + ("; read from the model's segmentation of a crop around it at twice the scale, "
           "`cues.refine_tips`" if result.get("refine_tips") else "")
        + ") and crossing or touching instruments split at their entries. *Model masks "
        "alone*: found again on the written masks without the confidence map.",
        "",
        "| from | instruments matched | tip error median (px) | tip error p90 (px) "
        "| axis error median (°) | axis error p90 (°) |",
        "|---|---|---|---|---|---|",
    ]
    written = result.get("cues_written", {})
    rows = [("written by the run", written.get("raw")),
            ("written, smoothed (`cues.smooth=true`)", written.get("smoothed")),
            ("model masks alone", result["cues_from_model"]),
            ("ground-truth masks", result["cues_from_ground_truth"])]  # fmt: skip
    for label, e in rows:
        if e is None:
            continue
        lines.append(
            f"| {label} | {e['count']} | {format_number(e['tip_px_median'])} "
            f"| {format_number(e['tip_px_p90'])} | {format_number(e['axis_deg_median'])} "
            f"| {format_number(e['axis_deg_p90'])} |"
        )
    if written:
        lines += [
            "",
            f"Instruments written: {written['instruments']} in {result['frames']} frames; "
            f"{written['tip_not_in_view']} with `tip_in_view` false (far end on the view's "
            "border).",
        ]
    lines += ["", "## Pictures", ""]
    for title, name in context.get("pictures", []):
        lines.append(f"![{title}]({name})")
        lines.append("")
    lines += [
        "## Timing",
        "",
        f"Inference: {format_number(context.get('infer_fps'), 1)} frames/s end to end "
        f"on {context['device']}.",
        "",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def save_overlay_still(overlay_video: Path, path: Path, *, index: int) -> None:
    """Save frame ``index`` of the overlay video as a PNG for the report."""
    for frame in read_frames(overlay_video):
        if frame.index == index:
            with atomic_path(path) as tmp:
                cv2.imwrite(str(tmp), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            return
