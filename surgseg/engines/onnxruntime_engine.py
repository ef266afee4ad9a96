"""ONNX Runtime engine: CPU, CUDA or TensorRT execution provider.

Without ``onnx_path`` the model is exported on the fly into ``cache_dir`` (named by a hash of
its weights and metadata, so a changed model is exported again).

The CUDA and TensorRT providers come only with the ``onnxruntime-gpu`` package, which
replaces ``onnxruntime`` (both install the same ``onnxruntime`` module): asking for them
without it is a ConfigError that says how to switch. On CUDA the torch input and output tensors
are bound in place with io_binding (nothing goes through host memory). With the CUDA provider
the session runs on its own CUDA stream (``user_compute_stream``): that stream waits for the
caller's current stream, the caller's stream waits for it, and ``run_with_iobinding`` returns
without synchronizing the host. The TensorRT provider's Python options do not take a stream in
every ONNX Runtime version, so with it the host waits for the input and for the run. fp32 on
CUDA is FP32: the CUDA provider's TF32 convolutions are off unless ``tf32=True``. The TensorRT
provider has no TF32 option (ONNX Runtime's TensorRT provider options), and TensorRT's builder
enables TF32 for float32 layers by default, so fp32 there is TF32: ``precision`` is then "tf32"
and the engine's name says so ("onnxruntime tf32").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surgseg.checkpoint import CheckpointMeta
from surgseg.engines.base import Engine
from surgseg.errors import ConfigError
from surgseg.export import DEFAULT_CACHE_DIR, cached_onnx, check_onnx_weights

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
PRECISIONS = ("fp32", "fp16")
GPU_INSTALL = (
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'surgseg[onnxruntime-gpu]'"
)
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


class OnnxRuntimeEngine(Engine):
    """Runs an ONNX export of the model on ONNX Runtime.

    Args:
        model, meta: the model to export when ``onnx_path`` is None.
        device: "cpu" or a CUDA device; CUDA/TensorRT providers need a CUDA device.
        providers: names from ``PROVIDERS`` in priority order; default cuda+cpu on CUDA, cpu on CPU.
        onnx_path: an existing export to run.
        cache_dir: where on-the-fly exports (and TensorRT EP engines) are kept.
        precision: "fp32" or "fp16" (the exported graph's type; TensorRT EP builds fp16 too).
        threads: intra-op threads on the CPU (0: ONNX Runtime's default).
        profile: optional {"min","opt","max"} NCHW shapes for the TensorRT provider.
        tf32: let the CUDA provider's float32 convolutions use TF32 (off: fp32 is FP32). The
            TensorRT provider has no such switch: with it, fp32 is TF32 (``self.precision``).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: nn.Module | None = None,
        meta: CheckpointMeta | None = None,
        *,
        device: str | torch.device = "cpu",
        providers: Sequence[str] | None = None,
        onnx_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        precision: str = "fp32",
        threads: int = 0,
        profile: dict[str, Sequence[int]] | None = None,
        tf32: bool = False,
    ):
        try:
            import onnxruntime as ort
            from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
        except ImportError:
            raise ConfigError(
                "engine=onnxruntime needs the onnxruntime package: pip install 'surgseg[onnx]'"
            ) from None
        if precision not in PRECISIONS:
            raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"engine.threads must be an integer ≥ 0 (0: ONNX Runtime's "
                              f"choice), got {threads!r}")  # fmt: skip
        self.device = torch.device(device)
        names = list(providers or (["cuda", "cpu"] if self.device.type == "cuda" else ["cpu"]))
        unknown = [p for p in names if p not in PROVIDERS]
        if unknown:
            raise ConfigError(f"engine.providers must be among {tuple(PROVIDERS)}, got {unknown}")
        gpu = [p for p in names if p != "cpu"]
        if gpu and self.device.type != "cuda":
            raise ConfigError(
                f"engine.providers {gpu} need a CUDA device, got device={self.device}"
            )
        available = ort.get_available_providers()
        missing = [p for p in names if PROVIDERS[p] not in available]
        if missing:
            raise ConfigError(
                f"engine=onnxruntime: this onnxruntime has no {missing} execution provider "
                f"(it has {available}); for CUDA/TensorRT install onnxruntime-gpu: {GPU_INSTALL}"
            )
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        given = onnx_path is not None
        if onnx_path is None:
            if model is None or meta is None:
                raise ConfigError("engine=onnxruntime needs onnx_path or a model to export")
            onnx_path = cached_onnx(model, meta, cache_dir=cache_dir, precision=precision)
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise ConfigError("ONNX file not found", self.onnx_path)

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        index = self.device.index or 0
        # The TensorRT provider cannot be given our stream in every version: host sync there.
        self._stream = torch.cuda.Stream(self.device) if gpu == ["cuda"] else None
        on_stream = (
            {"user_compute_stream": str(self._stream.cuda_stream)}
            if self._stream is not None
            else {}
        )
        cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / "ort-trt"
        provider_options = {
            "cpu": {},
            "cuda": {
                "device_id": index,
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "use_tf32": int(tf32),
                **on_stream,
            },
            "tensorrt": {
                "device_id": index,
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                **_trt_profile_options(profile),
            },
        }
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path),
                sess_options=options,
                providers=[(PROVIDERS[p], provider_options[p]) for p in names],
            )
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail) as exc:
            raise ConfigError(
                f"not an ONNX model ONNX Runtime can load ({type(exc).__name__})", self.onnx_path
            ) from None
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        image = self.session.get_inputs()[0]
        self.input_name = image.name
        # A static export (surgseg-export dynamic=false) is fixed at its batch and size: other
        # batches run in chunks of it; with the TensorRT provider, other sizes than the
        # model's would each build an engine.
        batch, _, *size = image.shape
        self._batch = batch if isinstance(batch, int) else None
        self._size = (  # the one size it runs, or None: any
            tuple(size) if all(isinstance(d, int) for d in size)
            else tuple(meta.input_size) if "tensorrt" in names and meta is not None
            else None
        )  # fmt: skip
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.output_dtype = _ORT_TYPES.get(out.type, torch.float32)
        if given:
            _check_graph_precision(precision, out.type, names, self.onnx_path)
            if model is not None:
                check_onnx_weights(self.onnx_path, model)
        self.num_classes = out.shape[1]
        if self.device.type == "cuda" and not isinstance(self.num_classes, int):
            raise ConfigError(
                "ONNX output has no fixed class count; export it with surgseg-export",
                self.onnx_path,
            )
        self._index = index
        self.precision = run_precision(precision, names)
        if self.precision == "tf32":
            self.name = "onnxruntime tf32"

    def max_batch(self, size: tuple[int, int]) -> int | None:
        """Any number of inputs (a static export's batch runs in chunks); any size for a
        dynamic export on the CPU or CUDA providers, else the export's or the model's alone
        (0 for the others)."""
        return None if self._size is None or tuple(size) == self._size else 0

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, torch.float32).contiguous()
        fixed = self._batch
        if fixed is None or len(batch) == fixed:
            return self._run(batch)
        outs = []
        for start in range(0, len(batch), fixed):
            part = batch[start : start + fixed]
            filled = torch.cat([part, part[-1:].expand(fixed - len(part), *part.shape[1:])])
            outs.append(self._run(filled)[: len(part)])
        return torch.cat(outs)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            out = self.session.run([self.output_name], {self.input_name: batch.numpy()})[0]
            return torch.from_numpy(out)
        return self._infer_cuda(batch)

    def _infer_cuda(self, batch: torch.Tensor) -> torch.Tensor:
        """io_binding on torch's CUDA memory, run on the session's stream (see module doc)."""
        n, _, h, w = batch.shape
        out = torch.empty((n, self.num_classes, h, w), dtype=self.output_dtype, device=self.device)
        binding = self.session.io_binding()
        binding.bind_input(
            self.input_name, "cuda", self._index, np.float32, tuple(batch.shape), batch.data_ptr()
        )
        binding.bind_output(
            self.output_name,
            "cuda",
            self._index,
            np.float16 if self.output_dtype == torch.float16 else np.float32,
            tuple(out.shape),
            out.data_ptr(),
        )
        caller = torch.cuda.current_stream(self.device)
        if self._stream is None:  # TensorRT provider: its own streams, synchronized with the host
            caller.synchronize()  # the input is written
            self.session.run_with_iobinding(binding)
            return out
        self._stream.wait_stream(caller)  # the input is written
        self.session.run_with_iobinding(binding, self._run_options)
        caller.wait_stream(self._stream)  # the caller's next work sees the output
        batch.record_stream(self._stream)  # not reused elsewhere before the run is done
        out.record_stream(self._stream)
        return out

    def close(self) -> None:
        self.session = None


