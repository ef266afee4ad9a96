"""INT8 for TensorRT: calibrate an fp32 ONNX export, then insert Q/DQ nodes where TensorRT
fuses them, with every layer that stays unquantized in fp16.

TensorRT builds INT8 only from explicit quantization (strongly typed networks; the implicit
calibrators are removed in TensorRT 11), so the graph says what is INT8. Placement follows
TensorRT's Q/DQ rules, as NVIDIA's ModelOpt applies them:

- the activation input of every Conv: per-tensor symmetric INT8 (zero point 0, scale amax/127);
- the weights of every Conv: per-output-channel symmetric INT8 in [-127, 127];
- biases stay floating point: TensorRT's DequantizeLinear takes only INT8/FP8/INT4 inputs (never
  INT32 quantized biases) and folds the bias into the fused convolution itself;
- the residual input of each Add (the input no quantized Conv produces; the second one when
  both are), so that TensorRT fuses Conv + Add (+ ReLU) with an INT8 residual;
- the Conv(s) producing the logits and the upsampling after them stay unquantized.

Unquantized layers run in fp16, as ModelOpt does by default. In a strongly typed network
TensorRT runs each tensor in exactly the type the graph gives it, and no builder flag lowers a
float32 layer: left in float32, the logits convolution, the upsampling and every dequantized
tensor would run in FP32. So the graph is made fp16 here: fp16 Q/DQ scales (DequantizeLinear
outputs its scale's type; opset 19 is the first to allow fp16 scales), fp16 weights, biases,
upsampling and logits, with a Cast after the float32 ``image`` input (the engine interface).

Calibration sees one frame at a time, so memory does not grow with the number of frames:
``minmax`` reduces each tensor to max|x| inside the graph (about the memory of one
inference); ``percentile`` (99.99 % of |x|) and ``entropy`` (TensorRT's KL-divergence
threshold on a 2048-bin |x| histogram) hold every calibrated activation of one frame at a time.
Each histogram keeps exactly 2048 bins: when a frame goes past its range, neighbouring bins are
merged (the width grows by a whole factor), so it never grows with the range.

Scales are fp16, the type the unquantized layers run in, which bounds them both ways. A range
above fp16's maximum (65504) cannot be held by those layers: its scale is capped at the largest
fp16 whose 127 multiple is finite (dequantized values saturate at 65504 instead of becoming
inf), with a warning naming the tensors. A scale must be positive (TensorRT) and is kept at or
above the smallest normal fp16 (6.1e-5) rather than a subnormal, which hardware may flush to
zero; a non-zero range below 127 × 6.1e-5 (≈ 7.8e-3) then keeps fewer than 127 levels, and a
warning says how many channels or tensors that is (all-zero ones quantize to 0 either way).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from surgseg.atomic import atomic_path, write_json
from surgseg.engines.cache import build_once, file_sha256, json_sha256
from surgseg.errors import ConfigError, DatasetError
from surgseg.preprocess import Preprocess

METHODS = ("entropy", "percentile", "minmax")
DEFAULT_METHOD = "entropy"
DEFAULT_LIMIT = 64
PERCENTILE = 99.99
HIST_BINS = 2048  # |x| histogram resolution for entropy and percentile
LEVELS = 128  # positive INT8 levels the entropy search quantizes to
MIN_OPSET = 19  # first opset whose QuantizeLinear/DequantizeLinear take fp16 scales
RECIPE = 1  # placement and precision rules above; part of the cache key
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal fp16: the least scale written
FP16_MAX = float(np.finfo(np.float16).max)  # 65504


def _largest_scale() -> float:
    """The largest fp16 scale s with 127·s finite in fp16 (≤ 65504 after rounding)."""
    scale = np.float16(FP16_MAX / 127)
    while 127 * float(scale) >= 65520:  # fp16 rounds [65504, 65520) down to 65504, the rest to inf
        scale = np.nextafter(scale, np.float16(0))
    return float(scale)


_FP16_TOP_SCALE = _largest_scale()  # 515.5

log = logging.getLogger(__name__)


def calibration_files(folder: str | Path, limit: int = DEFAULT_LIMIT) -> list[Path]:
    """The first ``limit`` images (png/jpg, sorted, recursively) under ``folder``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError("no .png/.jpg images for INT8 calibration", folder)
    return files[:limit]


