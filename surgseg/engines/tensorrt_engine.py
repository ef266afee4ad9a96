"""TensorRT engine (TensorRT ≥ 10, name-based tensor API), built from the ONNX export.

Precision is carried by the ONNX graph and the network is strongly typed (required for
explicit precision in TensorRT 10, the only mode in TensorRT 11): fp32/fp16/bf16 exports have
weights of that type; int8 is explicit quantization, Q/DQ nodes from ONNX Runtime's quantizer
calibrated on frames (``surgseg.export.quantize_onnx``, with a JSON calibration cache).

Engines are cached in ``cache_dir`` with a sidecar key (GPU, compute capability, TensorRT
version, precision, profile, ONNX hash; see ``engines/cache.py``); a mismatch rebuilds. The
builder's timing cache is loaded and saved beside them. At run time torch CUDA tensors are bound
by address and the engine runs on torch's current stream: no host copies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from surgseg.atomic import atomic_path
from surgseg.checkpoint import CheckpointMeta
from surgseg.engines.base import Engine
from surgseg.engines.cache import (
    PRECISIONS,
    Profile,
    cache_paths,
    engine_cache_key,
    file_sha256,
    profile_shapes,
    rebuild_reason,
    write_sidecar,
)
from surgseg.errors import ConfigError
from surgseg.export import DEFAULT_CACHE_DIR, cached_onnx

log = logging.getLogger(__name__)
INSTALL_HINT = (
    "engine=tensorrt needs the tensorrt package and a CUDA GPU: pip install 'surgseg[tensorrt]'"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ConfigError with the install hint (also without a GPU)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    if not torch.cuda.is_available():
        raise ConfigError(INSTALL_HINT + " (no CUDA GPU is visible)")
    return trt


def default_profile(input_size: Sequence[int], max_batch: int = 8) -> Profile:
    """Batch 1..max_batch at the model's input size (what the Predictor feeds)."""
    h, w = input_size
    return profile_shapes((1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    profile: Profile,
    timing_cache: str | Path | None = None,
    workspace_gb: float = 4.0,
    input_name: str = "image",
) -> None:
    """Parse ``onnx_path`` into a strongly typed network, build it and write the plan atomically.

    The timing cache file is read if present and written back after the build.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse the ONNX file: {errors}", onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(plan)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(config.get_timing_cache().serialize())


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
    }
    if dtype not in table:
        raise ConfigError(f"TensorRT tensor type {dtype} is not supported as engine I/O")
    return table[dtype]


class TensorRTEngine(Engine):
    """Runs a (cached) TensorRT engine built from the model's ONNX export.

    Args:
        model, meta: the model; exported to ONNX in ``cache_dir`` unless ``onnx_path`` is given.
        device: a CUDA device.
        precision: "fp32", "fp16", "bf16" or "int8".
        onnx_path: an existing surgseg export; its embedded precision must be ``precision``
            (or fp32 for int8, which is quantized from it).
        cache_dir: exports, engines, sidecars, timing and calibration caches.
        profile: {"min","opt","max"} NCHW shapes; default batch 1..8 at the model's input size.
        workspace_gb: builder workspace limit.
        calibration: int8 only: {"folder": images, "batch_size", "limit", "method"}.
        calibration_batches: int8 only: normalized float32 NCHW batches (instead of a folder).
    """

    name = "tensorrt"

    def __init__(
        self,
        model: nn.Module | None = None,
        meta: CheckpointMeta | None = None,
        *,
        device: str | torch.device = "cuda",
        precision: str = "fp16",
        onnx_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        profile: dict[str, Sequence[int]] | None = None,
        workspace_gb: float = 4.0,
        calibration: dict[str, Any] | None = None,
        calibration_batches: Iterable[np.ndarray | torch.Tensor] | None = None,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
        trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"engine=tensorrt needs a CUDA device, got device={self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
        onnx_file, meta = self._source_onnx(model, meta, onnx_path, cache_dir, precision)
        self.profile = (
            profile_shapes(profile["min"], profile["opt"], profile["max"])
            if profile
            else default_profile(meta.input_size)
        )
        if precision == "int8":
            onnx_file = self._quantized(
                onnx_file, meta, cache_dir, calibration, calibration_batches
            )

        gpu = torch.cuda.get_device_name(self.device)
        key = engine_cache_key(
            gpu_name=gpu,
            compute_capability=torch.cuda.get_device_capability(self.device),
            trt_version=trt.__version__,
            precision=precision,
            profile=self.profile,
            onnx_sha256=file_sha256(onnx_file),
        )
        self.engine_path, sidecar = cache_paths(cache_dir, onnx_file.stem, precision)
        reason = rebuild_reason(self.engine_path, sidecar, key)
        with torch.cuda.device(self.device):
            if reason is not None:
                log.info("building TensorRT engine %s (%s)", self.engine_path, reason)
                tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{gpu}-trt{trt.__version__}")
                build_engine(
                    onnx_file,
                    self.engine_path,
                    profile=self.profile,
                    timing_cache=cache_dir / f"timing-{tag}.cache",
                    workspace_gb=workspace_gb,
                )
                write_sidecar(sidecar, key)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT could not load {self.engine_path}; delete it to rebuild"
                )
            self.context = self.engine.create_execution_context()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"expected one input and one output, the engine has {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))

    def _source_onnx(
        self,
        model: nn.Module | None,
        meta: CheckpointMeta | None,
        onnx_path: str | Path | None,
        cache_dir: Path,
        precision: str,
    ) -> tuple[Path, CheckpointMeta]:
        """The ONNX export to build from (at the precision's weight type) and its metadata."""
        from surgseg.export import read_onnx_meta

        graph_precision = "fp32" if precision == "int8" else precision
        if onnx_path is None:
            if model is None or meta is None:
                raise ConfigError("engine=tensorrt needs onnx_path or a model to export")
            return cached_onnx(model, meta, cache_dir=cache_dir, precision=graph_precision), meta
        onnx_meta, stored = read_onnx_meta(onnx_path)
        if stored != graph_precision:
            raise ConfigError(
                f"ONNX file holds a {stored} graph; precision={precision} needs a "
                f"{graph_precision} export (surgseg-export precision={graph_precision})",
                onnx_path,
            )
        return Path(onnx_path), meta or onnx_meta

    def _quantized(
        self,
        onnx_file: Path,
        meta: CheckpointMeta,
        cache_dir: Path,
        calibration: dict[str, Any] | None,
        batches: Iterable[np.ndarray | torch.Tensor] | None,
    ) -> Path:
        """Q/DQ INT8 version of ``onnx_file``; calibration ranges cached as JSON beside it."""
        from surgseg.export import image_batches, quantize_onnx

        calibration = dict(calibration or {})
        method = calibration.get("method", "entropy")
        qdq = cache_dir / f"{onnx_file.stem}.qdq-{method}.onnx"
        calib_cache = cache_dir / f"{onnx_file.stem}.calibration-{method}.json"
        if qdq.is_file() and calib_cache.is_file():
            return qdq
        if batches is None and calibration.get("folder"):
            batches = image_batches(
                calibration["folder"],
                meta=meta,
                input_size=meta.input_size,
                batch_size=int(calibration.get("batch_size", 8)),
                limit=int(calibration.get("limit", 256)),
            )
        if batches is not None:
            batches = (np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b) for b in batches)
        return quantize_onnx(
            onnx_file,
            qdq,
            batches=batches,
            method=method,
            calibration_cache=calib_cache,
        )

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, self.input_dtype).contiguous()
        self.profile.check(batch.shape)
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise ConfigError(f"TensorRT rejected input shape {list(batch.shape)}")
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        return out

    def close(self) -> None:
        self.context = None
        self.engine = None
