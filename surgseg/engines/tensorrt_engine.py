"""TensorRT engine (TensorRT 10 and 11, name-based tensor API), built from the ONNX export.

Networks are strongly typed: precision lives in the ONNX graph (fp32/fp16/bf16 weights; INT8
as explicit Q/DQ from ``surgseg.quantize``) and no precision builder flag is ever set. TensorRT
10 needs the STRONGLY_TYPED creation flag for that; TensorRT 11 builds every network strongly
typed (the flag is deprecated) and has removed the precision flags (``network_flags``). The builder
enables TF32 for float32 layers by default: fp32 engines clear it unless ``tf32=True``, so
"fp32" means FP32.

Engines are cached in ``cache_dir`` under names holding a digest of their key (GPU, compute
capability, TensorRT version, precision, profiles, ONNX hash, TF32, DLA core) and are built
under a file lock (``engines/cache.py``). The builder's timing cache is kept beside them.

An engine may hold several optimization profiles: the first for the model's input size, more
for other sizes (``extra_profiles``: the crops of ``cues.refine_tips``). Each profile has an
execution context of its own, as TensorRT requires of contexts in concurrent use; those after
the first select their profile on the engine's stream and allocate activation memory for it
alone (``ON_PROFILE_CHANGE``), not for the largest. A batch runs on the first profile that
admits its shape.

At run time torch CUDA tensors are bound by address (no host copies) and the engine runs on
its own CUDA stream: it waits for the caller's current stream (an event), and the caller's
stream waits for it, so results are ordered without synchronizing the host, and nothing is
enqueued on the legacy default stream (which TensorRT warns synchronizes).

Every TensorRT call whose result says whether it worked is checked: a rejected input shape or
tensor address is an error naming the tensor; a timing cache TensorRT will not take is dropped
with a warning (the build goes on without it). Tensor addresses are 256-byte aligned, as
``setTensorAddress`` requires (NvInferRuntime.h): an input that is not is copied first.

On Jetson, TensorRT 10 comes with JetPack as system Python bindings (no pip wheel; JetPack 6.1
and 6.2 ship TensorRT 10.3); ``dla_core`` runs the engine on a DLA core with GPU fallback for
layers the DLA lacks (fp16/int8 only). DLA exists in TensorRT 10.0–10.7 and again from 11.4.1
(Jetson AGX Orin with JetPack ≥ 7.2.2); 10.8–10.x, 11.0–11.3 and 11.4.0 (Windows on ARM only)
have none for Jetson, and ``dla_core`` is refused there with one line.

The CUDA side (device, stream, events) sits behind ``_cuda_device``, ``_device_guard`` and
``_EngineStream``; the tests replace those three and the ``tensorrt`` module with fakes to run
``build_engine`` and ``infer`` end to end on the CPU.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from surgseg.checkpoint import CheckpointMeta
from surgseg.engines.base import Engine
from surgseg.engines.cache import (
    PRECISIONS,
    Profile,
    build_once,
    cache_path,
    engine_cache_key,
    file_sha256,
    profile_for,
    profile_shapes,
)
from surgseg.errors import ConfigError
from surgseg.export import (
    BF16_OPSET,
    DEFAULT_CACHE_DIR,
    cached_onnx,
    check_onnx_weights,
    read_onnx_meta,
)

log = logging.getLogger(__name__)
INSTALL_HINT = (
    "engine=tensorrt needs the tensorrt package and a CUDA GPU: pip install 'surgseg[tensorrt]'"
    " (on Jetson, JetPack's system TensorRT)"
)
MIN_VERSION = (10, 0)
BF16_CAPABILITY = (8, 0)
DLA_PRECISIONS = ("fp16", "int8")
CALIBRATION_KEYS = ("folder", "limit", "method")
ALIGNMENT = 256  # bytes: setTensorAddress needs "at least 256-byte alignment" (NvInferRuntime.h)
# DLA for Jetson: 10.0–10.7 ("TensorRT 10.7 was the last 10.x release that supported DLA") and
# from 11.4.1 on (Jetson AGX Orin, JetPack ≥ 7.2.2); not 11.0–11.3; 11.4.0: Windows on ARM only.
DLA_RELEASES = (((10, 0, 0), (10, 8, 0)), ((11, 4, 1), (12, 0, 0)))
DLA_MATRIX = (
    "TensorRT 10.0–10.7 (JetPack 6.1/6.2 ship 10.3) or ≥ 11.4.1 (Jetson AGX Orin, JetPack ≥ 7.2.2)"
)
# Highest ONNX opset the ONNX-TensorRT parser documents (docs/operators.md), from that release.
PARSER_OPSETS = (((10, 0), 20), ((10, 15), 24), ((11, 0), 24), ((11, 5), 25))


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ConfigError with the install hint (also without a GPU)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    if not torch.cuda.is_available():
        raise ConfigError(INSTALL_HINT + "; no CUDA GPU is visible")
    return trt


def trt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as "10.3.0" or "11.0.0.12"; ConfigError
    below 10.0, the first with strongly typed networks and bf16 on the name-based API."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ConfigError(f"cannot read the TensorRT version {version!r}")
    found = (int(match[1]), int(match[2]))
    if found < MIN_VERSION:
        raise ConfigError(
            f"engine=tensorrt needs TensorRT ≥ {MIN_VERSION[0]}.{MIN_VERSION[1]}, found {version}"
        )
    return found


def trt_release(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version string ("10.3.0", "11.4.1.7"; patch 0 if
    absent); ConfigError if unreadable or below 10.0."""
    trt_version(version)
    major, minor, patch = ([int(p) for p in re.findall(r"\d+", version)] + [0])[:3]
    return major, minor, patch


