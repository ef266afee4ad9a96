"""Figures for processing an archive: workers on Ray, Ray's overhead, a second run.

    PYTHONPATH=. python scripts/bench_archive.py --out /tmp/surgseg-archive

Every figure is the wall time of a whole ``surgseg-infer`` command, as a user runs it, on
synthetic clips of the demo's size (640×512, 25 fps), with ``--checkpoint`` (the demo's
trained model: ``demo_out/model.pt``) or, without it, the demo's architecture with random
weights (a ResNet-18 FCN at output stride 8, input 256×320: the model's speed does not depend
on its weights, but the cue stage's does, through the masks):

1. Throughput: ``cluster=ray ray.address=auto ray.workers=W`` (W = 1, 2; one CPU and one
   torch thread per worker) over ``--clips`` clips of ``--frames`` frames, against a cluster
   started once beforehand with ``ray start --head`` (an archive's users run one); videos/s
   and frames/s, and the ratio of 2 workers to 1.
2. Ray's overhead: the same command on one clip, here (``cluster=local``, torch on one
   thread) against ``cluster=ray`` on the running cluster (one worker), and against
   ``cluster=ray`` starting Ray itself; and over the whole archive, one Ray worker against
   ``cluster=local`` with one thread per stage (the start-up spread over the videos).
3. A second run over a finished archive, against the first.

Commands alternate, ``--repeats`` times each; medians. Writes and prints
``<out>/archive.json``. Run it on quiet cores: these are wall-clock figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from surgseg.checkpoint import CheckpointMeta, save_checkpoint
from surgseg.synthetic import write_clip
from surgseg.tasks import class_names

INPUT_SIZE = (256, 320)
PORT = "6391"


def checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(task="parts", class_names=list(class_names("parts")),
                          model={"depth": 18, "output_stride": 8, "head": "fcn",
                                 "aux_loss": False},
                          input_size=INPUT_SIZE,
                          provenance={"made_by": "bench_archive"})  # fmt: skip
    save_checkpoint(path, model=meta.build(), meta=meta)
    return path


def clips(folder: Path, *, count: int, frames: int) -> Path:
    for i in range(count):
        if not (folder / f"case{i:02d}" / "clip.json").exists():
            write_clip(folder / f"case{i:02d}", num_frames=frames, seed=100 + i)
    return folder


def infer(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one ``surgseg-infer`` command, and its summary line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "surgseg.apps.infer", "progress=false", *args],
                          capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return wall, proc.stdout.strip().splitlines()[-1]


def ray_cli(*args: str, env: dict[str, str]) -> None:
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), *args], env=env, check=True, capture_output=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a trained model (default: the demo's architecture, random weights)",
    )
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    env = {**os.environ, "RAY_TMPDIR": str(args.out / "ray"), "OMP_NUM_THREADS": "1"}
    (args.out / "ray").mkdir(exist_ok=True)
    ckpt = args.checkpoint or checkpoint(args.out / "model.pt")
    archive = clips(args.out / "archive", count=args.clips, frames=args.frames)
    one = archive / "case00" / "video.mp4"
    common = [f"checkpoint={ckpt}", "ray.cpus_per_worker=1"]
    total_frames = args.clips * args.frames

    def fresh(name: str) -> str:
        shutil.rmtree(args.out / name, ignore_errors=True)
        return f"output_dir={args.out / name}"

    walls: dict[str, list[float]] = {}
    ray_cli("start", "--head", f"--port={PORT}", f"--num-cpus={os.cpu_count()}",
            "--include-dashboard=false", "--disable-usage-stats", env=env)  # fmt: skip
    try:
        for _ in range(args.repeats):
            for workers in (1, 2):
                wall, _ = infer([f"input={archive}", fresh("w"), *common, "cluster=ray",
                                 "ray.address=auto", f"ray.workers={workers}"], env)  # fmt: skip
                walls.setdefault(f"archive_{workers}_workers", []).append(wall)
            local, _ = infer([f"input={archive}", fresh("local"), *common, "cluster=local",
                              "workers.locate=1", "workers.render=1"], env)  # fmt: skip
            walls.setdefault("archive_local", []).append(local)
            rerun, line = infer([f"input={archive}", f"output_dir={args.out / 'w'}", *common,
                                 "cluster=ray", "ray.address=auto", "ray.workers=2"],
                                env)  # fmt: skip
            assert f"0 done, {args.clips} skipped" in line, line
            walls.setdefault("second_run", []).append(rerun)
            for name, extra in (("one_video_local", ["cluster=local"]),
                                ("one_video_ray_running", ["cluster=ray", "ray.address=auto",
                                                           "ray.workers=1"])):  # fmt: skip
                wall, _ = infer([f"input={one}", fresh("one"), *common, *extra], env)
                walls.setdefault(name, []).append(wall)
    finally:
        ray_cli("stop", "--force", env=env)
    for _ in range(args.repeats):
        wall, _ = infer([f"input={one}", fresh("one"), *common, "cluster=ray", "ray.workers=1"],
                        {**env, "RAY_ADDRESS": ""})  # fmt: skip
        walls.setdefault("one_video_ray_started_by_the_command", []).append(wall)

    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "checkpoint": str(ckpt), "clips": args.clips, "frames_per_clip": args.frames,
        "repeats": args.repeats,
        "walls_s": walls, "median_s": med,
        "frames_per_s": {w: total_frames / med[f"archive_{w}_workers"] for w in (1, 2)},
        "two_workers_vs_one": med["archive_1_workers"] / med["archive_2_workers"],
        "ray_overhead_one_video_running_cluster":
            med["one_video_ray_running"] / med["one_video_local"] - 1,
        "ray_overhead_one_video_starting_ray":
            med["one_video_ray_started_by_the_command"] / med["one_video_local"] - 1,
        "second_run_vs_first": med["second_run"] / med["archive_2_workers"],
        "ray_1_worker_vs_local_archive": med["archive_1_workers"] / med["archive_local"] - 1,
        "ray_fixed_cost_s": med["one_video_ray_running"] - med["one_video_local"],
    }  # fmt: skip
    (args.out / "archive.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
