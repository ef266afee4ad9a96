"""Write a synthetic endoscopic surgery clip (video, masks, instrument poses) to a folder.

python scripts/make_synthetic.py data/synthetic/seed0 --frames 250 --seed 0
python scripts/make_synthetic.py /tmp/clip --frames 8 --example docs/synthetic_example.png
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from surgseg.atomic import atomic_path
from surgseg.synthetic import SyntheticSurgery, write_clip
from surgseg.tasks import palette

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument("out_dir", type=Path, help="folder to write the clip into")
parser.add_argument("--frames", type=int, default=250)
parser.add_argument("--width", type=int, default=640)
parser.add_argument("--height", type=int, default=512)
parser.add_argument("--fps", type=float, default=25.0)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--instruments", type=int, default=None, help="1..3 (default: random)")
parser.add_argument("--codec", default="libx264")
parser.add_argument("--example", type=Path, help="also save one frame beside its parts mask (PNG)")
parser.add_argument("--example-index", type=int, default=0)
args = parser.parse_args()

root = write_clip(
    args.out_dir,
    num_frames=args.frames,
    width=args.width,
    height=args.height,
    fps=args.fps,
    seed=args.seed,
    num_instruments=args.instruments,
    codec=args.codec,
    progress=True,
)
print(f"wrote {args.frames} frames to {root}")

if args.example:
    surgery = SyntheticSurgery(
        width=args.width,
        height=args.height,
        fps=args.fps,
        seed=args.seed,
        num_instruments=args.instruments,
    )
    frame = surgery.render(args.example_index)
    side_by_side = np.hstack([frame.image, palette(4)[frame.parts]])
    with atomic_path(args.example) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(side_by_side, cv2.COLOR_RGB2BGR))
    print(f"wrote example frame {args.example_index} to {args.example}")