def calibration_frames(files: Sequence[Path], preprocess: Preprocess) -> Iterator[np.ndarray]:
    """Each image as a normalized float32 1×3×H×W array, prepared by ``preprocess`` exactly as
    frames are at inference."""
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError("unreadable image", f)
        yield preprocess.numpy([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])


@dataclass
class _Plan:
    """Where Q/DQ nodes go: activation tensor → [(node index, input index)] that read its
    dequantized copy, and the indices of the Conv nodes whose weights are quantized."""

    activations: dict[str, list[tuple[int, int]]]
    weights: list[int]


def _load_onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401 - calibration runs on it
    except ImportError:
        raise ConfigError(
            "INT8 needs onnx and onnxruntime: pip install 'surgseg[onnx]' "
            "(or 'surgseg[onnxruntime-gpu]')"
        ) from None
    return onnx


def _prepared(src: Path, workdir: Path):
    """``src`` after ONNX Runtime's quantization pre-processing (ONNX shape inference and its
    basic, provider-independent graph optimizations: constant folding, Conv+BatchNorm fusion),
    at opset ≥ 19, without unused opset imports."""
    onnx = _load_onnx()
    from onnx import version_converter
    from onnxruntime.quantization import quant_pre_process

    out = workdir / "prepared.onnx"
    # Symbolic shape inference is for transformers; ONNX shape inference covers this network.
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    model = onnx.load(out)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return onnx.shape_inference.infer_shapes(model)


