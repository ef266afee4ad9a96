"""Benchmark and parity check of every inference engine and precision.

    python scripts/bench_engines.py --out bench/gpu                      # GPU: full matrix
    python scripts/bench_engines.py --out bench/cpu --depths 18 101 --sizes 512x640 --batches 1

For each model depth, input size and batch: ms/frame (median of --runs after --warmup; CUDA
events on the GPU, time.perf_counter on the CPU), frames/s, peak device memory, FLOPs per frame
(torch.utils.flop_counter: 2 per multiply-add, as the roof counts 2n³ per n×n matmul), the share
of the compute roof reached and the share of mask pixels that agree with torch FP32. Weights are
random with a sharpened classifier unless --checkpoint is given.

The roof is the fastest dense kernel measured in the same run, at the start and again at the
end (the higher counts): on the GPU a bf16 8192³ matmul; on the CPU the fastest of an fp32
2048³ matmul in torch (MKL), the same work as a 1×1 convolution in torch (oneDNN, which runs
torch's convolutions) and a 2048³ MatMul in ONNX Runtime (MLAS, which runs its convolutions),
each over ≥ 2 s, all on the threads the engines get (torch's intra-op count, passed to ONNX
Runtime too). A roof from one library, timed once for a second, is below what another library's
kernels reach, or below what the machine gives when another job happened to run in that second:
shares above 100 % came from that. A share above 100 % is now reported as a measurement fault.
The load average before and after the run is recorded; take figures from a quiet machine.

On the CPU with ResNet-101 in --depths, torchvision's fcn_resnet101 (weights=None,
weights_backbone=None: nothing is downloaded; same input, classes and output stride 8) is timed
in the same run as a peer of the torch engine.

On a GPU the reference is computed with TF32 off (true FP32); torch's own "fp32" variant runs
with PyTorch's defaults, where cuDNN convolutions use TF32, and is labelled so. The TensorRT and
ONNX Runtime (CUDA) "fp32" variants run with TF32 off (their engines' default); ONNX Runtime's
TensorRT provider cannot turn TF32 off and is labelled "tf32". Each TensorRT engine is built once
per model, size and precision (one profile for every batch size).
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
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
PEER = "torchvision fcn_resnet101 fp32 (peer)"
ROOF_SECONDS = 2.0  # each roof kernel is timed for at least this long


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


def time_ms(fn, x: torch.Tensor, *, warmup: int, runs: int) -> float:
    """Median wall time of ``fn(x)`` in ms (CUDA events on the GPU)."""
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
    return statistics.median(times)


def _best_rate(fn, flops: float, *, seconds: float = ROOF_SECONDS, cuda: bool = False) -> float:
    """Highest FLOP/s of ``fn()`` over runs that together last at least ``seconds``. On the CPU
    it also prints the threads the kernel kept busy (process CPU time / wall time)."""
    for _ in range(2):
        fn()  # warm-up: thread pools, kernel choice, lazy allocations
    best, start, cpu = float("inf"), time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    if not cuda:
        busy = (time.process_time() - cpu) / (time.perf_counter() - start)
        print(f"  {flops / best / 1e9:.1f} GFLOP/s, {busy:.2f} threads busy")
    return flops / best


def _ort_matmul(n: int, threads: int):
    """An n×n fp32 MatMul on ONNX Runtime's CPU provider (MLAS), or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "roof",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    a = np.random.default_rng(1).standard_normal((n, n), np.float32)
    return lambda: session.run(["c"], {"a": a})


