"""Engines behind create_engine: torch and ONNX Runtime on the CPU, the TensorRT cache logic,
clear errors for missing backends and bad options; TensorRT and CUDA paths on a GPU."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from _engine_utils import sharpen_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from surgseg.apps import CONF_DIR
from surgseg.checkpoint import load_checkpoint
from surgseg.engines import ENGINES, create_engine
from surgseg.engines.cache import (
    Profile,
    cache_paths,
    engine_cache_key,
    profile_shapes,
    rebuild_reason,
    write_sidecar,
)
from surgseg.errors import ConfigError
from surgseg.export import synthetic_frames
from surgseg.predictor import Predictor

CUDA = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401

    TRT = True
except ImportError:
    TRT = False
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
needs_trt = pytest.mark.skipif(
    not (CUDA and TRT),
    reason="needs a CUDA GPU and the tensorrt package (pip install 'surgseg[tensorrt]')",
)


def frames(n: int = 2, size: tuple[int, int] = (72, 96), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def agreement(a: list, b: list) -> float:
    return float(np.mean([(x.mask == y.mask).mean() for x, y in zip(a, b, strict=True)]))


def test_torch_and_onnxruntime_agree_through_predictor(make_checkpoint, tmp_path):
    ckpt = sharpen_checkpoint(make_checkpoint("parts"))
    images = frames()
    ref = Predictor.from_checkpoint(ckpt, engine="torch").predict(images)
    ort_pred = Predictor.from_checkpoint(ckpt, engine="onnxruntime", cache_dir=tmp_path, threads=1)
    out = ort_pred.predict(images)
    assert agreement(ref, out) >= 0.995
    assert len({p.mask.max() for p in ref}) >= 1 and ref[0].mask.shape == (72, 96)
    np.testing.assert_allclose(out[0].confidence.astype(int), ref[0].confidence, atol=1)
    exported = sorted(tmp_path.glob("model-*.fp32.onnx"))
    assert len(exported) == 1  # exported once into the cache dir …
    again = Predictor.from_checkpoint(ckpt, engine="onnxruntime", onnx_path=exported[0])
    assert agreement(ref, again.predict(images)) >= 0.995
    Predictor.from_checkpoint(ckpt, engine="onnxruntime", cache_dir=tmp_path)
    assert sorted(tmp_path.glob("model-*.onnx")) == exported  # … and reused, not exported again


def test_every_engine_config_builds_or_fails_clearly(make_checkpoint, tmp_path):
    model, meta = load_checkpoint(make_checkpoint("binary"))
    for name in ENGINES:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="export", overrides=[f"+engine={name}"]).engine
        options = OmegaConf.to_container(cfg, resolve=True)  # as the apps pass it
        assert options.pop("name") == name
        if name == "onnxruntime":
            options["cache_dir"] = str(tmp_path)
        if name == "tensorrt" and not (CUDA and TRT):
            with pytest.raises(ConfigError, match=r"pip install 'surgseg\[tensorrt\]'"):
                create_engine(name, model=model, meta=meta, device="cpu", **options)
            continue
        engine = create_engine(
            name, model=model, meta=meta, device="cuda" if CUDA else "cpu", **options
        )
        x = torch.randn(1, 3, 64, 80, device=engine.device)
        assert engine.infer(x).shape == (1, 2, 64, 80)
        engine.close()


def test_missing_tensorrt_is_a_config_error(make_checkpoint, monkeypatch):
    model, meta = load_checkpoint(make_checkpoint())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    with pytest.raises(ConfigError) as info:
        create_engine("tensorrt", model=model, meta=meta, device="cuda")
    assert str(info.value) == (
        "engine=tensorrt needs the tensorrt package and a CUDA GPU: pip install 'surgseg[tensorrt]'"
    )


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("torch", {"precision": "fp8"}, "precision"),
        ("onnxruntime", {"precision": "int4"}, "precision"),
        ("tensorrt", {"precision": "fp64"}, "precision"),
        ("onnxruntime", {"providers": ["openvino"]}, "providers"),
        ("onnxruntime", {"providers": ["cuda"]}, "CUDA device"),
        ("torch", {"cuda_graphs": True}, "CUDA device"),
        ("torch", {"warp_speed": True}, "warp_speed"),
        ("jax", {}, "engine must be one of"),
    ],
)
def test_bad_options_are_config_errors(make_checkpoint, name, options, match):
    model, meta = load_checkpoint(make_checkpoint())
    with pytest.raises(ConfigError, match=match):
        create_engine(name, model=model, meta=meta, device="cpu", **options)


def test_torch_bf16_on_cpu_follows_fp32(make_checkpoint):
    model, meta = load_checkpoint(sharpen_checkpoint(make_checkpoint("binary")))
    x = synthetic_frames(meta, [(64, 80)], batch=2)[0]
    ref = create_engine("torch", model=model, meta=meta).infer(x)
    low = create_engine(
        "torch", model=model, meta=meta, precision="bf16", channels_last=True
    ).infer(x)
    assert low.dtype == torch.bfloat16 and model.classifier[-1].weight.dtype == torch.float32
    assert (low.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.98


KEY = dict(
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    trt_version="10.9.0",
    precision="fp16",
    profile=profile_shapes((1, 3, 512, 640), (1, 3, 512, 640), (8, 3, 512, 640)),
    onnx_sha256="ab" * 32,
)


def test_cache_key_changes_with_every_field_and_only_then():
    base = engine_cache_key(**KEY)
    assert engine_cache_key(**KEY) == base
    changes = dict(
        gpu_name="NVIDIA H200",
        compute_capability=(8, 9),
        trt_version="10.10.0",
        precision="int8",
        profile=replace(KEY["profile"], max=(4, 3, 512, 640)),
        onnx_sha256="cd" * 32,
    )
    keys = {engine_cache_key(**{**KEY, field: value})["key"] for field, value in changes.items()}
    assert len(keys) == len(changes) and base["key"] not in keys
    with pytest.raises(ConfigError, match="precision"):
        engine_cache_key(**{**KEY, "precision": "fp8"})


def test_stale_engine_needs_rebuild(tmp_path):
    engine, sidecar = cache_paths(tmp_path, "model", "fp16")
    key = engine_cache_key(**KEY)
    assert rebuild_reason(engine, sidecar, key) == "no cached engine"
    engine.write_bytes(b"plan")
    write_sidecar(sidecar, key)
    assert rebuild_reason(engine, sidecar, key) is None
    newer = engine_cache_key(**{**KEY, "trt_version": "10.11.0"})
    assert rebuild_reason(engine, sidecar, newer) == "stale engine: trt_version changed"
    sidecar.write_text("{not json")
    assert rebuild_reason(engine, sidecar, key) == "unreadable sidecar"


def test_profile_validation():
    profile = profile_shapes([1, 3, 256, 320], [2, 3, 512, 640], [8, 3, 1024, 1280])
    assert profile == Profile((1, 3, 256, 320), (2, 3, 512, 640), (8, 3, 1024, 1280))
    profile.check((8, 3, 1024, 1280))
    profile.check((1, 3, 256, 320))
    with pytest.raises(
        ConfigError, match=r"input shape \[9, 3, 512, 640\] is outside .* max \[8, 3, 1024, 1280\]"
    ):
        profile.check((9, 3, 512, 640))
    with pytest.raises(ConfigError, match="outside"):
        profile.check((1, 3, 128, 640))
    with pytest.raises(ConfigError, match="min ≤ opt"):
        profile_shapes([1, 3, 512, 640], [1, 3, 256, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="opt ≤ max"):
        profile_shapes([1, 3, 256, 320], [16, 3, 512, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="C=3"):
        profile_shapes([1, 1, 256, 320], [1, 3, 512, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="4 positive sizes"):
        profile_shapes([1, 3, 256], [1, 3, 512, 640], [8, 3, 1024, 1280])


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_matches_torch_fp32(make_checkpoint, tmp_path, precision):
    ckpt = sharpen_checkpoint(make_checkpoint("parts"))
    model, meta = load_checkpoint(ckpt)
    calib = synthetic_frames(meta, [(64, 80)] * 4, batch=4, seed=1) if precision == "int8" else None
    options = dict(precision=precision, cache_dir=tmp_path, calibration_batches=calib)
    engine = create_engine("tensorrt", model=model, meta=meta, device="cuda", **options)
    x = synthetic_frames(meta, [(64, 80)], batch=4, seed=2)[0].cuda()
    out = engine.infer(x)
    assert out.device.type == "cuda" and out.shape == (4, 4, 64, 80)
    ref = create_engine("torch", model=model, meta=meta, device="cuda").infer(x)
    minimum = 0.98 if precision == "int8" else 0.995
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() >= minimum
    with pytest.raises(ConfigError, match="outside the TensorRT engine's profile"):
        engine.infer(torch.zeros(9, 3, 64, 80, device="cuda"))
    built = engine.engine_path.stat().st_mtime_ns
    create_engine("tensorrt", model=model, meta=meta, device="cuda", **options)
    assert engine.engine_path.stat().st_mtime_ns == built  # cached engine reused
    assert list(tmp_path.glob("timing-*.cache"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp16", "channels_last": True},
        {"precision": "bf16", "channels_last": True},
        {"cuda_graphs": True},
        {"precision": "fp16", "channels_last": True, "cuda_graphs": True},
        {"precision": "fp16", "compile": True},
    ],
    ids=["fp16-cl", "bf16-cl", "graphs", "fp16-cl-graphs", "fp16-compile"],
)
def test_torch_cuda_paths_follow_fp32(make_checkpoint, options):
    model, meta = load_checkpoint(sharpen_checkpoint(make_checkpoint("parts")))
    x = synthetic_frames(meta, [(64, 80)], batch=3, seed=3)[0].cuda()
    ref = create_engine("torch", model=model, meta=meta, device="cuda").infer(x)
    engine = create_engine("torch", model=model, meta=meta, device="cuda", **options)
    for n in (3, 3, 2):  # the second call replays the captured graph; 2 replays it padded
        out = engine.infer(x[:n])
        assert out.shape == (n, 4, 64, 80) and out.device.type == "cuda"
        agree = (out.float().argmax(1) == ref[:n].argmax(1)).float().mean().item()
        assert agree >= 0.995, (options, n, agree)
    if options.get("cuda_graphs"):
        assert len(engine._graphs) == 1  # the short batch replayed the batch-3 graph
