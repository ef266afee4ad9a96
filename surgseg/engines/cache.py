"""TensorRT engine cache: the key, the shape profile and safe check-then-build, in pure Python.

A serialized engine only runs on the GPU model and TensorRT version that built it, for the
precision, shape profile and network it was built with. Each cached artefact is named by a
digest of exactly those fields (so precisions, profiles and GPUs sharing a folder never
overwrite each other) and has a sidecar ``<file>.json`` holding the full key; an artefact
whose sidecar key differs from the one wanted now is rebuilt, never loaded.

Several processes may share one cache folder. ``build_once`` checks without a lock (a
complete artefact and its sidecar are only ever renamed into place, the sidecar last), and
otherwise takes an exclusive ``fcntl.flock`` on ``<file>.lock``, checks again, and builds
into a temporary name that is renamed into place: a reader never sees a half-written file,
and two processes never build the same engine twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from surgseg.atomic import atomic_path, write_json
from surgseg.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile for the NCHW input: min ≤ opt ≤ max per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def admits(self, shape: Sequence[int]) -> bool:
        """Whether the NCHW ``shape`` is within this profile."""
        shape = tuple(int(d) for d in shape)
        return len(shape) == 4 and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )


def profile_for(profiles: Sequence[Profile], shape: Sequence[int]) -> int:
    """The index of the first of ``profiles`` that admits ``shape``; ConfigError if none does."""
    for index, profile in enumerate(profiles):
        if profile.admits(shape):
            return index
    ranges = "; ".join(f"min {list(p.min)}, max {list(p.max)}" for p in profiles)
    raise ConfigError(
        f"input shape {[int(d) for d in shape]} is outside the TensorRT engine's "
        f"{'profiles' if len(profiles) > 1 else 'profile'} ({ranges}); widen engine.profile "
        "and rebuild"
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


def json_sha256(fields: object) -> str:
    """Hex SHA-256 of ``fields`` as canonical JSON (sorted keys): stable across runs."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def engine_cache_key(
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    precision: str,
    profiles: Sequence[Profile],
    onnx_sha256: str,
    tf32: bool = False,
    dla_core: int | None = None,
) -> dict[str, object]:
    """The fields an engine depends on, plus ``key``: their SHA-256."""
    if precision not in PRECISIONS:
        raise ConfigError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
    fields: dict[str, object] = {
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
        "trt_version": trt_version,
        "precision": precision,
        "profiles": [{k: list(v) for k, v in asdict(p).items()} for p in profiles],
        "onnx_sha256": onnx_sha256,
        "tf32": bool(tf32),
        "dla_core": dla_core,
    }
    fields["key"] = json_sha256(fields)
    return fields


def cache_path(cache_dir: str | Path, stem: str, key: dict) -> Path:
    """``<cache_dir>/<stem>.<precision>.<first 16 hex digits of the key>.engine``."""
    return Path(cache_dir) / f"{stem}.{key['precision']}.{str(key['key'])[:16]}.engine"


def sidecar_path(path: str | Path) -> Path:
    """The JSON file next to ``path`` that records the key it was built for."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def rebuild_reason(path: str | Path, key: dict) -> str | None:
    """Why the cached ``path`` cannot be used (missing, unreadable or stale), or None if it can."""
    path, sidecar = Path(path), sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        return "not cached"
    try:
        stored = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "unreadable sidecar"
    if not isinstance(stored, dict) or stored.get("key") != key["key"]:
        changed = [k for k in key if k != "key" and (stored or {}).get(k) != key[k]]
        return f"stale: {', '.join(changed) or 'key'} changed"
    return None


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path`` (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(path: str | Path, key: dict, build: Callable[[Path], None]) -> str | None:
    """Make sure ``path`` holds the artefact for ``key``; return why it was built, or None if a
    complete one was already there.

    ``build(tmp)`` writes the artefact to the temporary path ``tmp``; it is renamed to ``path``
    and the sidecar written after it, all under ``<path>.lock``.
    """
    path = Path(path)
    if rebuild_reason(path, key) is None:
        return None
    with file_lock(path.with_name(path.name + ".lock")):
        reason = rebuild_reason(path, key)  # another process may have built it meanwhile
        if reason is None:
            return None
        with atomic_path(path) as tmp:
            build(tmp)
        write_json(sidecar_path(path), key)
        return reason
