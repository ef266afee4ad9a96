"""A small output folder written by hand: run.json, failed.json and cues.jsonl of three videos
with known content, as ``surgseg-infer`` lays them out.

``day1/a.mp4`` (types, 4 fps from 2.0 s, one frame lost before index 2, a real overlay when
asked), ``b c.mp4`` (binary, variable frame rate, its input a real video, no overlay) and
``day1/broken.mp4`` (failed). Expected values are worked out by hand in ``EXPECTED``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests._video_utils import write_text, write_video

TYPES = ["background", "bipolar_forceps", "prograsp_forceps", "large_needle_driver"]
BINARY = ["background", "tool"]


def instrument(id_: int, label: int, *, confidence: float | None = 0.9) -> dict[str, Any]:
    """A cue record as ``Instrument.to_dict`` writes it."""
    return {
        "id": id_,
        "label": label,
        "area_px": 100 * (id_ + 1),
        "bbox": [10, 12, 20, 8],
        "centroid": [20.5, 16.0],
        "axis": [0.6, -0.8],
        "angle_deg": -53.13,
        "entry": [10.0 + id_, 40.0],
        "entry_on_border": True,
        "tip": [30.0, 12.0 + id_],
        "tip_in_view": id_ != 2,
        "parts": {},
        "confidence": confidence,
    }


# (index, time_s, gap, corrupt, [(id, label)])
A_FRAMES = [
    (0, 2.00, 0, False, [(0, 1)]),
    (1, 2.25, 0, False, [(0, 1), (1, 2)]),
    (2, 2.75, 1, False, [(1, 2)]),  # the frame at 2.50 s was lost
    (3, 3.00, 0, False, []),
    (4, 3.25, 0, False, [(0, 1), (1, 2), (2, 1)]),
    (5, 3.50, 0, True, [(1, 2)]),
]
B_FRAMES = [  # variable frame rate: steps of 1/16, 2/16, 1/16 s
    (0, 0.0, 0, False, [(0, 1)]),
    (1, 0.0625, 0, False, [(0, 1)]),
    (2, 0.1875, 0, False, []),
    (3, 0.25, 0, False, [(0, 1)]),
]

# Every frame lasts 0.25 s in a.mp4 (the lost frame's time is not shown by its neighbours).
EXPECTED = {
    "seconds_per_id": {
        ("b c.mp4", 0): 0.0625 + 0.125 + 0.0625,
        ("day1/a.mp4", 0): 0.75,
        ("day1/a.mp4", 1): 1.0,
        ("day1/a.mp4", 2): 0.25,
    },
    "rows": {"day1/a.mp4": 8, "b c.mp4": 3},
    "day1/a.mp4": {
        "frames": 6,
        "frames_with_instruments": 5,
        "tracks": 3,
        "max_instruments": 3,
        "seconds_bipolar_forceps": 0.75,  # frames 0, 1, 4 (two of them in frame 4: once)
        "seconds_prograsp_forceps": 1.0,  # frames 1, 2, 4, 5
        "seconds_large_needle_driver": 0.0,
        "seconds_tool": None,  # not a class of its model
    },
    "b c.mp4": {
        "frames": 4,
        "frames_with_instruments": 3,
        "tracks": 1,
        "max_instruments": 1,
        "seconds_tool": 0.25,
        "seconds_bipolar_forceps": None,
    },
    "failed_reason": "not a video: moov atom not found",
}


def write_cues(path: Path, frames: list[tuple], *, time_base: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        for index, time_s, gap, corrupt, insts in frames:
            line = {
                "index": index,
                "pts": round(time_s / time_base),
                "time_s": time_s,
                "corrupt": corrupt,
                "gap": gap,
                "instruments": [
                    instrument(i, label, confidence=None if index == 0 else 0.9)
                    for i, label in insts
                ],
            }
            file.write(json.dumps(line) + "\n")


def run_record(input_: Path, *, task: str, classes: list[str], frames: int, **video: Any) -> dict:
    """A run.json as ``process_video`` writes it (the fields the tables and report read)."""
    return {
        "input": str(input_),
        "status": "done",
        "run_hash": "0123abcd",
        "model": {"task": task, "classes": {name: i for i, name in enumerate(classes)}},
        "video": {"fps": 4.0, "width": 96, "height": 64, "frames_reported": frames, **video},
        "frames": {"processed": frames, "decoded": frames, "corrupt": 0, "missing": 0},
        "wall_s": 2.0,
        "fps": frames / 2.0,
        "finished": "2026-01-02T03:04:05+00:00",
    }


def make_archive(root: Path, *, overlay: bool = False) -> Path:
    """Write the output folder ``root/out`` (inputs in ``root/in``) and return it."""
    out, inputs = root / "out", root / "in"
    inputs.mkdir(parents=True, exist_ok=True)

    a = out / "day1" / "a.mp4"
    write_cues(a / "cues.jsonl", A_FRAMES, time_base=1 / 1000)
    (a / "masks").mkdir()
    (a / "masks" / "000000.png").write_bytes(b"")
    if overlay:
        write_video(a / "overlay.mp4", frames=6, fps=4)
    record = run_record(inputs / "day1" / "a.mp4", task="types", classes=TYPES, frames=6,
                        duration_s=1.75)  # fmt: skip
    record["frames"].update(corrupt=1, missing=1)
    (a / "run.json").write_text(json.dumps(record))

    b = out / "b c.mp4"
    write_cues(b / "cues.jsonl", B_FRAMES, time_base=1 / 16)
    b_input = write_video(inputs / "b c.mp4", frames=4, fps=16)
    record = run_record(b_input, task="binary", classes=BINARY, frames=4, duration_s=0.3125)
    (b / "run.json").write_text(json.dumps(record))

    broken = out / "day1" / "broken.mp4"
    broken.mkdir(parents=True)
    failed = {
        "status": "failed",
        "input": str(write_text(inputs / "broken.mp4")),
        "reason": EXPECTED["failed_reason"],
        "run_hash": "0123abcd",
        "finished": "2026-01-02T03:05:00+00:00",
    }
    (broken / "failed.json").write_text(json.dumps(failed))

    unfinished = out / "day2" / "unfinished.mp4"  # killed: cues but no run.json
    write_cues(unfinished / "cues.jsonl", B_FRAMES[:2], time_base=1 / 16)
    damaged = out / "day2" / "damaged.mp4"  # a run.json cut short
    damaged.mkdir(parents=True)
    (damaged / "run.json").write_text('{"input": "x", "sta')
    return out