def _float_tensors(model) -> set[str]:
    from onnx import TensorProto

    infos = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def _logits_convs(graph) -> set[int]:
    """Indices of the Conv nodes met first when walking back from the graph outputs."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    found, seen = set(), set()
    stack = [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        index = producer.get(tensor)
        if index is None or index in seen:
            continue
        seen.add(index)
        if graph.node[index].op_type == "Conv":
            found.add(index)
        else:
            stack.extend(t for t in graph.node[index].input if t)
    return found


def _plan(model) -> _Plan:
    """Q/DQ placement for TensorRT (see the module docstring)."""
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    floats = _float_tensors(model)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    keep = _logits_convs(graph)
    convs = {
        i
        for i, n in enumerate(graph.node)
        if n.op_type == "Conv" and i not in keep and n.input[1] in weights
    }
    activations: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i in sorted(convs):
        activations[graph.node[i].input[0]].append((i, 0))
    for i, node in enumerate(graph.node):
        inputs = list(node.input)
        if node.op_type != "Add" or len(inputs) != 2:
            continue
        if any(t in weights or t not in floats for t in inputs):
            continue  # a bias or shape arithmetic, not a residual connection
        fused = [producer.get(t) in convs for t in inputs]
        for k in [1] if all(fused) else [k for k in (0, 1) if not fused[k]]:
            activations[inputs[k]].append((i, k))
    return _Plan(dict(activations), sorted(convs))


class _AbsHistogram:
    """Histogram of |x| over all frames in exactly ``HIST_BINS`` bins. The width is set by the
    first frame with a non-zero value (its max / 2048); a later frame past the range merges
    every ``k`` neighbouring bins into one (width × k, k the smallest whole factor that covers
    it), so counts stay exact and the bin count never grows."""

    def __init__(self) -> None:
        self.amax = 0.0
        self.width = 0.0
        self.counts: np.ndarray | None = None
        self.zeros = 0

    def add(self, x: np.ndarray) -> None:
        x = np.abs(x.astype(np.float32, copy=False).ravel())
        top = float(x.max(initial=0.0))
        self.amax = max(self.amax, top)
        if self.counts is None:
            if top == 0.0:
                self.zeros += x.size
                return
            self.width = top / HIST_BINS
            self.counts = np.zeros(HIST_BINS, np.int64)
            self.counts[0] = self.zeros
        if top > self.width * HIST_BINS:
            self._widen(-(-top // (self.width * HIST_BINS)))
        index = np.minimum((x / self.width).astype(np.int64), HIST_BINS - 1)
        self.counts += np.bincount(index, minlength=HIST_BINS)

    def _widen(self, factor: float) -> None:
        """Merge every ``factor`` bins into one: the range grows ``factor`` times."""
        k = int(factor)
        merged = np.pad(self.counts, (0, -HIST_BINS % k)).reshape(-1, k).sum(1)
        self.counts = np.pad(merged, (0, HIST_BINS - merged.size))
        self.width *= k

    def threshold(self, method: str) -> float:
        """The amax for ``method``: max|x|, its 99.99th percentile, or the entropy threshold."""
        if method == "minmax" or self.counts is None:
            return self.amax
        if method == "percentile":
            cdf = np.cumsum(self.counts) / self.counts.sum()
            bins = int(np.searchsorted(cdf, PERCENTILE / 100)) + 1
        else:
            used = int(np.flatnonzero(self.counts)[-1]) + 1  # bins past the data are empty
            bins = entropy_bins(self.counts[:used])
        return min(bins * self.width, self.amax)


def entropy_bins(hist: np.ndarray, levels: int = LEVELS) -> int:
    """TensorRT's entropy calibration: the number of leading bins i ≥ ``levels`` of the |x|
    histogram ``hist`` whose clipped distribution P (the tail added to bin i-1) is closest in
    KL divergence to Q, bins [0, i) merged into ``levels`` groups and spread back evenly over
    each group's non-empty bins. Bin 0 counts as bin 1, as in NVIDIA's quantization toolkit."""
    hist = np.array(hist, np.float64)
    if hist.size <= levels:
        return hist.size
    hist[0] = hist[1]  # the spike of exact zeros (after ReLU) would dominate the divergence
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = hist[i:].sum()
    best, best_kl = hist.size, np.inf
    for i in range(levels, hist.size + 1):
        p = hist[:i].copy()
        p[-1] += tail[i]
        nonzero = p > 0
        starts = (np.arange(levels) * i) // levels
        sizes = np.diff(np.append(starts, i))
        mass = np.add.reduceat(hist[:i], starts)
        spread = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(mass, spread, out=np.zeros(levels), where=spread > 0)
        q = np.repeat(per_bin, sizes) * nonzero
        if q.sum() == 0 or np.any(q[nonzero] == 0):
            continue  # Q misses mass that P has: infinite divergence
        p, q = p[nonzero] / p.sum(), q[nonzero] / q.sum()
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


def _split_frames(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        for frame in batch.reshape(-1, *batch.shape[-3:]):
            yield frame[None]


def calibrate(
    model, tensors: Sequence[str], frames: Iterable[np.ndarray], *, method: str
) -> tuple[dict[str, float], int]:
    """amax of each tensor in ``tensors`` over ``frames`` (normalized float32 NCHW batches, fed
    one frame at a time); returns (amax by tensor, number of frames)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = copy.deepcopy(model)
    graph = probe.graph
    input_name = graph.input[0].name
    inside = [t for t in tensors if t != input_name]
    del graph.output[:]
    outputs = []
    for t in inside:
        if method == "minmax":
            graph.node.extend(
                [
                    helper.make_node("Abs", [t], [f"{t}.abs"]),
                    helper.make_node("ReduceMax", [f"{t}.abs"], [f"{t}.amax"], keepdims=0),
                ]
            )
            outputs.append(f"{t}.amax")
        else:
            outputs.append(t)
    graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # give each frame's outputs back, not to an arena
    session = ort.InferenceSession(
        probe.SerializeToString(), sess_options=options, providers=providers
    )
    stats = {t: _AbsHistogram() for t in tensors}
    count = 0
    for frame in _split_frames(frames):
        values = dict(zip(inside, session.run(outputs, {input_name: frame}), strict=True))
        if input_name in stats:
            values[input_name] = frame
        if count == 0:
            held = sum(v.nbytes for v in values.values()) / 2**20
            log.info("INT8 calibration: %d tensors, %.0f MiB per frame", len(values), held)
        for t in list(values):
            value = values.pop(t)  # freed once counted
            if method == "minmax":
                stats[t].amax = max(stats[t].amax, float(np.abs(value).max()))
            else:
                stats[t].add(value)
        count += 1
    if count == 0:
        raise ConfigError("INT8 calibration got no frames")
    return {t: s.threshold(method) for t, s in stats.items()}, count