def roof_tflops(device: torch.device, threads: int, seconds: float) -> dict[str, float]:
    """TFLOP/s of each dense kernel the roof is taken from (see the module docstring)."""
    if device.type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        rate = _best_rate(lambda: a @ b, 2 * n**3, seconds=seconds, cuda=True)
        return {"bf16 matmul 8192³": rate / 1e12}
    print(f"roof kernels on {threads} threads:")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).eval()
    x = torch.randn(1, n, 32, n // 32)  # n input channels × n pixels: the same 2n³ FLOPs
    rates = {}
    with torch.inference_mode():
        rates["fp32 matmul 2048³ (torch, MKL)"] = _best_rate(
            lambda: a @ b, 2 * n**3, seconds=seconds
        )
        rates["fp32 1×1 conv, 2048³ (torch, oneDNN)"] = _best_rate(
            lambda: conv(x), 2 * n**3, seconds=seconds
        )
    run = _ort_matmul(n, threads)
    if run is not None:
        rates["fp32 MatMul 2048³ (ONNX Runtime, MLAS)"] = _best_rate(run, 2 * n**3, seconds=seconds)
    return {k: v / 1e12 for k, v in rates.items()}


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
    if name == "onnxruntime" and options.get("providers") == ["cpu"]:
        options["threads"] = torch.get_num_threads()  # the roof's and torch's thread count
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
    if name == "onnxruntime":
        from surgseg.engines.onnxruntime_engine import run_precision

        precision = run_precision(precision, options.get("providers") or ["cuda"])
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


def measure_peer(meta, x: torch.Tensor, args) -> dict:
    """torchvision's fcn_resnet101 (random weights, nothing downloaded) timed like an engine."""
    from torchvision.models.segmentation import fcn_resnet101

    torch.manual_seed(0)
    model = fcn_resnet101(weights=None, weights_backbone=None, num_classes=meta.num_classes,
                          aux_loss=False).eval()  # fmt: skip
    with torch.inference_mode():
        ms = time_ms(lambda batch: model(batch)["out"], x, warmup=args.warmup, runs=args.runs)
    flops = flops_per_frame(model, *x.shape[2:])
    return {"ms_per_frame": ms / len(x), "fps": 1e3 * len(x) / ms, "agreement": None,
            "gflops_per_frame": flops / 1e9}  # fmt: skip


def bench(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS
    if args.engines:
        variants = [v for v in variants if v[0] in args.engines]
    threads = torch.get_num_threads()
    # Fixed, not dynamic: MKL's default (MKL_DYNAMIC=true) may run a matmul on fewer threads
    # than asked, which made an old roof single-threaded while the engines used every core.
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    print(f"device {device}, {threads} threads, load average {load_before[0]:.2f}")
    roofs = roof_tflops(device, threads, args.roof_seconds)
    print("roof kernels (TFLOP/s):", json.dumps(roofs))
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
                    rows.append(row)
                    print(json.dumps(row))
                if device.type == "cpu" and depth == 101 and not args.no_peer:
                    row = {"depth": depth, "size": list(hw), "batch": batch, "engine": PEER,
                           **measure_peer(meta, x, args)}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row))
    # The roof again at the end: a busy moment at the start must not lower it.
    for kernel, rate in roof_tflops(device, threads, args.roof_seconds).items():
        roofs[kernel] = max(roofs[kernel], rate)
    kernel, roof = max(roofs.items(), key=lambda item: item[1])
    for row in rows:
        row["roof_share"] = row["gflops_per_frame"] / row["ms_per_frame"] / roof  # TFLOP/s
        if row["roof_share"] > 1:
            share = f"{100 * row['roof_share']:.0f} %"
            print(f"warning: {row['engine']} at {share} of the roof: the roof was measured low "
                  "(a busy machine?); do not use these figures")  # fmt: skip
    info = {
        "device": str(device),
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "roof_tflops": roof,
        "roof_kernel": kernel,
        "roof_kernels_tflops": roofs,
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
    }
    return [info, *rows]


def markdown(results: list[dict]) -> str:
    info, rows = results[0], results[1:]
    if info["device"] == "cuda":
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({info['threads']} threads, {info['cpu_capability']})"
    lines = [
        f"Device: {device}; roof {info['roof_tflops']:.3f} TFLOP/s ({info['roof_kernel']}, the "
        "fastest dense kernel measured in the same run: "
        + ", ".join(f"{k} {v:.3f}" for k, v in info["roof_kernels_tflops"].items())
        + f"); load average {info['load_average_before']:.2f} before, "
        f"{info['load_average_after']:.2f} after. % of roof: the network's counted FLOPs per "
        "second over the roof (≤ 100 % by construction; above it, the run is void).",
        "",
        "| model | input | batch | engine | ms/frame | fps | GFLOP/frame | % of roof "
        "| mask agreement | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_mem_mib']:.0f}" if "peak_mem_mib" in r else "–"
        agree = "–" if r["agreement"] is None else f"{100 * r['agreement']:.2f}%"
        lines.append(
            f"| ResNet-{r['depth']} | {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['engine']} "
            f"| {r['ms_per_frame']:.2f} | {r['fps']:.1f} | {r['gflops_per_frame']:.0f} "
            f"| {100 * r['roof_share']:.1f} | {agree} | {mem} |"
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
    roof = "time each roof kernel this long, at the start and at the end"
    parser.add_argument("--roof-seconds", type=float, default=ROOF_SECONDS, help=roof)
    peer = "skip torchvision's fcn_resnet101 peer (CPU, ResNet-101)"
    parser.add_argument("--no-peer", action="store_true", help=peer)
    args = parser.parse_args()
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    results = bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
