"""Benchmark and parity check of every inference engine and precision.

    python scripts/bench_engines.py --out bench/gpu                      # GPU: full matrix
    python scripts/bench_engines.py --out bench/cpu --depths 18 101 --sizes 512x640 --batches 1

For each model depth, input size and batch: ms/frame (median of --runs after --warmup; CUDA
events on the GPU, time.perf_counter on the CPU), frames/s, peak device memory, FLOPs per frame
(torch.utils.flop_counter), the share of the compute floor reached (against a matmul measured in
the same run: bf16 on the GPU, fp32 on the CPU) and the share of mask pixels that agree with
torch FP32. Weights are random with a sharpened classifier unless --checkpoint is given.
On a GPU the reference is computed with TF32 off (true FP32); torch's own "fp32" variant runs
with PyTorch's defaults, where cuDNN convolutions use TF32, and is labelled so. The TensorRT and
ONNX Runtime (CUDA) "fp32" variants run with TF32 off (their engines' default). Each TensorRT
engine is built once per model, size and precision (one profile for every batch size).
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from surgseg.checkpoint import CheckpointMeta, load_checkpoint
from surgseg.engines import create_engine
from surgseg.errors import SurgsegError
from surgseg.export import synthetic_frames, true_fp32
from surgseg.tasks import class_names

GPU_VARIANTS = [
    ("torch", {"precision": "fp32"}),
    ("torch", {"precision": "fp16", "channels_last": True}),
    ("torch", {"precision": "bf16", "channels_last": True}),
    ("torch", {"precision": "fp16", "channels_last": True, "cuda_graphs": True}),
    ("onnxruntime", {"providers": ["cuda"]}),
    ("tensorrt", {"precision": "fp32"}),
    ("tensorrt", {"precision": "fp16"}),
    ("tensorrt", {"precision": "bf16"}),
    ("tensorrt", {"precision": "int8"}),
]
CPU_VARIANTS = [("torch", {"precision": "fp32"}), ("onnxruntime", {"providers": ["cpu"]})]


def make_model(depth: int, checkpoint: str | None) -> tuple[torch.nn.Module, CheckpointMeta]:
    if checkpoint:
        return load_checkpoint(checkpoint)
    torch.manual_seed(0)
    meta = CheckpointMeta(
        task="parts",
        class_names=list(class_names("parts")),
        model={"depth": depth, "output_stride": 8, "head": "fcn", "aux_loss": False},
        input_size=(512, 640),
    )
    model = meta.build().eval()
    # Random heads give near-tied logits: sharpen them so mask agreement means something.
    with torch.no_grad():
        model.classifier[-1].weight.mul_(20)
    return model, meta


def time_ms(fn, x: torch.Tensor, *, warmup: int, runs: int, best: bool = False) -> float:
    """Median (or with ``best``, shortest) wall time of ``fn(x)`` in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn(x)
    times = []
    if x.is_cuda:
        torch.cuda.synchronize()
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return min(times) if best else statistics.median(times)


def matmul_tflops(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul throughput: the compute floor the model is compared with."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # The floor is a peak: the fastest run, so a busy shared machine does not lower it.
    ms = time_ms(lambda x: x @ b, a, warmup=3, runs=20 if device.type == "cuda" else 10, best=True)
    return 2 * n**3 / ms / 1e9, str(dtype).removeprefix("torch.")


def flops_per_frame(model: torch.nn.Module, h: int, w: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, h, w, device=next(model.parameters()).device))
    return counter.get_total_flops()


def engine_options(name: str, options: dict, args, depth: int, hw: tuple, calib):
    """Per-run options: cache folders, the TensorRT profile, INT8 calibration frames.

    The profile does not depend on the batch being timed (batch 1..max, tuned for the largest),
    so each TensorRT engine is built once per model, size and precision and then loaded from
    the cache for the other batch sizes.
    """
    options = dict(options)
    h, w = hw
    if name in ("onnxruntime", "tensorrt"):
        options["cache_dir"] = args.out / "cache" / f"r{depth}-{h}x{w}"
    if name == "tensorrt":
        top = max(args.batches)
        options["profile"] = {"min": (1, 3, h, w), "opt": (top, 3, h, w), "max": (top, 3, h, w)}
        if options["precision"] == "int8":
            options["calibration_batches"] = calib
    return options