def check_dla(version: str, dla_core: int | None) -> None:
    """ConfigError (one line) if ``dla_core`` is set and TensorRT ``version`` has no DLA."""
    if dla_core is None:
        return
    release = trt_release(version)
    if not any(lo <= release < hi for lo, hi in DLA_RELEASES):
        raise ConfigError(
            f"engine.dla_core needs a TensorRT with DLA support, {DLA_MATRIX}; "
            f"TensorRT {version} has none: leave engine.dla_core unset to run on the GPU"
        )


def documented_opset(version: tuple[int, int]) -> int:
    """The highest ONNX opset TensorRT ``version``'s ONNX parser is documented for."""
    return max(opset for since, opset in PARSER_OPSETS if version >= since)


def network_flags(trt: Any, version: tuple[int, int]) -> int:
    """``create_network`` flags for a strongly typed network: the STRONGLY_TYPED bit on
    TensorRT 10; nothing on 11, where every network is strongly typed and the flag is
    deprecated."""
    if version >= (11, 0):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def check_precision(
    precision: str, capability: tuple[int, int], gpu_name: str, dla_core: int | None = None
) -> None:
    """ConfigError if this GPU (or DLA) cannot run ``precision``: bf16 needs compute
    capability ≥ 8.0; the DLA runs fp16 and int8 only."""
    if precision not in PRECISIONS:
        raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and tuple(capability) < BF16_CAPABILITY:
        raise ConfigError(
            f"engine.precision=bf16 needs a GPU of compute capability ≥ 8.0 (Ampere or newer); "
            f"{gpu_name} is {capability[0]}.{capability[1]}: use precision=fp16"
        )
    if dla_core is not None and precision not in DLA_PRECISIONS:
        raise ConfigError(
            f"engine.dla_core needs precision fp16 or int8 (the DLA has no {precision})"
        )


def configure_builder(
    trt: Any,
    builder: Any,
    config: Any,
    *,
    workspace_gb: float,
    tf32: bool,
    dla_core: int | None,
) -> None:
    """Workspace, TF32 and DLA settings; no precision flag (the network is strongly typed)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if dla_core is not None:
        cores = builder.num_DLA_cores
        if not 0 <= dla_core < cores:
            raise ConfigError(
                f"engine.dla_core={dla_core}, but this device has {cores} DLA cores "
                "(Jetson AGX Orin and Orin NX have DLA cores)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def default_profile(input_size: Sequence[int], max_batch: int = 8) -> Profile:
    """Batch 1..max_batch at the model's input size (what the Predictor feeds)."""
    h, w = input_size
    return profile_shapes((1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))


