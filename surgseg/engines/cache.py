"""TensorRT engine cache: the key, the shape profile and the sidecar file, in pure Python.

A serialized engine only runs on the GPU model and TensorRT version that built it, for the
precision, shape profile and network it was built with. Each cached engine gets a sidecar JSON
holding the key made of exactly those fields; an engine whose sidecar key differs from the one
wanted now is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from surgseg.atomic import write_json
from surgseg.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile for the NCHW input: min ≤ opt ≤ max per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def check(self, shape: Sequence[int]) -> None:
        """Raise ConfigError if ``shape`` is outside this profile."""
        shape = tuple(int(d) for d in shape)
        inside = len(shape) == 4 and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )
        if not inside:
            raise ConfigError(
                f"input shape {list(shape)} is outside the TensorRT engine's profile "
                f"(min {list(self.min)}, max {list(self.max)}); widen engine.profile and rebuild"
            )


def profile_shapes(
    min: Sequence[int], opt: Sequence[int], max: Sequence[int], *, channels: int = 3
) -> Profile:
    """Validate and return a profile of NCHW shapes; raise ConfigError naming the problem."""
    shapes = {}
    for label, shape in (("min", min), ("opt", opt), ("max", max)):
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or any(d < 1 for d in shape):
            raise ConfigError(
                f"engine.profile.{label} must be 4 positive sizes N,C,H,W, got {list(shape)}"
            )
        if shape[1] != channels:
            raise ConfigError(f"engine.profile.{label} must have C={channels}, got {list(shape)}")
        shapes[label] = shape
    for lo, hi in (("min", "opt"), ("opt", "max")):
        if any(a > b for a, b in zip(shapes[lo], shapes[hi], strict=True)):
            raise ConfigError(
                f"engine.profile needs {lo} ≤ {hi} in every dimension, "
                f"got {lo} {list(shapes[lo])} and {hi} {list(shapes[hi])}"
            )
    return Profile(**shapes)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_cache_key(
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    precision: str,
    profile: Profile,
    onnx_sha256: str,
) -> dict[str, object]:
    """The fields an engine depends on, plus ``key``: their SHA-256 (stable across runs)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
    fields: dict[str, object] = {
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
        "trt_version": trt_version,
        "precision": precision,
        "profile": {k: list(v) for k, v in asdict(profile).items()},
        "onnx_sha256": onnx_sha256,
    }
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return fields


def cache_paths(cache_dir: str | Path, stem: str, precision: str) -> tuple[Path, Path]:
    """(engine file, sidecar JSON) for ``stem`` at ``precision`` inside ``cache_dir``."""
    base = Path(cache_dir) / f"{stem}.{precision}"
    return base.with_suffix(".engine"), base.with_suffix(".json")


def rebuild_reason(engine_path: str | Path, sidecar_path: str | Path, key: dict) -> str | None:
    """Why the cached engine cannot be used (missing, unreadable or stale), or None if it can."""
    engine_path, sidecar_path = Path(engine_path), Path(sidecar_path)
    if not engine_path.is_file() or not sidecar_path.is_file():
        return "no cached engine"
    try:
        stored = json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        return "unreadable sidecar"
    if not isinstance(stored, dict) or stored.get("key") != key["key"]:
        changed = [k for k in key if k != "key" and (stored or {}).get(k) != key[k]]
        return f"stale engine: {', '.join(changed) or 'key'} changed"
    return None


def write_sidecar(sidecar_path: str | Path, key: dict) -> None:
    """Record ``key`` next to a freshly written engine (atomically)."""
    write_json(sidecar_path, key)