def describe(name: str, options: dict, device: torch.device) -> str:
    """e.g. "torch fp16 channels_last cuda_graphs", "onnxruntime cuda"."""
    precision = options.get("precision", "fp32")
    if name == "torch" and precision == "fp32" and device.type == "cuda":
        precision = "fp32 (TF32 convs)" if torch.backends.cudnn.allow_tf32 else "fp32"
    words = [name, precision]
    words += [k for k in ("channels_last", "cuda_graphs") if options.get(k)]
    return " ".join(words + list(options.get("providers", [])))


def measure(name: str, options: dict, model, meta, x: torch.Tensor, ref_mask, args) -> dict:
    """Time one engine on ``x``; its mask agreement with ``ref_mask`` and memory use."""
    cuda = x.is_cuda
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        free = torch.cuda.mem_get_info()[0]
    engine = create_engine(name, model=model, meta=meta, device=x.device, **options)
    out = engine.infer(x)
    ms = time_ms(engine.infer, x, warmup=args.warmup, runs=args.runs) / len(x)
    row = {
        "ms_per_frame": ms,
        "fps": 1e3 / ms,
        "agreement": (out.float().argmax(1) == ref_mask).float().mean().item(),
    }
    if cuda:  # torch's own peak, or the device-wide drop for engines with their own allocator
        used = max(torch.cuda.max_memory_allocated(), free - torch.cuda.mem_get_info()[0])
        row["peak_mem_mib"] = used / 2**20
    engine.close()
    return row


def bench(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS
    if args.engines:
        variants = [v for v in variants if v[0] in args.engines]
    floor, floor_dtype = matmul_tflops(device)
    print(f"device {device}: {floor_dtype} matmul {floor:.2f} TFLOP/s")
    rows = []
    for depth in args.depths:
        model, meta = make_model(depth, args.checkpoint)
        for hw in args.sizes:
            flops = flops_per_frame(model, *hw)
            frames = synthetic_frames(meta, [hw], batch=max(args.batches), seed=1)[0]
            calib = synthetic_frames(meta, [hw] * 4, batch=4, seed=2)
            for batch in args.batches:
                x = frames[:batch].to(device)
                with true_fp32():
                    ref = create_engine("torch", model=model, meta=meta, device=device).infer(x)
                ref_mask = ref.argmax(1)
                model.cpu()  # engines take their own copy to the device: clean memory figures
                for name, options in variants:
                    options = engine_options(name, options, args, depth, hw, calib)
                    label = describe(name, options, device)
                    try:
                        row = measure(name, options, model, meta, x, ref_mask, args)
                    except SurgsegError as exc:
                        print(f"skip {label}: {exc}")
                        continue
                    row = {"depth": depth, "size": list(hw), "batch": batch, "engine": label, **row}
                    row["gflops_per_frame"] = flops / 1e9
                    row["floor_share"] = flops / (row["ms_per_frame"] / 1e3) / (floor * 1e12)
                    rows.append(row)
                    print(json.dumps(row))
    return [{"device": str(device), "floor_tflops": floor, "floor_dtype": floor_dtype}, *rows]


def markdown(results: list[dict]) -> str:
    info, rows = results[0], results[1:]
    device = torch.cuda.get_device_name() if info["device"] == "cuda" else "CPU"
    lines = [
        f"Device: {device}; {info['floor_dtype']} matmul {info['floor_tflops']:.2f} TFLOP/s "
        "measured in the same run. % of matmul rate: the network's counted FLOPs per second "
        "over that rate; above 100 % where convolutions need fewer operations than counted "
        "(Winograd, as ONNX Runtime's and oneDNN's CPU kernels use).",
        "",
        "| model | input | batch | engine | ms/frame | fps | GFLOP/frame | % of matmul rate "
        "| mask agreement | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_mem_mib']:.0f}" if "peak_mem_mib" in r else "–"
        lines.append(
            f"| ResNet-{r['depth']} | {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['engine']} "
            f"| {r['ms_per_frame']:.2f} | {r['fps']:.1f} | {r['gflops_per_frame']:.0f} "
            f"| {100 * r['floor_share']:.1f} | {100 * r['agreement']:.2f}% | {mem} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json/.md")
    parser.add_argument("--checkpoint", help="a surgseg checkpoint (default: random weights)")
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 101] if gpu else [18])
    sizes = ["512x640", "1024x1280"] if gpu else ["256x320"]
    parser.add_argument("--sizes", nargs="+", default=sizes, help="HxW")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8] if gpu else [1])
    parser.add_argument("--engines", nargs="+", help="subset of torch, onnxruntime, tensorrt")
    parser.add_argument("--warmup", type=int, default=20 if gpu else 2)
    parser.add_argument("--runs", type=int, default=100 if gpu else 10)
    args = parser.parse_args()
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    results = bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