def _scale(amax: np.ndarray | float, name: str, notes: dict[str, list[str]]) -> np.ndarray:
    """Symmetric INT8 scale amax/127 as fp16, between the smallest normal fp16 and the largest
    scale whose 127 multiple is a finite fp16; ``name`` goes into ``notes["over"]`` /
    ``notes["tiny"]`` once per range above fp16's maximum / non-zero range clamped up."""
    amax = np.asarray(amax, np.float64)
    raw = amax / 127.0
    notes["over"] += [name] * int(np.count_nonzero(amax > FP16_MAX))
    notes["tiny"] += [name] * int(np.count_nonzero((amax > 0) & (raw < _FP16_TINY)))
    return np.clip(raw, _FP16_TINY, _FP16_TOP_SCALE).astype(np.float16)


def _warn_ranges(notes: dict[str, list[str]]) -> None:
    """One warning line per kind of range fp16 scales cannot follow (see the module docstring)."""
    over, tiny = notes.get("over", []), notes.get("tiny", [])
    if over:
        log.warning(
            "INT8: %d calibrated range(s) exceed fp16's maximum %g (%s): the fp16 layers around "
            "them cannot hold such values; their scales are capped so dequantized values "
            "saturate at %g instead of becoming inf",
            len(over), FP16_MAX, ", ".join(sorted(set(over))[:5]), FP16_MAX,
        )  # fmt: skip
    if tiny:
        log.warning(
            "INT8: %d range(s) (channels or tensors) below 127 × %.2g got the smallest normal "
            "fp16 scale %.2g and keep fewer than 127 levels (%s)",
            len(tiny), _FP16_TINY, _FP16_TINY, ", ".join(sorted(set(tiny))[:5]),
        )  # fmt: skip


def _insert_qdq(model, plan: _Plan, amax: dict[str, float]) -> None:
    """Add the Q/DQ nodes and INT8 weights of ``plan`` to ``model`` (scales in fp16)."""
    from onnx import helper, numpy_helper

    notes: dict[str, list[str]] = defaultdict(list)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    before: dict[int, list] = defaultdict(list)
    for tensor, uses in plan.activations.items():
        scale, zero, q, dq = (f"{tensor}.{s}" for s in ("scale", "zero", "q", "dq"))
        graph.initializer.extend(
            [
                numpy_helper.from_array(_scale(amax[tensor], tensor, notes), scale),
                numpy_helper.from_array(np.array(0, np.int8), zero),
            ]
        )
        before[min(i for i, _ in uses)] += [
            helper.make_node("QuantizeLinear", [tensor, scale, zero], [q]),
            helper.make_node("DequantizeLinear", [q, scale, zero], [dq]),
        ]
        for i, k in uses:
            graph.node[i].input[k] = dq
    done: dict[str, str] = {}
    for i in plan.weights:
        node = graph.node[i]
        name = node.input[1]
        if name not in done:
            w = numpy_helper.to_array(inits[name]).astype(np.float64)
            scale = _scale(np.abs(w).reshape(len(w), -1).max(1), name, notes)
            shape = (-1,) + (1,) * (w.ndim - 1)
            q = np.clip(np.rint(w / scale.astype(np.float64).reshape(shape)), -127, 127)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q.astype(np.int8), f"{name}.int8"),
                    numpy_helper.from_array(scale, f"{name}.scale"),
                    numpy_helper.from_array(np.zeros(len(w), np.int8), f"{name}.zero"),
                ]
            )
            before[i].append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}.int8", f"{name}.scale", f"{name}.zero"],
                    [f"{name}.dq"],
                    axis=0,
                )
            )
            done[name] = f"{name}.dq"
        node.input[1] = done[name]
    nodes = list(graph.node)
    del graph.node[:]
    for i, node in enumerate(nodes):
        graph.node.extend(before.get(i, []))
        graph.node.append(node)
    used = {t for n in graph.node for t in n.input}
    stale = [init for init in graph.initializer if init.name not in used]
    for init in stale:
        graph.initializer.remove(init)
    _warn_ranges(notes)


