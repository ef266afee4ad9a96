"""Export to ONNX and check the export on ONNX Runtime against PyTorch.

The exported graph takes ``image`` (float32, N×3×H×W, normalized) and returns ``logits``
(N×classes×H×W) with dynamic batch, height and width. The checkpoint's metadata travels in the
file's ``metadata_props`` so an ONNX file is self-describing. Reduced precision is baked into the
graph (fp16/bf16 weights here; INT8 Q/DQ nodes in ``surgseg.quantize``), which is what
TensorRT's strongly typed networks and ONNX Runtime both run.

Every export passes ``onnx.checker.check_model(full_check=True)`` before it is written. A bf16
graph is exported at opset ≥ 22: ONNX allows bfloat16 ``Conv`` only from opset 22 (the opset-18
bf16 graph fails the checker). TensorRT's ONNX parser documents opset 22 from TensorRT 10.15 on
(and up to opset 25 in 11.x); ONNX Runtime's CPU provider has no bfloat16 ``Conv(22)`` kernel.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from surgseg.atomic import atomic_path
from surgseg.checkpoint import CheckpointMeta
from surgseg.errors import CheckpointError, ConfigError

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_OPSET = 18  # the dynamo exporter's lowest
BF16_OPSET = 22  # first opset whose Conv (and Relu, MaxPool, Resize…) take bfloat16
# The batch of the traced example: torch.export specializes dimensions of size 0 and 1, so a
# dynamic batch needs 2; a static (dynamic=False) export is fixed at this batch.
EXAMPLE_BATCH = 2
BF16_PARITY_SKIPPED = (
    "skipped: ONNX Runtime's CPU provider has no bfloat16 convolution (Conv(22)); check this "
    "export on a GPU (engine=tensorrt precision=bf16)"
)
DEFAULT_CACHE_DIR = "~/.cache/surgseg"
_META_KEYS = ("task", "class_names", "model", "input_size", "mean", "std", "provenance")


class OnnxWrapper(nn.Module):
    """Named float32 input ``image`` → ``logits`` (the model's ``"out"``), at ``dtype`` inside."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.to(self.dtype))["out"]


def check_precision(precision: Any, *, key: str = "precision") -> str:
    """``precision`` if it is one an export can be written in, or a ConfigError naming ``key``."""
    if not isinstance(precision, str) or precision not in DTYPES:
        raise ConfigError(f"{key} must be one of {', '.join(DTYPES)}, got {precision!r}")
    return precision


def check_opset(opset: Any, *, key: str = "opset") -> int:
    """``opset`` if the exporter can write it, or a ConfigError naming ``key``: an integer from
    18 (the dynamo exporter) to the newest opset of the installed ``onnx`` (asked for more,
    torch writes opset 18 instead, with a warning)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"{key} must be an integer from {MIN_OPSET} (the dynamo exporter) to {newest} (the "
            f"newest of the installed onnx {onnx.__version__}), got {opset!r}"
        )
    return opset


def export_opset(opset: int, precision: str) -> int:
    """The opset an export at ``precision`` is written in: ``opset``, raised to 22 for bf16."""
    return max(int(opset), BF16_OPSET) if precision == "bf16" else int(opset)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    meta: CheckpointMeta,
    opset: int = 18,
    dynamic: bool = True,
    precision: str = "fp32",
) -> Path:
    """Export ``model`` to ``path`` (atomically) with ``meta`` in its metadata_props.

    Uses the dynamo exporter (torch.export + onnxscript), torch's default since 2.9; it needs
    opset ≥ 18. ``precision`` "fp16"/"bf16" exports the weights in that type (float32 input);
    bf16 is exported at opset ``export_opset(opset, "bf16")`` (≥ 22). ``dynamic=False`` fixes
    the graph at ``EXAMPLE_BATCH``×3×``meta.input_size``. The graph must pass the full ONNX
    checker and be written at the opset asked for (ConfigError otherwise); nothing is written
    then.
    """
    import onnx

    check_precision(precision)
    opset = export_opset(check_opset(opset), precision)
    dtype = DTYPES[precision]
    module = copy.deepcopy(model).cpu().to(dtype) if dtype != torch.float32 else model.cpu()
    wrapper = OnnxWrapper(module, dtype).eval()
    example = torch.zeros(EXAMPLE_BATCH, 3, *meta.input_size)
    dims = {0: "batch", 2: "height", 3: "width"}
    with torch.inference_mode(False):
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={INPUT_NAME: dims} if dynamic else None,
            verbose=False,
        )
    proto = program.model_proto
    written = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if written != [opset]:  # the exporter falls back to its own opset, with only a warning
        raise ConfigError(f"the exporter wrote opset {written} instead of opset {opset}")
    fields = {k: v for k, v in asdict(meta).items() if k in _META_KEYS}
    fields.update(format="surgseg-onnx", precision=precision, weights_sha256=weights_sha256(model))
    for key, value in fields.items():
        proto.metadata_props.add(key=f"surgseg.{key}", value=json.dumps(value))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"the {precision} export at opset {opset} is not valid ONNX: {first}"
        ) from None
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)
    return Path(path)


def _onnx_props(path: str | Path) -> dict[str, Any]:
    """The ``surgseg.*`` metadata of an export, decoded, without the ``surgseg.`` prefix."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("ONNX file not found", path)
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if props.get("surgseg.format") != json.dumps("surgseg-onnx"):
        raise CheckpointError("not a surgseg ONNX export (no surgseg metadata)", path)
    return {k.removeprefix("surgseg."): json.loads(v) for k, v in props.items()
            if k.startswith("surgseg.")}  # fmt: skip


def read_onnx_meta(path: str | Path) -> tuple[CheckpointMeta, str]:
    """The checkpoint metadata and precision embedded by ``export_onnx``."""
    props = _onnx_props(path)
    raw = {k: props[k] for k in _META_KEYS}
    raw["input_size"] = tuple(raw["input_size"])
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    return CheckpointMeta(**raw), props["precision"]


def check_onnx_weights(path: str | Path, model: nn.Module) -> None:
    """ConfigError unless the export at ``path`` was made from ``model``'s weights (those of
    the checkpoint a run names). A file that does not record them (another exporter's, or
    surgseg's before it did) cannot tell: it is taken as it is."""
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    stored = props.get("surgseg.weights_sha256")
    if stored is not None and json.loads(stored) != weights_sha256(model):
        raise ConfigError(
            "engine.onnx_path was exported from other weights than the checkpoint's: export "
            "this checkpoint (surgseg-export checkpoint=...) or name its own export",
            path,
        )


def weights_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of the model's weights (state_dict names and bytes, as they are)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(
            value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def model_digest(model: nn.Module, meta: CheckpointMeta, *, precision: str, opset: int) -> str:
    """Short hash of the weights, metadata and export settings: the name of an exported file."""
    fields = [asdict(meta), precision, opset, torch.__version__, weights_sha256(model)]
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]


