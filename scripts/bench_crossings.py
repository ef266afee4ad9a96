"""Crossing and touching instruments: how often a merged pair is found as two, and the tip
errors, with and without splitting (``find_instruments(split=...)``), on synthetic frames with
exact instance masks.

    PYTHONPATH=. python scripts/bench_crossings.py       # seeds 100..111, every 10th frame
    PYTHONPATH=. python scripts/bench_crossings.py --seeds 4 --step 25 --tasks parts  # quick

Frames come from ``SyntheticSurgery(crossings=1.0)`` (each clip's first two instruments aimed
to cross and touch) at 640×512, every ``--step``-th of 250 frames; the singles set adds the
default clips (``crossings=0``) of the same seeds. Seeds 0..7 were used to tune
``surgseg.instances``, so the default seeds start at 100. The view is estimated from each
clip's first frame, as the apps do. For each ground-truth connected component of the mask:

* merged: two or more visible instruments in one component. *Found as two*: as many
  instruments found in the component as it holds (an instrument is in the component its tip
  is nearest to). Tip error: found and true instruments of the component paired by least
  total tip distance; a true instrument left without a partner counts the distance to the
  nearest found tip in its component. *Exact instance masks*: the cues of each true
  instance's own pixels, the floor for any split (a tip hidden under the other instrument is
  not in its mask). *Tip clear*: no other instrument within 4 px of the true tip; *touching*:
  the others.
* singles: one instrument in its component, in the default clips; tip error with and
  without splitting, and how many default frames' cues the split changed at all.
* CPU time of ``find_instruments`` per frame on one core (OpenCV single-threaded).

Writes nothing; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from surgseg.cues import FieldOfView, find_instruments
from surgseg.synthetic import SyntheticSurgery


def _stats(values: list[float]) -> dict[str, float | int | None]:
    a = np.asarray(values, np.float64)
    if not a.size:
        return {"count": 0, "median": None, "p90": None}
    return {"count": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def _component_of(labels: np.ndarray, points: list[tuple[float, float]]) -> list[int]:
    """The ground-truth component nearest to each point."""
    h, w = labels.shape
    _, nearest = cv2.distanceTransformWithLabels((labels == 0).view(np.uint8), cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_PIXEL)  # fmt: skip
    ys, xs = np.nonzero(labels)
    lookup = np.zeros(int(nearest.max()) + 1, np.int64)
    lookup[nearest[ys, xs]] = labels[ys, xs]
    out = []
    for x, y in points:
        xi, yi = min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1)
        out.append(int(lookup[nearest[yi, xi]]))
    return out


def _errors(found: list, truth: list[dict]) -> list[float]:
    """Tip error of each true instrument: paired by least total tip distance; one left over
    counts the distance to the nearest found tip."""
    if not found:
        return [math.nan] * len(truth)
    d = np.array([[math.dist(f.tip, t["tip"]) for t in truth] for f in found])
    errors = d.min(axis=0)
    rows, cols = linear_sum_assignment(d)
    errors[cols] = d[rows, cols]
    return [float(e) for e in errors]


def _tip_clear(instances: np.ndarray, inst: dict) -> bool:
    """Whether no other instrument lies within 4 px of the true tip."""
    x, y = (round(v) for v in inst["tip"])
    patch = instances[max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5]
    return not ((patch > 0) & (patch != inst["id"] + 1)).any()


def measure(frames, task: str) -> dict:
    merged = {"components": 0, "found_as_two": 0}
    tips = {key: [] for key in ("split", "merged", "exact", "split_clear", "split_touching",
                                "exact_clear", "exact_touching")}  # fmt: skip
    single = {"split": [], "merged": [], "frames": 0, "changed": 0}
    timing = {"split": [], "merged": [], "split_frames": []}
    for frame, view, is_crossing_clip in frames:
        mask = frame.mask(task)
        result = {}
        for name, split in (("split", True), ("merged", False)):
            start = time.process_time()
            result[name] = find_instruments(mask, task=task, view=view, split=split)
            timing[name].append(time.process_time() - start)
        n, comp = cv2.connectedComponents((frame.parts > 0).view(np.uint8), connectivity=8)
        truth = [t for t in frame.instruments if t["visible"]]
        owner = {}
        for t in truth:
            ys, xs = np.nonzero(frame.instances == t["id"] + 1)
            owner[t["id"]] = int(np.bincount(comp[ys, xs]).argmax())
        groups = {k: [t for t in truth if owner[t["id"]] == k] for k in range(1, n)}
        if any(len(g) >= 2 for g in groups.values()):
            timing["split_frames"].append(timing["split"][-1])
        for name in ("split", "merged"):
            where = _component_of(comp, [f.tip for f in result[name]])
            for k, members in groups.items():
                found = [f for f, c in zip(result[name], where, strict=True) if c == k]
                errors = _errors(found, members)
                if len(members) >= 2:
                    tips[name] += errors
                    if name == "split":
                        merged["components"] += 1
                        merged["found_as_two"] += len(found) == len(members)
                        for e, t in zip(errors, members, strict=True):
                            clear = "clear" if _tip_clear(frame.instances, t) else "touching"
                            tips[f"split_{clear}"].append(e)
                            # the floor: the cues of the true instance mask alone
                            own = np.where(frame.instances == t["id"] + 1, mask, 0)
                            exact = _errors(find_instruments(own, task=task, view=view,
                                                             split=False), [t])[0]  # fmt: skip
                            tips["exact"].append(exact)
                            tips[f"exact_{clear}"].append(exact)
                elif len(members) == 1 and not is_crossing_clip:
                    single[name] += errors
        if not is_crossing_clip:
            single["frames"] += 1
            single["changed"] += [a.to_dict() for a in result["split"]] != [
                b.to_dict() for b in result["merged"]]  # fmt: skip
    return {
        "merged": {
            **merged,
            "found_as_two_pct": 100.0 * merged["found_as_two"] / max(merged["components"], 1),
            **{f"tip_{k}": _stats([e for e in v if e == e]) for k, v in tips.items()},
        },
        "single": {
            f"tip_{k}": _stats([e for e in single[k] if e == e]) for k in ("split", "merged")
        },
        "default_frames": {"frames": single["frames"], "changed_by_split": single["changed"]},
        "ms_per_frame": {k: 1e3 * float(np.mean(v)) if v else None for k, v in timing.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12, help="clips: N seeds from --first")
    parser.add_argument("--first", type=int, default=100, help="first seed (0..7 tuned it)")
    parser.add_argument("--step", type=int, default=10, help="every STEP-th of 250 frames")
    parser.add_argument("--tasks", nargs="+", default=["parts", "binary"])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    frames = []
    for seed in range(args.first, args.first + args.seeds):
        for crossings in (1.0, 0.0):
            surgery = SyntheticSurgery(seed=seed, crossings=crossings)
            view = FieldOfView.from_image(surgery.render(0).image)
            frames += [(surgery.render(i), view, crossings > 0)
                       for i in range(0, 250, args.step)]  # fmt: skip
    results = {task: measure(frames, task) for task in args.tasks}
    for task, r in results.items():
        m = r["merged"]
        print(f"{task}: {m['components']} merged components (two or more instruments in one); "
              f"found as two: {m['found_as_two']} ({m['found_as_two_pct']:.1f} %)")  # fmt: skip
        rows = [("merged, split", m["tip_split"]), ("merged, not split", m["tip_merged"]),
                ("merged, exact instance masks", m["tip_exact"]),
                ("  tip clear, split", m["tip_split_clear"]),
                ("  tip clear, exact", m["tip_exact_clear"]),
                ("  tip touching, split", m["tip_split_touching"]),
                ("  tip touching, exact", m["tip_exact_touching"]),
                ("singles, split", r["single"]["tip_split"]),
                ("singles, not split", r["single"]["tip_merged"])]  # fmt: skip
        for label, s in rows:
            print(f"  {label:30} n={s['count']:4d}  tip error median {s['median'] or 0:6.2f} px"
                  f"  p90 {s['p90'] or 0:6.2f} px")  # fmt: skip
        d, t = r["default_frames"], r["ms_per_frame"]
        print(f"  default clips: {d['changed_by_split']} of {d['frames']} frames' cues changed")
        print(f"  CPU ms per frame: split {t['split']:.2f} (frames with a merged component: "
              f"{t['split_frames'] or 0:.2f}), not split {t['merged']:.2f}")  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
