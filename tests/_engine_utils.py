"""Helpers for the export and engine tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from surgseg.checkpoint import load_checkpoint, save_checkpoint


def sharpen(model: torch.nn.Module, scale: float = 20.0) -> torch.nn.Module:
    """Scale the last classifier layer so logits are far from tied: argmax parity is then a
    real test (random heads give near-equal logits that any noise would flip)."""
    last = model.classifier[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model.eval()


def sharpen_checkpoint(path: Path) -> Path:
    """Rewrite the checkpoint at ``path`` with a sharpened classifier."""
    model, meta = load_checkpoint(path)
    save_checkpoint(path, model=sharpen(model), meta=meta)
    return path


# A strict fake of the TensorRT Python API surface the engine uses, modelled on the TensorRT 10
# and 11 Python API reference (tensorrt.Builder, IBuilderConfig, OnnxParser, IOptimizationProfile,
# ITimingCache, Runtime, ICudaEngine, IExecutionContext). Every class has __slots__ and explicit
# methods with the real parameter names, so a misspelled method or attribute, a wrong argument
# name or type, a precision builder flag (strongly typed networks; removed in 11) or an unaligned
# tensor address fails here as it would on a GPU. It records what it was asked in `FakeRecord`.

FAKE_PLAN = b"FAKE-TRT-PLAN\n"
FAKE_CACHE = b"FAKE-TRT-TIMING\n"
PRECISION_FLAGS = ("FP16", "INT8", "FP8", "BF16", "INT4", "FP4")
_REMOVED_IN_11 = (*PRECISION_FLAGS, "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                  "DIRECT_IO")  # fmt: skip
_BUILDER_FLAGS_10 = (
    "FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
    "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
    "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8",
    "ERROR_ON_TIMING_CACHE_MISS", "BF16", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "WEIGHTLESS",
    "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4",
)  # fmt: skip


class FakeRecord:
    """What the fake TensorRT was asked, and knobs that make it refuse things."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.reject_address = False
        self.reject_shape = False

    def add(self, *call) -> None:
        self.calls.append(call)

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def _bytes_like(value, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what}: expected a buffer, got {type(value).__name__}")
    return bytes(value)