def cached_onnx(
    model: nn.Module,
    meta: CheckpointMeta,
    *,
    cache_dir: str | Path | None,
    precision: str = "fp32",
    opset: int = 18,
) -> Path:
    """The ONNX export of ``model`` in ``cache_dir``, exported now if not already there. The
    name's digest holds the opset really written (22 for bf16), so a bf16 file exported at
    opset 18 by an earlier version is never picked up."""
    opset = export_opset(opset, precision)
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    path = (
        cache_dir
        / f"model-{model_digest(model, meta, precision=precision, opset=opset)}.{precision}.onnx"
    )
    if not path.is_file():
        export_onnx(model, path, meta=meta, opset=opset, precision=precision)
    return path


def synthetic_frames(
    meta: CheckpointMeta, sizes: Sequence[tuple[int, int]], *, batch: int = 2, seed: int = 0
) -> list[torch.Tensor]:
    """Normalized float32 batches (one per size) of drawn scenes: a textured background with
    bright elongated bars and discs, a crude stand-in for tools over tissue."""
    rng = np.random.default_rng(seed)
    mean = np.array(meta.mean, np.float32) * 255
    std = np.array(meta.std, np.float32) * 255
    batches = []
    for h, w in sizes:
        images = []
        for _ in range(batch):
            image = cv2.GaussianBlur(rng.integers(60, 160, (h, w, 3), dtype=np.uint8), (0, 0), 3)
            for _ in range(3):
                p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                color = tuple(int(c) for c in rng.integers(170, 256, 3))
                cv2.line(image, p1, p2, color, thickness=max(2, min(h, w) // 10))
                cv2.circle(image, p2, max(2, min(h, w) // 12), color, thickness=-1)
            images.append((image.astype(np.float32) - mean) / std)
        batches.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
    return batches


@contextmanager
def true_fp32() -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls inside the block: the FP32 reference.

    PyTorch's default lets cuDNN convolutions use TF32 on Ampere and newer GPUs.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_onnx(path: str | Path, model: nn.Module, frames: Sequence[torch.Tensor]) -> dict:
    """Run ``path`` on ONNX Runtime (CPU) and ``model`` in PyTorch FP32 (TF32 off on a GPU)
    on each normalized batch.

    Returns the max |Δlogits| and the share of pixels whose argmax agrees, per batch and overall.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.eval()
    device = next(model.parameters()).device
    results = []
    for batch in frames:
        with torch.inference_mode(), true_fp32():
            ref = model(batch.to(device))["out"].float().cpu()
        out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]).float()
        if out.shape != ref.shape:
            raise ConfigError(f"ONNX output shape {list(out.shape)} != PyTorch {list(ref.shape)}")
        agree = (out.argmax(1) == ref.argmax(1)).double().mean().item()
        results.append(
            {
                "shape": list(batch.shape),
                "max_abs_diff": (out - ref).abs().max().item(),
                "agreement": agree,
            }
        )
    pixels = [r["shape"][0] * r["shape"][2] * r["shape"][3] for r in results]
    return {
        "max_abs_diff": max(r["max_abs_diff"] for r in results),
        "agreement": sum(r["agreement"] * n for r, n in zip(results, pixels, strict=True))
        / sum(pixels),
        "batches": results,
    }
