"""Train the dilated ResNet-18 (output stride 8) on synthetic clips on the CPU and report the
IoU on held-out clips, for the binary and the parts task, with the wall time.

    python scripts/bench_train_synthetic.py --out /tmp/bench_train
    python scripts/bench_train_synthetic.py --out /tmp/bench_train --epochs 30 --threads 2

Clips come from ``surgseg.synthetic.write_clip`` (kept between runs in ``OUT/clips``); training
goes through ``surgseg-train``'s own ``run`` with ``+experiment=synthetic_resnet18``, so the
augmentation, loss and schedule are the app's. Targets: binary IoU >= 0.90, parts mIoU >= 0.75.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.train import run
from surgseg.synthetic import write_clip

TARGETS = {"binary": 0.90, "parts": 0.75}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--train-clips", type=int, default=48, help="one scene (seed) each")
    parser.add_argument("--val-clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=10, help="frames per clip")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tasks", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clips = args.out / "clips"
    train_names = [f"train{i}" for i in range(args.train_clips)]
    val_names = [f"val{i}" for i in range(args.val_clips)]
    started = time.perf_counter()
    for seed, name in enumerate(train_names + val_names):
        if not (clips / name / "clip.json").is_file():
            height, width = args.frame_size
            write_clip(clips / name, num_frames=args.frames, width=width, height=height, seed=seed)
    print(
        f"clips: {len(train_names)} train + {len(val_names)} held out, {args.frames} frames each "
        f"({time.perf_counter() - started:.1f}s)"
    )

    report = {"threads": args.threads, "epochs": args.epochs, "frame_size": args.frame_size}
    for task in args.tasks:
        out = args.out / task
        shutil.rmtree(out, ignore_errors=True)
        overrides = [
            "+experiment=synthetic_resnet18",
            f"task={task}",
            f"data.root={clips}",
            f"data.val_videos=[{','.join(val_names)}]",
            f"output_dir={out}",
            f"epochs={args.epochs}",
            f"batch_size={args.batch_size}",
            "progress=false",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        started = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - started
        report[task] = {
            "val_miou": result["val_miou"],
            "best_val_miou": result["best_val_miou"],
            "val_iou": result["val_iou"],
            "steps": result["steps"],
            "train_s": round(wall, 1),
            "target": TARGETS[task],
            "met": (result["val_miou"] or 0) >= TARGETS[task],
        }
        print(
            f"{task}: held-out mIoU {result['val_miou']:.4f} (target {TARGETS[task]}), "
            f"{result['steps']} steps in {wall:.0f}s; curves: {out / 'curves.png'}"
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