def _check_graph_precision(
    precision: str, output_type: str, providers: Sequence[str], path: Path
) -> None:
    """ConfigError when ``engine.precision`` is not the precision of the given ONNX file
    (surgseg-export's fp16 graphs put out float16 logits, fp32 ones float): it would run in
    the file's precision, not the one recorded. TensorRT's provider may build fp16 from fp32."""
    graph = "fp16" if output_type == "tensor(float16)" else "fp32"
    if precision == graph or (precision == "fp16" and list(providers)[:1] == ["tensorrt"]):
        return
    raise ConfigError(
        f"engine.precision={precision}, but this is an {graph} export (logits {output_type}); "
        f"set engine.precision={graph}",
        path,
    )


def run_precision(precision: str, providers: Sequence[str]) -> str:
    """The precision float32 layers really run in: "tf32" for an fp32 graph whose first provider
    is TensorRT (it has no TF32 option and TensorRT enables TF32 by default), else
    ``precision``."""
    if precision == "fp32" and list(providers)[:1] == ["tensorrt"]:
        return "tf32"
    return precision


def _trt_profile_options(profile: dict[str, Sequence[int]] | None) -> dict[str, str]:
    if not profile:
        return {}
    from surgseg.engines.cache import profile_shapes

    shapes = profile_shapes(profile["min"], profile["opt"], profile["max"])
    fmt = {
        k: "image:" + "x".join(str(d) for d in getattr(shapes, k)) for k in ("min", "opt", "max")
    }
    return {
        "trt_profile_min_shapes": fmt["min"],
        "trt_profile_opt_shapes": fmt["opt"],
        "trt_profile_max_shapes": fmt["max"],
    }
