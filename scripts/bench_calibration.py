"""Memory and CPU time of INT8 calibration (``surgseg.quantize``), on the CPU.

    python scripts/bench_calibration.py --depth 101 --size 512x640 --frames 2 6 --method entropy

For each frame count, in a fresh process: exports a random-weight model (output stride 8) to
ONNX, quantizes it on synthetic frames, and prints the activations held per frame (what the
calibration session returns for one frame), the process's peak RSS before and after
calibration, and the CPU seconds of the quantization. Peak RSS that does not grow with the
frame count is the point: frames are calibrated one at a time.
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from surgseg.checkpoint import CheckpointMeta
from surgseg.export import export_onnx, synthetic_frames
from surgseg.quantize import METHODS, quantize_onnx
from surgseg.tasks import class_names


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(depth: int, size: tuple[int, int], frames: int, method: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("surgseg.quantize").setLevel(logging.INFO)
    meta = CheckpointMeta(
        task="parts",
        class_names=list(class_names("parts")),
        model={"depth": depth, "output_stride": 8, "head": "fcn", "aux_loss": False},
        input_size=size,
    )
    with tempfile.TemporaryDirectory() as folder:
        src = export_onnx(meta.build().eval(), Path(folder) / "m.onnx", meta=meta)
        calib = [b.numpy() for b in synthetic_frames(meta, [size] * frames, batch=1, seed=1)]
        before = peak_rss_mib()
        t0 = time.process_time()
        quantize_onnx(src, Path(folder) / "q.onnx", frames=calib, method=method)
        cpu = time.process_time() - t0
    print(
        f"ResNet-{depth} {size[0]}x{size[1]} {method}, {frames} frames: CPU {cpu:.1f} s, "
        f"peak RSS {peak_rss_mib():.0f} MiB ({before:.0f} before calibration)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--size", default="512x640", help="HxW")
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--method", choices=METHODS, default="entropy")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.one:
        measure(args.depth, size, args.frames[0], args.method)
        return
    for frames in args.frames:  # a fresh process each: peak RSS is per process
        command = [sys.executable, __file__, "--one", "--depth", str(args.depth)]
        command += ["--size", args.size, "--frames", str(frames), "--method", args.method]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