def build_engine(
    onnx_path: str | Path,
    *,
    profiles: Sequence[Profile],
    timing_cache: str | Path | None = None,
    workspace_gb: float = 4.0,
    tf32: bool = False,
    dla_core: int | None = None,
    input_name: str = "image",
) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and return the serialized engine.

    The timing cache file is read if present and written back (atomically) after the build; a
    cache TensorRT does not take (another version, another GPU, damaged) is replaced by an
    empty one, with a warning, and the build goes on without it if that is refused too.
    """
    from surgseg.atomic import atomic_path

    trt = import_tensorrt()
    version = trt_version(trt.__version__)
    check_dla(trt.__version__, dla_core)
    opset = _onnx_opset(onnx_path)
    beyond = opset > documented_opset(version)
    if beyond:
        log.warning(
            "%s is opset %d; TensorRT %s's ONNX parser is documented up to opset %d "
            "(bf16 Conv needs opset 22: TensorRT ≥ 10.15); if parsing fails, upgrade TensorRT "
            "or use precision=fp16",
            onnx_path, opset, trt.__version__, documented_opset(version),
        )  # fmt: skip
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, version))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = f" (opset {opset} is beyond what TensorRT {trt.__version__} documents)"
        raise ConfigError(
            f"TensorRT cannot parse the ONNX file: {errors}{hint if beyond else ''}", onnx_path
        )

    config = builder.create_builder_config()
    configure_builder(trt, builder, config, workspace_gb=workspace_gb, tf32=tf32, dla_core=dla_core)
    for profile in profiles:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
        if config.add_optimization_profile(opt_profile) < 0:
            raise ConfigError(
                f"TensorRT rejected the optimization profile {profile} for input {input_name!r}"
            )
    cache = _use_timing_cache(config, Path(timing_cache)) if timing_cache is not None else None

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    return bytes(plan)


def _onnx_opset(path: str | Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _use_timing_cache(config: Any, path: Path) -> Any:
    """Give ``config`` the timing cache stored at ``path``, or a new one if TensorRT refuses it
    (another TensorRT or GPU, or a damaged file); the cache in use, or None (with a warning)."""
    if path.is_file():
        cache = _set_timing_cache(config, path.read_bytes())
        if cache is not None:
            return cache
        log.warning("TensorRT refused the timing cache %s; starting a new one", path)
    cache = _set_timing_cache(config, b"")
    if cache is None:
        log.warning("TensorRT refused a new timing cache; building without one")
    return cache


def _set_timing_cache(config: Any, data: bytes) -> Any:
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        return None
    return cache


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


def _cuda_device(device: torch.device) -> tuple[torch.device, str, tuple[int, int]]:
    """``device`` with its index filled in, its name and its compute capability."""
    if device.type != "cuda":
        raise ConfigError(f"engine=tensorrt needs a CUDA device, got device={device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(device)
    return device, torch.cuda.get_device_name(device), (major, minor)


def _device_guard(device: torch.device) -> Any:
    """Make ``device`` current (TensorRT builds and runs on the current CUDA device)."""
    return torch.cuda.device(device)


class _EngineStream:
    """The engine's own CUDA stream, ordered after the caller's current stream and before the
    caller's next work by events, so nothing is enqueued on the legacy default stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.handle = self.stream.cuda_stream

    @contextmanager
    def ordered(self, *tensors: torch.Tensor) -> Iterator[int]:
        """Yield the stream handle for ``execute_async_v3``; ``tensors`` (input and output) are
        kept from other streams until the engine's work on them is done."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the input is written
        yield self.handle
        caller.wait_stream(self.stream)  # the caller's next work sees the output
        for tensor in tensors:
            tensor.record_stream(self.stream)


def aligned(tensor: torch.Tensor, alignment: int = ALIGNMENT) -> torch.Tensor:
    """``tensor`` (contiguous) if its address is a multiple of ``alignment`` bytes, else an
    aligned contiguous copy."""
    tensor = tensor.contiguous()
    if tensor.data_ptr() % alignment == 0:
        return tensor
    copy = aligned_empty(tensor.shape, tensor.dtype, tensor.device, alignment)
    return copy.copy_(tensor)


def aligned_empty(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, alignment: int = ALIGNMENT
) -> torch.Tensor:
    """An uninitialised contiguous tensor whose address is a multiple of ``alignment`` bytes
    (a view into a slightly larger buffer when the allocator's own block is not)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if out.data_ptr() % alignment == 0:
        return out
    nbytes = out.numel() * out.element_size()
    raw = torch.empty(nbytes + alignment, dtype=torch.uint8, device=device)
    start = -raw.data_ptr() % alignment
    return raw[start : start + nbytes].view(dtype).view(tuple(shape))


class TensorRTEngine(Engine):
    """Runs a (cached) TensorRT engine built from the model's ONNX export.

    Args:
        model, meta: the model; exported to ONNX in ``cache_dir`` unless ``onnx_path`` is given.
        device: a CUDA device.
        precision: "fp32", "fp16", "bf16" (compute capability ≥ 8.0) or "int8".
        onnx_path: an existing surgseg export; its embedded precision must be ``precision``
            (for int8: an fp32 export, quantized here, or an int8 one from the cache).
        cache_dir: exports, engines, sidecars, timing and calibration caches.
        profile: {"min","opt","max"} NCHW shapes; default batch 1..8 at the model's input size.
        extra_profiles: more such profiles, for inputs of other sizes (``tip_refine.
            crop_profile()`` for the crops of ``cues.refine_tips``).
        workspace_gb: builder workspace limit.
        tf32: let float32 layers use TF32 (fp32 only; off by default, so fp32 is FP32).
        dla_core: run on this DLA core (Jetson), with GPU fallback; fp16 or int8.
        calibration: int8 only: {"folder": frames (png/jpg), "limit": frames used (64),
            "method": "entropy" | "percentile" | "minmax"}.
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
        extra_profiles: Sequence[dict[str, Sequence[int]]] = (),
        workspace_gb: float = 4.0,
        tf32: bool = False,
        dla_core: int | None = None,
        calibration: dict[str, Any] | None = None,
        calibration_batches: Iterable[np.ndarray | torch.Tensor] | None = None,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
        trt = import_tensorrt()
        trt_version(trt.__version__)
        check_dla(trt.__version__, dla_core)
        self.device, gpu, capability = _cuda_device(torch.device(device))
        check_precision(precision, capability, gpu, dla_core)
        cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
        onnx_file, meta = self._source_onnx(model, meta, onnx_path, cache_dir, precision)
        main = (profile_shapes(profile["min"], profile["opt"], profile["max"]) if profile
                else default_profile(meta.input_size))  # fmt: skip
        extra = (profile_shapes(p["min"], p["opt"], p["max"]) for p in extra_profiles)
        self.profiles = (main, *extra)
        if precision == "int8" and read_onnx_meta(onnx_file)[1] != "int8":
            onnx_file = self._quantized(
                onnx_file, meta, cache_dir, calibration, calibration_batches
            )

        key = engine_cache_key(
            gpu_name=gpu,
            compute_capability=capability,
            trt_version=trt.__version__,
            precision=precision,
            profiles=self.profiles,
            onnx_sha256=file_sha256(onnx_file),
            tf32=tf32,
            dla_core=dla_core,
        )
        self.engine_path = cache_path(cache_dir, onnx_file.stem, key)
        tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{gpu}-trt{trt.__version__}")

        def build(tmp: Path) -> None:
            log.info("building TensorRT engine %s", self.engine_path)
            plan = build_engine(
                onnx_file,
                profiles=self.profiles,
                timing_cache=cache_dir / f"timing-{tag}.cache",
                workspace_gb=workspace_gb,
                tf32=tf32,
                dla_core=dla_core,
            )
            tmp.write_bytes(plan)

        with _device_guard(self.device):
            build_once(self.engine_path, key, build)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            if dla_core is not None:
                self._runtime.DLA_core = dla_core
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT could not load {self.engine_path}; delete it to rebuild"
                )
            self._stream = _EngineStream(self.device)
            self.contexts = [self._context(trt, index) for index in range(len(self.profiles))]
        self._lock = threading.Lock()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"expected one input and one output, the engine has {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))

    def _context(self, trt: Any, index: int) -> Any:
        """An execution context for profile ``index``: the first context gets profile 0 by
        default; the others select theirs on the engine's stream, with memory for it alone."""
        if index == 0:
            context = self.engine.create_execution_context()
        else:
            strategy = trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE
            context = self.engine.create_execution_context(strategy)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for "
                               f"{self.engine_path} (out of GPU memory?)")  # fmt: skip
        if index and not context.set_optimization_profile_async(index, self._stream.handle):
            raise RuntimeError(
                f"TensorRT could not select optimization profile {index} of {self.engine_path}"
            )
        return context

    def max_batch(self, size: tuple[int, int]) -> int | None:
        """The largest batch of a profile that runs ``size``; 0 if none does."""
        for profile in self.profiles:
            if profile.admits((profile.min[0], 3, *size)):
                return profile.max[0]
        return 0

    def _source_onnx(
        self,
        model: nn.Module | None,
        meta: CheckpointMeta | None,
        onnx_path: str | Path | None,
        cache_dir: Path,
        precision: str,
    ) -> tuple[Path, CheckpointMeta]:
        """The ONNX export to build from (at the precision's weight type) and its metadata."""
        graph_precision = "fp32" if precision == "int8" else precision
        if onnx_path is None:
            if model is None or meta is None:
                raise ConfigError("engine=tensorrt needs onnx_path or a model to export")
            return cached_onnx(model, meta, cache_dir=cache_dir, precision=graph_precision), meta
        onnx_meta, stored = read_onnx_meta(onnx_path)
        if model is not None:
            check_onnx_weights(onnx_path, model)
        if stored not in (graph_precision, precision):
            raise ConfigError(
                f"ONNX file holds a {stored} graph; precision={precision} needs a "
                f"{graph_precision} export (surgseg-export precision={graph_precision})",
                onnx_path,
            )
        if stored == "bf16" and _onnx_opset(onnx_path) < BF16_OPSET:
            raise ConfigError(
                f"this bf16 graph is opset {_onnx_opset(onnx_path)}, not valid ONNX (bfloat16 "
                f"Conv needs opset {BF16_OPSET}): export it again with surgseg-export "
                "precision=bf16",
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
        """The INT8 Q/DQ version of ``onnx_file``, keyed on its hash and the calibration."""
        from surgseg.preprocess import Preprocess
        from surgseg.quantize import DEFAULT_LIMIT, DEFAULT_METHOD, cached_int8_onnx

        calibration = dict(calibration or {})
        unknown = sorted(set(calibration) - set(CALIBRATION_KEYS))
        if unknown:
            raise ConfigError(f"engine.calibration has unknown keys {unknown}")
        if batches is not None:
            batches = [np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b) for b in batches]
        return cached_int8_onnx(
            onnx_file,
            cache_dir,
            method=calibration.get("method") or DEFAULT_METHOD,
            frames=batches,
            folder=calibration.get("folder"),
            limit=int(calibration.get("limit") or DEFAULT_LIMIT),
            preprocess=Preprocess(meta.input_size, meta.mean, meta.std),
        )

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        batch = aligned(batch.to(self.device, self.input_dtype))
        index = profile_for(self.profiles, batch.shape)
        context, profile = self.contexts[index], self.profiles[index]
        with self._lock:  # a context's shapes, addresses and enqueue go together
            if not context.set_input_shape(self.input_name, tuple(batch.shape)):
                raise ConfigError(
                    f"TensorRT rejected input shape {list(batch.shape)} for "
                    f"{self.input_name!r} (profile {index}: min {list(profile.min)}, "
                    f"max {list(profile.max)})"
                )
            shape = tuple(context.get_tensor_shape(self.output_name))
            out = aligned_empty(shape, self.output_dtype, self.device)
            for name, tensor in ((self.input_name, batch), (self.output_name, out)):
                if not context.set_tensor_address(name, tensor.data_ptr()):
                    raise RuntimeError(
                        f"TensorRT rejected the address {tensor.data_ptr():#x} of tensor "
                        f"{name!r} (it needs {ALIGNMENT}-byte alignment and a tensor name of "
                        f"the engine, {[self.input_name, self.output_name]})"
                    )
            with self._stream.ordered(batch, out) as handle:
                if not context.execute_async_v3(handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        return out

    def close(self) -> None:
        self.contexts = []
        self.engine = None