def _to_fp16(model) -> None:
    """Float32 initializers, constants and outputs → fp16; a Cast after the float32 input."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    float_only = set()  # Resize's roi and scales are float32 whatever the data type
    for node in graph.node:
        if node.op_type == "Resize":
            float_only.update(t for t in node.input[1:3] if t)
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in float_only:
            values = numpy_helper.to_array(init)
            half = values.astype(np.float16)
            if not np.all(np.isfinite(half)):
                raise ConfigError(f"initializer {init.name} does not fit in fp16")
            init.CopyFrom(numpy_helper.from_array(half, init.name))
    for node in graph.node:
        if node.op_type in ("Cast", "Constant") and not float_only & set(node.output):
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    half = numpy_helper.to_array(attr.t).astype(np.float16)
                    attr.t.CopyFrom(numpy_helper.from_array(half, attr.t.name))
    image = graph.input[0].name
    cast = f"{image}.fp16"
    for node in graph.node:
        for k, t in enumerate(node.input):
            if t == image:
                node.input[k] = cast
    graph.node.insert(0, helper.make_node("Cast", [image], [cast], to=TensorProto.FLOAT16))
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            out.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    frames: Iterable[np.ndarray] | None,
    method: str = DEFAULT_METHOD,
    calibration_cache: str | Path | None = None,
) -> Path:
    """Write the INT8 Q/DQ version of the fp32 surgseg export ``src`` to ``dst`` (atomically).

    Activation ranges come from ``calibration_cache`` (our JSON: amax per tensor) when it
    exists, else from calibrating on ``frames`` (normalized float32 NCHW batches), and are
    then saved there.
    """
    onnx = _load_onnx()
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {METHODS}, got {method!r}")
    src = Path(src)
    cache = Path(calibration_cache) if calibration_cache is not None else None
    with tempfile.TemporaryDirectory(prefix="surgseg-int8-") as workdir:
        model = _prepared(src, Path(workdir))
    plan = _plan(model)
    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if stored.get("method") == method and set(plan.activations) <= set(stored.get("amax", {})):
        amax, count = stored["amax"], stored["frames"]
    elif frames is None:
        raise ConfigError(
            "precision=int8 needs calibration frames (engine.calibration.folder) "
            "or a calibration cache"
        )
    else:
        amax, count = calibrate(model, list(plan.activations), frames, method=method)
        if cache is not None:
            write_json(cache, {"format": "surgseg-calibration", "method": method,
                               "frames": count, "amax": amax})  # fmt: skip
    _insert_qdq(model, plan, amax)
    _to_fp16(model)
    props = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    props.update({"surgseg.precision": json.dumps("int8"),
                  "surgseg.int8": json.dumps({"method": method, "frames": count,
                                              "recipe": RECIPE})})  # fmt: skip
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(dst) as tmp:
        onnx.save(model, tmp)
    return Path(dst)


def cached_int8_onnx(
    src: str | Path,
    cache_dir: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    frames: Iterable[np.ndarray] | None = None,
    folder: str | Path | None = None,
    limit: int = DEFAULT_LIMIT,
    preprocess: Preprocess | None = None,
) -> Path:
    """The INT8 version of ``src`` in ``cache_dir``, quantized now unless a file keyed on
    ``src``'s hash, the method, the calibration data and ``RECIPE`` is there.

    Calibration data is ``frames`` (normalized float32 NCHW batches) or the first ``limit``
    images of ``folder`` prepared by ``preprocess``; its calibration cache is keyed the same
    way, without ``RECIPE``.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {METHODS}, got {method!r}")
    src, cache_dir = Path(src), Path(cache_dir)
    if frames is not None:
        arrays = [np.ascontiguousarray(f, np.float32) for f in frames]
        data: object = [[list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()] for a in arrays]
        source: Iterable[np.ndarray] = arrays
    elif folder and preprocess is not None:
        files = calibration_files(folder, limit)
        stats = [(f, f.stat()) for f in files]
        data = {
            "files": [[str(f.relative_to(folder)), st.st_size, st.st_mtime_ns] for f, st in stats],
            "preprocess": [preprocess.input_size, preprocess.mean, preprocess.std],
        }
        source = calibration_frames(files, preprocess)
    else:
        raise ConfigError(
            "precision=int8 needs calibration frames: set engine.calibration.folder to a "
            "folder of png/jpg frames"
        )
    fields = {"source_sha256": file_sha256(src), "method": method, "data": data}
    calibration_key = json_sha256(fields)
    key = {**fields, "data": calibration_key, "recipe": RECIPE}
    key["key"] = json_sha256(key)
    cache = cache_dir / f"{src.stem}.calibration-{method}-{calibration_key[:16]}.json"
    dst = cache_dir / f"{src.stem}.int8-{str(key['key'])[:16]}.onnx"

    def build(tmp: Path) -> None:
        quantize_onnx(src, tmp, frames=source, method=method, calibration_cache=cache)

    build_once(dst, key, build)
    return dst