def _dims(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise TypeError(f"{what}: expected Dims (a sequence of ints), got {value!r}")
    return tuple(value)


def fake_tensorrt(version: str, *, dla_cores: int = 0):
    """A ``tensorrt`` module for ``version`` ("10.x" or "11.x") and its FakeRecord."""
    import ctypes
    import enum
    import json
    import types

    import onnx

    record = FakeRecord()
    major = int(version.split(".")[0])

    Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")
    names = [f for f in _BUILDER_FLAGS_10 if major < 11 or f not in _REMOVED_IN_11]
    BuilderFlag = enum.Enum("BuilderFlag", names)
    NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag",
        {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2,
         "PREFER_JIT_PYTHON_PLUGINS": 3},
    )  # fmt: skip
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM "
                               "DLA_GLOBAL_DRAM TACTIC_DRAM TACTIC_SHARED_MEMORY")  # fmt: skip
    DeviceType = enum.Enum("DeviceType", "GPU DLA")
    TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    ExecutionContextAllocationStrategy = enum.Enum(
        "ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED"
    )
    DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4")
    onnx_types = {
        onnx.TensorProto.FLOAT: DataType.FLOAT,
        onnx.TensorProto.FLOAT16: DataType.HALF,
        onnx.TensorProto.BFLOAT16: DataType.BF16,
    }
    torch_types = {DataType.FLOAT: torch.float32, DataType.HALF: torch.float16,
                   DataType.BF16: torch.bfloat16}  # fmt: skip
    strongly_typed_bit = 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    class Logger:
        __slots__ = ("min_severity",)
        INTERNAL_ERROR, ERROR, WARNING = Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING
        INFO, VERBOSE = Severity.INFO, Severity.VERBOSE

        def __init__(self, min_severity=Severity.WARNING):
            if not isinstance(min_severity, Severity):
                raise TypeError("Logger(min_severity): expected a Logger.Severity")
            self.min_severity = min_severity

    class IHostMemory(bytes):
        __slots__ = ()

        @property
        def nbytes(self) -> int:
            return len(self)

    class INetworkDefinition:
        __slots__ = ("flags", "inputs", "outputs")

        def __init__(self, flags: int):
            self.flags, self.inputs, self.outputs = flags, {}, {}

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & strongly_typed_bit)

    class ParserError:
        __slots__ = ("message",)

        def __init__(self, message: str):
            self.message = message

        def __str__(self) -> str:
            return self.message

    class OnnxParser:
        __slots__ = ("errors", "network")

        def __init__(self, network, logger):
            if not isinstance(network, INetworkDefinition) or not isinstance(logger, Logger):
                raise TypeError("OnnxParser(network, logger)")
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return self.errors[index]

        def parse_from_file(self, model: str) -> bool:
            if not isinstance(model, str):
                raise TypeError("parse_from_file(model): expected a str path")
            record.add("parse_from_file", model)
            try:
                proto = onnx.load(model, load_external_data=False)
            except Exception as exc:  # a missing or unreadable file: parse fails
                self.errors.append(ParserError(f"cannot read {model}: {exc}"))
                return False
            for target, values in ((self.network.inputs, proto.graph.input),
                                   (self.network.outputs, proto.graph.output)):  # fmt: skip
                for v in values:
                    t = v.type.tensor_type
                    dims = tuple(
                        d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim
                    )
                    target[v.name] = (onnx_types[t.elem_type], dims)
            return True

    class IOptimizationProfile:
        __slots__ = ("shapes",)

        def __init__(self):
            self.shapes = {}

        def set_shape(self, input: str, min, opt, max) -> None:
            if not isinstance(input, str):
                raise TypeError("set_shape(input, min, opt, max): input is a tensor name")
            self.shapes[input] = tuple(_dims(d, "set_shape") for d in (min, opt, max))

    class ITimingCache:
        __slots__ = ("entries", "version")

        def __init__(self, version: str, entries: int):
            self.version, self.entries = version, entries

        def serialize(self) -> IHostMemory:
            return IHostMemory(FAKE_CACHE + f"{self.version}\n{self.entries}".encode())

    class IBuilderConfig:
        __slots__ = ("_device", "_dla_core", "cache", "flags", "pools", "profiles")

        def __init__(self):
            self.flags = {f for f in BuilderFlag if f.name == "TF32"}  # TF32 is on by default
            self.pools, self._device, self._dla_core = {}, DeviceType.GPU, -1
            self.profiles, self.cache = [], None

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            if not isinstance(pool, MemoryPoolType) or not isinstance(pool_size, int):
                raise TypeError("set_memory_pool_limit(pool: MemoryPoolType, pool_size: int)")
            self.pools[pool.name] = pool_size

        def set_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):
                raise TypeError("set_flag(flag: BuilderFlag)")
            record.add("set_flag", flag.name)
            self.flags.add(flag)

        def clear_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):
                raise TypeError("clear_flag(flag: BuilderFlag)")
            record.add("clear_flag", flag.name)
            self.flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self.flags

        @property
        def default_device_type(self):
            return self._device

        @default_device_type.setter
        def default_device_type(self, value) -> None:
            if not isinstance(value, DeviceType):
                raise TypeError("default_device_type: expected a DeviceType")
            self._device = value

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            if not isinstance(value, int):
                raise TypeError("DLA_core: expected an int")
            self._dla_core = value

        def add_optimization_profile(self, profile) -> int:
            if not isinstance(profile, IOptimizationProfile):
                raise TypeError("add_optimization_profile(profile: IOptimizationProfile)")
            for lo, mid, hi in profile.shapes.values():
                if not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
                    return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache | None:
            data = _bytes_like(serialized_timing_cache, "create_timing_cache")
            if not data:
                return ITimingCache(version, 0)
            if not data.startswith(FAKE_CACHE):
                return None  # not a timing cache
            stored, entries = data[len(FAKE_CACHE) :].decode().split("\n")
            return ITimingCache(stored, int(entries))

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, ITimingCache) or not isinstance(ignore_mismatch, bool):
                raise TypeError("set_timing_cache(cache: ITimingCache, ignore_mismatch: bool)")
            record.add("set_timing_cache", cache.version, ignore_mismatch)
            if cache.version != version and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self.cache

    class Builder:
        __slots__ = ("logger",)

        def __init__(self, logger):
            if not isinstance(logger, Logger):
                raise TypeError("Builder(logger: ILogger)")
            self.logger = logger

        @property
        def num_DLA_cores(self) -> int:
            return dla_cores

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            if not isinstance(flags, int):
                raise TypeError("create_network(flags: int)")
            record.add("create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network, config) -> IHostMemory | None:
            if not isinstance(network, INetworkDefinition) or not isinstance(
                config, IBuilderConfig
            ):
                raise TypeError("build_serialized_network(network, config)")
            record.add("build_serialized_network")
            precision = sorted(f.name for f in config.flags if f.name in PRECISION_FLAGS)
            if network.strongly_typed and precision:
                return None  # precision flags are an error on a strongly typed network
            dynamic = [n for n, (_, dims) in network.inputs.items() if -1 in dims]
            profiles = [p.shapes for p in config.profiles]
            if not network.inputs or any(n not in p for p in profiles or [{}] for n in dynamic):
                return None  # nothing parsed, or a dynamic input without a profile
            if (
                config.default_device_type == DeviceType.DLA
                and not 0 <= config.DLA_core < dla_cores
            ):
                return None
            plan = {
                "inputs": {n: [t.name, d] for n, (t, d) in network.inputs.items()},
                "outputs": {n: [t.name, d] for n, (t, d) in network.outputs.items()},
                "profiles": profiles,
                "strongly_typed": network.strongly_typed,
                "tf32": any(f.name == "TF32" for f in config.flags),
                "dla_core": config.DLA_core
                if config.default_device_type == DeviceType.DLA
                else None,
            }
            if config.cache is not None:
                config.cache.entries += 1
            return IHostMemory(FAKE_PLAN + f"{version}\n".encode() + json.dumps(plan).encode())

    class IExecutionContext:
        __slots__ = ("addresses", "engine", "profile", "shapes")

        def __init__(self, engine):
            self.engine, self.shapes, self.addresses, self.profile = engine, {}, {}, 0

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            if not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in (profile_index, stream_handle)):  # fmt: skip
                raise TypeError("set_optimization_profile_async(profile_index: int, "
                                "stream_handle: int)")  # fmt: skip
            record.add("set_optimization_profile_async", profile_index, stream_handle)
            # contexts in concurrent use must each have a profile of their own
            taken = {c.profile for c in self.engine.contexts if c is not self}
            if not 0 <= profile_index < self.engine.num_optimization_profiles or (
                profile_index in taken
            ):
                return False
            self.profile, self.shapes = profile_index, {}  # the input shapes are set again
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            shape = _dims(shape, "set_input_shape")
            record.add("set_input_shape", name, shape, self.profile)
            if record.reject_shape or name not in self.engine.plan["inputs"]:
                return False
            lo, _, hi = self.engine.plan["profiles"][self.profile][name]
            if not all(a <= d <= c for a, d, c in zip(lo, shape, hi, strict=True)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            (source,) = self.engine.plan["inputs"]
            if name == source:
                return self.shapes.get(name, tuple(self.engine.plan["inputs"][name][1]))
            n, _, h, w = self.shapes.get(source, (-1, 3, -1, -1))
            return (n, self.engine.plan["outputs"][name][1][1], h, w)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if not isinstance(name, str) or not isinstance(memory, int):
                raise TypeError("set_tensor_address(name: str, memory: int)")
            record.add("set_tensor_address", name, memory)
            known = name in self.engine.plan["inputs"] or name in self.engine.plan["outputs"]
            if record.reject_address or not known or memory % 256:
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int) or isinstance(stream_handle, bool):
                raise TypeError("execute_async_v3(stream_handle: int)")
            record.add("execute_async_v3", stream_handle)
            plan = self.engine.plan
            (source,), (sink,) = plan["inputs"], plan["outputs"]
            if source not in self.shapes or {source, sink} - set(self.addresses):
                return False
            x = self._view(source, self.shapes[source], plan["inputs"][source][0])
            out = self._view(sink, self.get_tensor_shape(sink), plan["outputs"][sink][0])
            # A stand-in network: class k is (k + 1) × the sum of the input channels.
            total = x.float().sum(1, keepdim=True)
            k = torch.arange(1, out.shape[1] + 1, dtype=torch.float32).view(1, -1, 1, 1)
            out.copy_(total * k)
            return True

        def _view(self, name: str, shape, dtype_name: str) -> torch.Tensor:
            dtype = torch_types[DataType[dtype_name]]
            nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            buffer = (ctypes.c_byte * nbytes).from_address(self.addresses[name])
            return torch.frombuffer(buffer, dtype=dtype).view(tuple(shape))

    class ICudaEngine:
        __slots__ = ("contexts", "plan")

        def __init__(self, plan: dict):
            self.plan, self.contexts = plan, []

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.plan["profiles"])

        @property
        def num_io_tensors(self) -> int:
            return len(self.plan["inputs"]) + len(self.plan["outputs"])

        def get_tensor_name(self, index: int) -> str:
            return [*self.plan["inputs"], *self.plan["outputs"]][index]

        def get_tensor_mode(self, name: str):
            if name in self.plan["inputs"]:
                return TensorIOMode.INPUT
            return TensorIOMode.OUTPUT if name in self.plan["outputs"] else TensorIOMode.NONE

        def get_tensor_dtype(self, name: str):
            return DataType[{**self.plan["inputs"], **self.plan["outputs"]}[name][0]]

        def create_execution_context(
            self, strategy=ExecutionContextAllocationStrategy.STATIC
        ) -> IExecutionContext:
            if not isinstance(strategy, ExecutionContextAllocationStrategy):
                raise TypeError("create_execution_context(strategy: "
                                "ExecutionContextAllocationStrategy)")  # fmt: skip
            record.add("create_execution_context", strategy.name)
            context = IExecutionContext(self)  # profile 0 until another is selected
            self.contexts.append(context)
            return context

    class Runtime:
        __slots__ = ("_dla_core", "logger")

        def __init__(self, logger):
            if not isinstance(logger, Logger):
                raise TypeError("Runtime(logger: ILogger)")
            self.logger, self._dla_core = logger, -1

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            if not isinstance(value, int):
                raise TypeError("DLA_core: expected an int")
            record.add("Runtime.DLA_core", value)
            self._dla_core = value

        def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
            data = _bytes_like(serialized_engine, "deserialize_cuda_engine")
            record.add("deserialize_cuda_engine")
            if not data.startswith(FAKE_PLAN):
                return None
            built_by, plan = data[len(FAKE_PLAN) :].split(b"\n", 1)
            if built_by.decode() != version:
                return None  # plans run only on the TensorRT version that built them
            return ICudaEngine(json.loads(plan))

    module = types.ModuleType("tensorrt")
    module.__version__ = version
    for obj in (Logger, Builder, OnnxParser, Runtime, BuilderFlag, NetworkDefinitionCreationFlag,
                MemoryPoolType, DeviceType, TensorIOMode, DataType,
                ExecutionContextAllocationStrategy):  # fmt: skip
        setattr(module, obj.__name__, obj)
    module.IBuilderConfig, module.ICudaEngine = IBuilderConfig, ICudaEngine
    module.IExecutionContext, module.ITimingCache = IExecutionContext, ITimingCache
    return module, record


class CpuStream:
    """Stands in for the engine's CUDA stream on the CPU: a fixed handle, recorded ordering."""

    HANDLE = 0x5EED

    def __init__(self, device) -> None:
        self.device, self.handle = device, self.HANDLE
        self.ordered_calls: list[tuple] = []

    @contextmanager
    def ordered(self, *tensors):
        self.ordered_calls.append(tuple(t.data_ptr() for t in tensors))
        yield self.HANDLE


def run_tensorrt_on_cpu(monkeypatch, trt) -> None:
    """Install the fake ``tensorrt`` module and make the engine's CUDA side a CPU stand-in."""
    import sys
    from contextlib import nullcontext

    from surgseg.engines import tensorrt_engine

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        tensorrt_engine,
        "_cuda_device",
        lambda device: (torch.device("cpu"), "NVIDIA Fake GPU", (9, 0)),
    )
    monkeypatch.setattr(tensorrt_engine, "_device_guard", lambda device: nullcontext())
    monkeypatch.setattr(tensorrt_engine, "_EngineStream", CpuStream)
