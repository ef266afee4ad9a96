"""Evaluate a predictor on a dataset: per-video and overall metrics, a JSON + Markdown
report, and optionally the predicted masks in the EndoVis 2017 submission layout.

Frames go through ``Predictor.predict`` at their own size, exactly as in inference.

Submission layout (``submission_dir``)::

    <video>/BinarySegmentation/<frame name>     0 / 255
    <video>/PartsSegmentation/<frame name>      0 / 10 / 20 / 30  (shaft / wrist / clasper)
    <video>/TypeSegmentation/<frame name>       0..7 (``INSTRUMENT_TYPES`` order)

one 8-bit PNG per frame, e.g. ``instrument_dataset_1/BinarySegmentation/frame000.png``, at the
original frame size (1920×1080 for EndoVis 2017) with the crop undone: zeros outside it. The
values follow the training ground truth (parts 10/20/30) and the challenge's type order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgseg.atomic import atomic_path, write_json
from surgseg.datasets import SegmentationSet
from surgseg.errors import ConfigError
from surgseg.metrics import SegmentationMetrics
from surgseg.predictor import Predictor
from surgseg.progress import progress_bar

SUBMISSION = {  # task → (folder, value of class index 1)
    "binary": ("BinarySegmentation", 255),
    "parts": ("PartsSegmentation", 10),
    "types": ("TypeSegmentation", 1),
}


def submission_mask(mask: np.ndarray, task: str) -> np.ndarray:
    """Class indices → the submission's values for ``task``."""
    return (mask * SUBMISSION[task][1]).astype(np.uint8)


def _batches(
    dataset: SegmentationSet, batch_size: int, group: Callable[[int], object]
) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
    """(index, image, mask) of consecutive items, in batches of frames of one size and one
    ``group`` (the predictor of the item's video)."""
    batch: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        if batch and (
            len(batch) == batch_size
            or image.shape != batch[0][1].shape
            or group(i) is not group(batch[0][0])
        ):
            yield batch
            batch = []
        batch.append((i, image, target))
    if batch:
        yield batch


def evaluate(
    predictor: Predictor | Mapping[str, Predictor],
    dataset: SegmentationSet,
    *,
    batch_size: int = 4,
    submission_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``predictor`` on every frame of ``dataset`` and measure it against the masks.

    Args:
        predictor: one predictor for every video, or one per video id (``dataset.video_of``),
            e.g. for the EndoVis 2017 test set each video's cross-validation fold model. All
            must be trained for the same task and classes.

    Returns ``{"task", "class_names", "frames", "seconds", "overall", "videos"}``: ``overall``
    is accumulated over all frames, plus the means over videos of their per-frame IoUs
    (``challenge_iou_video_mean``, ``frame_iou_video_mean``); ``videos`` maps each video id to
    its own metrics (see ``SegmentationMetrics.compute``).
    """
    videos_in_set = sorted({dataset.video_of(i) for i in range(len(dataset))})
    if isinstance(predictor, Mapping):
        missing = [v for v in videos_in_set if v not in predictor]
        if missing:
            raise ConfigError(f"no predictor for video(s) {missing}")
        predictors = dict(predictor)
    else:
        predictors = {video: predictor for video in videos_in_set}
    if not predictors:
        raise ConfigError("nothing to evaluate: the dataset has no frames")
    meta = next(iter(predictors.values())).meta
    for p in predictors.values():
        if (p.meta.task, tuple(p.meta.class_names)) != (meta.task, tuple(meta.class_names)):
            raise ConfigError(
                f"the checkpoints are of different tasks or classes: {meta.task} "
                f"{list(meta.class_names)} and {p.meta.task} {list(p.meta.class_names)}"
            )
    if tuple(meta.class_names) != tuple(dataset.class_names):
        raise ConfigError(
            f"the checkpoint's classes {list(meta.class_names)} are not the dataset's "
            f"{list(dataset.class_names)}"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if submission_dir is not None and meta.task not in SUBMISSION:
        raise ConfigError(f"no submission layout for task {meta.task!r}")

    def predictor_of(i: int) -> Predictor:
        return predictors[dataset.video_of(i)]

    videos: dict[str, SegmentationMetrics] = {}
    start = time.perf_counter()
    bar = progress_bar(total=len(dataset), desc="eval", enabled=progress)
    for batch in _batches(dataset, batch_size, predictor_of):
        predictions = predictor_of(batch[0][0]).predict([image for _, image, _ in batch])
        for (i, _, target), pred in zip(batch, predictions, strict=True):
            video = dataset.video_of(i)
            if video not in videos:
                videos[video] = SegmentationMetrics(meta.num_classes, task=meta.task)
            videos[video].update(pred.mask, target)
            if submission_dir is not None:
                _write_submission(Path(submission_dir), dataset, i, pred.mask, meta.task)
        bar.update(len(batch))
    bar.close()
    overall = SegmentationMetrics(meta.num_classes, task=meta.task)
    for m in videos.values():
        overall.merge(m)
    per_video = {video: m.compute() for video, m in videos.items()}
    summary = overall.compute()
    for key in ("challenge_iou", "frame_iou"):
        means = [v[key] for v in per_video.values() if v[key] is not None]
        summary[f"{key}_video_mean"] = float(np.mean(means)) if means else None
    return {
        "task": meta.task,
        "class_names": list(meta.class_names),
        "frames": len(dataset),
        "seconds": time.perf_counter() - start,
        "overall": summary,
        "videos": per_video,
    }


def _write_submission(
    out: Path, dataset: SegmentationSet, i: int, mask: np.ndarray, task: str
) -> None:
    if dataset.crop is not None:
        mask = dataset.crop.undo(mask)
    folder, _ = SUBMISSION[task]
    path = out / dataset.video_of(i) / folder / Path(dataset.name_of(i)).with_suffix(".png")
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), submission_mask(mask, task)):
            raise OSError(f"could not write {path}")


METRIC_NOTES = (
    "challenge_iou: the EndoVis 2017 challenge's figure, as the organisers' evaluation script "
    "computed it per frame (binary: the instrument IoU, 0 for a frame without instrument in the "
    "ground truth; parts: the mean IoU of background, shaft, wrist and clasper over those "
    "present in the frame's ground truth; types: the mean IoU of the instrument types present "
    "in it, frames without one not counted), averaged over the counted frames (challenge_frames) "
    "of each video and of the whole set. frame_iou: the per-frame IoU of Shvets et al.'s "
    "evaluate.py, the figure of the 2017 winners' cross-validation table (a frame without "
    "instrument scores 1 if none is predicted, else 0; otherwise the mean IoU of the foreground "
    "classes present in the ground truth), averaged over all frames. miou, mdice: mean over the "
    "foreground classes (background left out); miou_all: mean over every class, background "
    "included; IoU and Dice per class come from one confusion matrix over all the frames."
)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _markdown(results: dict[str, Any]) -> str:
    names = results["class_names"]
    cols = ["frames", "challenge_iou", "frame_iou", "miou", "mdice", "miou_all", "pixel_accuracy"]
    if len(names) == 2:
        cols += ["sensitivity", "specificity", "balanced_accuracy"]
    rows = [*results["videos"].items(), ("**overall**", results["overall"])]
    lines = [
        f"# Evaluation: task {results['task']}, {results['frames']} frames",
        "",
        "| video | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for video, m in rows:
        cells = [str(m["frames"]) if c == "frames" else _fmt(m[c]) for c in cols]
        lines.append(f"| {video} | " + " | ".join(cells) + " |")
    lines += ["", "IoU per class:", "", "| video | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for video, m in rows:
        lines.append(f"| {video} | " + " | ".join(_fmt(x) for x in m["iou"]) + " |")
    overall = results["overall"]
    lines += [
        "",
        f"Mean over videos of the per-video challenge_iou: "
        f"{_fmt(overall.get('challenge_iou_video_mean'))}; of frame_iou: "
        f"{_fmt(overall.get('frame_iou_video_mean'))}.",
        "",
        METRIC_NOTES,
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` atomically; return both
    paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    write_json(json_path, results)
    with atomic_path(md_path) as tmp:
        tmp.write_text(_markdown(results))
    return json_path, md_path
