"""Engines behind create_engine: torch and ONNX Runtime on the CPU; the TensorRT engine end to
end on the CPU against a strict fake of the TensorRT 10/11 Python API (build, timing cache,
profile, DLA, 256-byte aligned addresses, refusals, execute_async_v3 on the engine's stream);
the TensorRT logic that needs no GPU (cache keys and names, the cross-process build lock,
profiles, version handling, capability checks, builder settings); clear errors for missing
backends and bad options; TensorRT, ONNX Runtime CUDA and torch CUDA paths on a GPU."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _engine_utils import (
    FAKE_CACHE,
    CpuStream,
    fake_tensorrt,
    run_tensorrt_on_cpu,
    sharpen,
    sharpen_checkpoint,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import surgseg
from surgseg.apps import CONF_DIR
from surgseg.checkpoint import CheckpointMeta, load_checkpoint
from surgseg.engines import ENGINES, create_engine
from surgseg.engines.cache import (
    Profile,
    build_once,
    cache_path,
    engine_cache_key,
    profile_for,
    profile_shapes,
    rebuild_reason,
    sidecar_path,
)
from surgseg.engines.onnxruntime_engine import run_precision
from surgseg.engines.tensorrt_engine import (
    INSTALL_HINT,
    aligned,
    aligned_empty,
    build_engine,
    check_dla,
    check_precision,
    configure_builder,
    documented_opset,
    network_flags,
    trt_release,
    trt_version,
)
from surgseg.errors import ConfigError
from surgseg.export import export_onnx, synthetic_frames, true_fp32
from surgseg.predictor import Predictor
from surgseg.tasks import class_names

CUDA = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401

    TRT = True
except ImportError:
    TRT = False
ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
needs_trt = pytest.mark.skipif(
    not (CUDA and TRT),
    reason="needs a CUDA GPU and the tensorrt package (pip install 'surgseg[tensorrt]')",
)
needs_ort_cuda = pytest.mark.skipif(
    not (CUDA and ORT_CUDA),
    reason="needs a CUDA GPU and onnxruntime-gpu (this onnxruntime has no CUDA provider)",
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
        if name == "onnxruntime" and CUDA and not ORT_CUDA:
            with pytest.raises(ConfigError, match="onnxruntime-gpu"):
                create_engine(name, model=model, meta=meta, device="cuda", **options)
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
    assert str(info.value) == INSTALL_HINT and "\n" not in INSTALL_HINT


def test_cuda_provider_missing_is_a_config_error(make_checkpoint, monkeypatch):
    model, meta = load_checkpoint(make_checkpoint())
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError) as info:
        create_engine("onnxruntime", model=model, meta=meta, device="cuda")
    message = str(info.value)
    assert "no ['cuda'] execution provider" in message and "onnxruntime-gpu" in message


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
    profiles=(profile_shapes((1, 3, 512, 640), (1, 3, 512, 640), (8, 3, 512, 640)),),
    onnx_sha256="ab" * 32,
)
CROPS = profile_shapes((1, 3, 160, 160), (16, 3, 160, 160), (32, 3, 160, 160))


def test_cache_key_changes_with_every_field_and_only_then():
    base = engine_cache_key(**KEY)
    assert engine_cache_key(**KEY) == base
    changes = dict(
        gpu_name="NVIDIA H200",
        compute_capability=(8, 9),
        trt_version="10.10.0",
        precision="int8",
        profiles=(replace(KEY["profiles"][0], max=(4, 3, 512, 640)),),
        onnx_sha256="cd" * 32,
        tf32=True,
        dla_core=0,
    )
    keys = {engine_cache_key(**{**KEY, field: value})["key"] for field, value in changes.items()}
    assert len(keys) == len(changes) and base["key"] not in keys
    with pytest.raises(ConfigError, match="precision"):
        engine_cache_key(**{**KEY, "precision": "fp8"})


def test_cache_names_differ_by_precision_profile_and_gpu(tmp_path):
    variants = [
        KEY,
        {**KEY, "precision": "fp32"},
        {**KEY, "profiles": (replace(KEY["profiles"][0], opt=(8, 3, 512, 640)),)},
        {**KEY, "profiles": (*KEY["profiles"], CROPS)},
        {**KEY, "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": (8, 0)},
    ]
    paths = [cache_path(tmp_path, "best", engine_cache_key(**v)) for v in variants]
    assert len(set(paths)) == len(variants)
    assert paths[1].name.startswith("best.fp32.") and paths[0].name.startswith("best.fp16.")
    sidecars = {sidecar_path(p).name for p in paths}
    assert len(sidecars) == len(variants) and "best.json" not in sidecars  # the export report


def test_stale_engine_needs_rebuild(tmp_path):
    key = engine_cache_key(**KEY)
    engine = cache_path(tmp_path, "model", key)
    assert rebuild_reason(engine, key) == "not cached"
    assert build_once(engine, key, lambda tmp: tmp.write_bytes(b"plan")) == "not cached"
    assert rebuild_reason(engine, key) is None
    assert build_once(engine, key, lambda tmp: pytest.fail("rebuilt a cached engine")) is None
    newer = engine_cache_key(**{**KEY, "trt_version": "10.11.0"})
    assert rebuild_reason(engine, newer) == "stale: trt_version changed"
    sidecar_path(engine).write_text("{not json")
    assert rebuild_reason(engine, key) == "unreadable sidecar"


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    key = engine_cache_key(**KEY)
    engine = cache_path(tmp_path, "model", key)

    def crash(tmp):
        tmp.write_bytes(b"half a pla")
        raise RuntimeError("builder died")

    with pytest.raises(RuntimeError, match="builder died"):
        build_once(engine, key, crash)
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert [p.name for p in tmp_path.iterdir()] == [engine.name + ".lock"]


SLOW_WRITER = """
import sys, time, types
from pathlib import Path

# The real surgseg/engines/cache.py, without running the packages' __init__ (torch): seconds.
root = Path(sys.argv[3])
for name, folder in (("surgseg", root), ("surgseg.engines", root / "engines")):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [str(folder)]
from surgseg.engines.cache import build_once, engine_cache_key, profile_shapes

engine, started = Path(sys.argv[1]), Path(sys.argv[2])
key = engine_cache_key(gpu_name="GPU", compute_capability=(9, 0), trt_version="10.9.0",
                       precision="fp16", profiles=[profile_shapes((1, 3, 64, 80), (1, 3, 64, 80),
                       (8, 3, 64, 80))], onnx_sha256="ab" * 32)

def slow(tmp):
    with open(tmp, "wb") as f:
        started.touch()
        for _ in range(20):
            f.write(b"x" * 1000)
            f.flush()
            time.sleep(0.05)
        f.write(b"END")

build_once(engine, key, slow)
"""


def test_second_process_waits_for_the_first_and_never_loads_half_a_plan(tmp_path):
    key = engine_cache_key(**{**KEY, "gpu_name": "GPU",
                              "profiles": [profile_shapes((1, 3, 64, 80), (1, 3, 64, 80),
                                                          (8, 3, 64, 80))]})  # fmt: skip
    engine, started = cache_path(tmp_path, "model", key), tmp_path / "started"
    package = Path(surgseg.__file__).parent
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(engine), str(started), str(package)]
    )
    try:
        while not started.exists():
            assert writer.poll() is None, "the writer process died"
            time.sleep(0.01)
        assert not engine.exists()  # half written, under another name
        t0 = time.monotonic()
        reason = build_once(engine, key, lambda tmp: pytest.fail("built a second time"))
        waited = time.monotonic() - t0
    finally:
        assert writer.wait(timeout=60) == 0
    assert reason is None and waited > 0.3  # it waited for the lock, then found the plan
    assert engine.read_bytes() == b"x" * 20_000 + b"END"


def test_tensorrt_version_handling():
    assert trt_version("10.3.0") == (10, 3)  # JetPack 6's system TensorRT
    assert trt_version("10.13.2.6") == (10, 13)
    assert trt_version("11.0.0.12") == (11, 0)
    for bad, match in (("8.6.1.6", r"needs TensorRT ≥ 10\.0, found 8\.6\.1\.6"),
                       ("unknown", "cannot read")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            trt_version(bad)
    fake = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=5))
    assert network_flags(fake, (10, 3)) == 1 << 5  # opt in on 10.x
    assert network_flags(fake, (11, 0)) == 0  # always strongly typed; the flag is deprecated


def test_bf16_and_dla_capability_checks():
    check_precision("bf16", (8, 0), "NVIDIA A100")
    check_precision("fp16", (7, 5), "Tesla T4")
    check_precision("int8", (8, 7), "Orin", dla_core=0)
    with pytest.raises(ConfigError) as info:
        check_precision("bf16", (7, 5), "Tesla T4")
    assert str(info.value) == (
        "engine.precision=bf16 needs a GPU of compute capability ≥ 8.0 (Ampere or newer); "
        "Tesla T4 is 7.5: use precision=fp16"
    )
    with pytest.raises(ConfigError, match="DLA has no fp32"):
        check_precision("fp32", (8, 7), "Orin", dla_core=0)
    with pytest.raises(ConfigError, match="precision"):
        check_precision("fp8", (9, 0), "H100")


class _Recorder:
    """A stand-in for IBuilderConfig that records what the engine sets."""

    def __init__(self) -> None:
        self.set, self.cleared, self.pools = [], [], {}

    def set_flag(self, flag):
        self.set.append(flag)

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size


FAKE_TRT = SimpleNamespace(
    BuilderFlag=SimpleNamespace(TF32="TF32", GPU_FALLBACK="GPU_FALLBACK"),
    MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
    DeviceType=SimpleNamespace(DLA="DLA", GPU="GPU"),
)


def test_builder_settings_tf32_and_dla():
    config = _Recorder()
    configure_builder(FAKE_TRT, None, config, workspace_gb=2, tf32=False, dla_core=None)
    assert config.cleared == ["TF32"] and config.set == []  # fp32 is FP32; no precision flags
    assert config.pools == {"WORKSPACE": 2 << 30}
    config = _Recorder()
    jetson = SimpleNamespace(num_DLA_cores=2)
    configure_builder(FAKE_TRT, jetson, config, workspace_gb=1, tf32=True, dla_core=1)
    assert config.set == ["TF32", "GPU_FALLBACK"] and config.cleared == []
    assert config.default_device_type == "DLA" and config.DLA_core == 1
    with pytest.raises(ConfigError, match="dla_core=0, but this device has 0 DLA cores"):
        configure_builder(FAKE_TRT, SimpleNamespace(num_DLA_cores=0), _Recorder(),
                          workspace_gb=1, tf32=False, dla_core=0)  # fmt: skip


def test_a_given_onnx_file_must_load_and_match_the_precision(fp16_export, tmp_path):
    model, meta, fp16 = fp16_export
    fp32 = export_onnx(model, tmp_path / "m.fp32.onnx", meta=meta)
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))

    def engine(path, precision):
        return create_engine("onnxruntime", model=model, meta=meta, onnx_path=path,
                             precision=precision)  # fmt: skip

    with pytest.raises(ConfigError, match="not an ONNX model ONNX Runtime can load") as error:
        engine(noise, "fp32")
    assert error.value.path == noise
    with pytest.raises(ConfigError, match=r"engine\.precision=fp16, but this is an fp32 export"):
        engine(fp32, "fp16")
    with pytest.raises(ConfigError, match=r"engine\.precision=fp32, but this is an fp16 export"):
        engine(fp16, "fp32")
    assert engine(fp16, "fp16").output_dtype == torch.float16
    assert engine(fp32, "fp32").output_dtype == torch.float32
    assert engine(fp32, "fp32").max_batch((160, 160)) is None  # dynamic: cues.refine_tips


def test_a_static_export_runs_any_batch_and_refuses_other_sizes(fp16_export, tmp_path):
    """``surgseg-export dynamic=false`` fixes the graph at 2×3×H×W: ONNX Runtime runs other
    batches in chunks of 2 (the last filled up), with the dynamic export's results; a Predictor
    at another input size is refused in one line, as are the tip crops."""
    from surgseg.predictor import Predictor
    from surgseg.tip_refine import crop_predictor

    model, meta, _ = fp16_export
    static = export_onnx(model, tmp_path / "static.onnx", meta=meta, dynamic=False)
    dynamic = export_onnx(model, tmp_path / "dynamic.onnx", meta=meta)
    engines = [create_engine("onnxruntime", model=model, meta=meta, onnx_path=path)
               for path in (static, dynamic)]  # fmt: skip
    assert [d.dim_value for d in onnx.load(static).graph.input[0].type.tensor_type.shape.dim] == [
        2, 3, 64, 80
    ]
    for n in (1, 2, 3, 5):
        x = synthetic_frames(meta, [(64, 80)], batch=n, seed=n)[0]
        out, ref = (engine.infer(x) for engine in engines)
        assert out.shape == (n, 2, 64, 80)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    frames = list(np.random.default_rng(0).integers(0, 255, (3, 96, 120, 3), np.uint8))
    got, want = (Predictor(engine, meta).predict(frames) for engine in engines)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got, want, strict=True))
    with pytest.raises(ConfigError, match=r"engine=onnxruntime cannot run 128×160 inputs "
                                          r"\(input_size=\[128, 160\]\): its static ONNX "
                                          r"export"):  # fmt: skip
        Predictor(engines[0], meta, input_size=(128, 160))
    with pytest.raises(ConfigError, match="refine_tips needs an engine that runs 160×160"):
        crop_predictor(Predictor(engines[0], meta))


def test_an_export_of_other_weights_is_refused(fp16_export, tmp_path, monkeypatch):
    """``engine.onnx_path`` must hold the checkpoint's own weights: an export of another model
    with the same metadata is one line naming the file (ONNX Runtime and TensorRT alike); a
    file that does not record its weights is taken as it is."""
    model, meta, fp16 = fp16_export
    other = meta.build()  # same architecture and classes, other weights
    fp32 = export_onnx(model, tmp_path / "m.onnx", meta=meta)
    for path, precision in ((fp32, "fp32"), (fp16, "fp16")):
        with pytest.raises(ConfigError, match="exported from other weights than the "
                                              "checkpoint's") as error:  # fmt: skip
            create_engine("onnxruntime", model=other, meta=meta, onnx_path=path,
                          precision=precision)  # fmt: skip
        assert error.value.path == path
    unrecorded = onnx.load(fp32)
    kept = [p for p in unrecorded.metadata_props if p.key != "surgseg.weights_sha256"]
    del unrecorded.metadata_props[:]
    unrecorded.metadata_props.extend(kept)
    onnx.save(unrecorded, tmp_path / "old.onnx")
    create_engine("onnxruntime", model=other, meta=meta, onnx_path=tmp_path / "old.onnx")

    trt, _ = fake_tensorrt("10.3.0")
    run_tensorrt_on_cpu(monkeypatch, trt)
    with pytest.raises(ConfigError, match="exported from other weights"):
        _tensorrt((other, meta, fp16), tmp_path)


def test_torch_refuses_fp16_on_the_cpu_and_onnxruntime_negative_threads(fp16_export):
    model, meta, _ = fp16_export
    with pytest.raises(ConfigError, match=r"engine.precision=fp16 needs a CUDA device"):
        create_engine("torch", model=model, meta=meta, precision="fp16")
    for threads in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=r"engine.threads must be an integer ≥ 0"):
            create_engine("onnxruntime", model=model, meta=meta, threads=threads)


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """A ResNet-18 (2 classes, 64×80) and its fp16 surgseg ONNX export."""
    torch.manual_seed(0)
    meta = CheckpointMeta(
        task="binary",
        class_names=list(class_names("binary")),
        model={"depth": 18, "output_stride": 8, "head": "fcn", "aux_loss": False},
        input_size=(64, 80),
    )
    model = sharpen(meta.build())
    path = tmp_path_factory.mktemp("trt") / "m.fp16.onnx"
    return model, meta, export_onnx(model, path, meta=meta, precision="fp16")


def _tensorrt(fp16_export, cache_dir, **options):
    model, meta, path = fp16_export
    return create_engine("tensorrt", model=model, meta=meta, device="cuda", precision="fp16",
                         onnx_path=path, cache_dir=cache_dir, **options)  # fmt: skip


def _stand_in_logits(x: torch.Tensor, classes: int) -> torch.Tensor:
    """What the fake TensorRT network computes: class k is (k + 1) × the channel sum."""
    k = torch.arange(1, classes + 1, dtype=torch.float32).view(1, -1, 1, 1)
    return x.float().sum(1, keepdim=True) * k


@pytest.mark.parametrize("version", ["10.3.0", "11.4.1"])
def test_tensorrt_engine_end_to_end_on_a_fake_tensorrt(fp16_export, tmp_path, monkeypatch,
                                                       version):  # fmt: skip
    trt, record = fake_tensorrt(version)
    run_tensorrt_on_cpu(monkeypatch, trt)
    engine = _tensorrt(fp16_export, tmp_path)

    # Built strongly typed: the STRONGLY_TYPED bit on 10.x, no flag on 11.x; no precision flag
    # (the fake fails the build if one is set, and 11.x has none); TF32 cleared; the timing
    # cache set, strict about mismatches, and written back.
    strongly_typed = 0 if version.startswith("11.") else 1 << 1  # STRONGLY_TYPED is bit 1
    assert record.named("create_network") == [("create_network", strongly_typed)]
    assert record.named("set_flag") == [] and record.named("clear_flag") == [("clear_flag", "TF32")]
    assert record.named("set_timing_cache") == [("set_timing_cache", version, False)]
    tag = version.replace(".", "-")
    timing = tmp_path / f"timing-NVIDIA-Fake-GPU-trt{tag}.cache"
    assert timing.read_bytes() == FAKE_CACHE + f"{version}\n1".encode()
    plan = engine.engine.plan
    assert plan["strongly_typed"] and not plan["tf32"] and plan["dla_core"] is None
    assert plan["profiles"] == [{"image": [[1, 3, 64, 80], [1, 3, 64, 80], [8, 3, 64, 80]]}]
    assert engine.engine_path.is_file() and sidecar_path(engine.engine_path).is_file()

    # infer: an input 4 bytes off a 256-byte boundary is copied to an aligned one; the output
    # is fp16 like the graph's; the stand-in network's result comes back through the bound
    # addresses; execute_async_v3 gets the engine stream's handle.
    x = torch.randn(2 * 3 * 64 * 80 + 1)[1:].view(2, 3, 64, 80)
    assert x.data_ptr() % 256
    out = engine.infer(x)
    assert out.dtype == torch.float16 and out.shape == (2, 2, 64, 80)
    torch.testing.assert_close(out, _stand_in_logits(x, 2).half())
    bound = {name: address for _, name, address in record.named("set_tensor_address")}
    assert bound["image"] % 256 == 0 and bound["image"] != x.data_ptr()
    assert bound["logits"] == out.data_ptr() and out.data_ptr() % 256 == 0
    assert record.named("set_input_shape") == [("set_input_shape", "image", (2, 3, 64, 80), 0)]
    assert record.named("create_execution_context") == [("create_execution_context", "STATIC")]
    assert record.named("execute_async_v3") == [("execute_async_v3", CpuStream.HANDLE)]
    assert engine._stream.ordered_calls == [(bound["image"], bound["logits"])]

    again = _tensorrt(fp16_export, tmp_path)  # the cached plan is loaded, not built again
    assert len(record.named("build_serialized_network")) == 1
    torch.testing.assert_close(again.infer(x[:1]), _stand_in_logits(x[:1], 2).half())


def test_tensorrt_refusals_are_clear(fp16_export, tmp_path, monkeypatch, caplog):
    trt, record = fake_tensorrt("10.3.0")
    run_tensorrt_on_cpu(monkeypatch, trt)
    timing = tmp_path / "timing-NVIDIA-Fake-GPU-trt10-3-0.cache"
    timing.write_bytes(FAKE_CACHE + b"10.2.1\n7")  # left by another TensorRT
    with caplog.at_level(logging.WARNING, logger="surgseg.engines.tensorrt_engine"):
        engine = _tensorrt(fp16_export, tmp_path)
    assert "refused the timing cache" in caplog.text  # warned, then built with a new one
    assert [c[1] for c in record.named("set_timing_cache")] == ["10.2.1", "10.3.0"]
    assert timing.read_bytes() == FAKE_CACHE + b"10.3.0\n1"

    x = torch.zeros(1, 3, 64, 80)
    record.reject_shape = True
    with pytest.raises(ConfigError, match=r"TensorRT rejected input shape \[1, 3, 64, 80\] for "
                                          r"'image' \(profile 0: min"):  # fmt: skip
        engine.infer(x)
    record.reject_shape, record.reject_address = False, True
    with pytest.raises(RuntimeError, match=r"rejected the address 0x[0-9a-f]+ of tensor 'image' "
                                           r"\(it needs 256-byte alignment"):  # fmt: skip
        engine.infer(x)
    assert record.named("execute_async_v3") == []  # nothing ran with a rejected binding


def test_tensorrt_runs_other_sizes_on_profiles_of_their_own(fp16_export, tmp_path,
                                                            monkeypatch):  # fmt: skip
    trt, record = fake_tensorrt("10.3.0")
    run_tensorrt_on_cpu(monkeypatch, trt)
    crops = {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [6, 3, 32, 32]}
    engine = _tensorrt(fp16_export, tmp_path, extra_profiles=[crops])
    assert engine.engine.plan["profiles"] == [
        {"image": [[1, 3, 64, 80], [1, 3, 64, 80], [8, 3, 64, 80]]},
        {"image": [[1, 3, 32, 32], [4, 3, 32, 32], [6, 3, 32, 32]]},
    ]
    # A context per profile: the second selects profile 1 on the engine's stream, and
    # allocates memory for that profile alone.
    assert record.named("create_execution_context") == [
        ("create_execution_context", "STATIC"), ("create_execution_context", "ON_PROFILE_CHANGE")
    ]
    assert record.named("set_optimization_profile_async") == [
        ("set_optimization_profile_async", 1, CpuStream.HANDLE)
    ]
    assert (engine.max_batch((64, 80)), engine.max_batch((32, 32))) == (8, 6)
    assert engine.max_batch((160, 160)) == 0

    frames, crop = torch.randn(2, 3, 64, 80), torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(engine.infer(frames), _stand_in_logits(frames, 2).half())
    torch.testing.assert_close(engine.infer(crop), _stand_in_logits(crop, 2).half())
    assert [c[1:] for c in record.named("set_input_shape")] == [
        ("image", (2, 3, 64, 80), 0), ("image", (5, 3, 32, 32), 1)
    ]
    with pytest.raises(ConfigError, match=r"\[7, 3, 32, 32\] is outside the TensorRT engine's "
                                          r"profiles \(min \[1, 3, 64, 80\]"):  # fmt: skip
        engine.infer(torch.zeros(7, 3, 32, 32))

    # The profiles are part of the cache key: without the crops', another engine is built.
    _tensorrt(fp16_export, tmp_path)
    assert len(record.named("build_serialized_network")) == 2


def test_tip_crops_run_on_the_tensorrt_engines_crop_profile(fp16_export, tmp_path,
                                                            monkeypatch):  # fmt: skip
    """With ``cues.refine_tips`` the apps give a TensorRT engine the crops' profile; the
    crops then run on it (profile 1), the frames on the first."""
    from surgseg.apps.infer import engine_settings
    from surgseg.predictor import Predictor
    from surgseg.tip_refine import CROP_BATCH, INPUT, crop_predictor, crop_profile

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for refine, extra in (("true", [crop_profile()]), ("false", [])):
            cfg = compose("infer", overrides=["engine=tensorrt", f"cues.refine_tips={refine}"])
            assert engine_settings(cfg)[1]["extra_profiles"] == extra
        cfg = compose("infer", overrides=["engine=torch", "cues.refine_tips=true"])
        assert "extra_profiles" not in engine_settings(cfg)[1]

    trt, record = fake_tensorrt("11.4.1")
    run_tensorrt_on_cpu(monkeypatch, trt)
    _, meta, _ = fp16_export
    with pytest.raises(ConfigError, match="refine_tips needs an engine that runs 160×160"):
        crop_predictor(Predictor(_tensorrt(fp16_export, tmp_path), meta))
    engine = _tensorrt(fp16_export, tmp_path, extra_profiles=[crop_profile()])
    assert engine.max_batch((INPUT, INPUT)) == CROP_BATCH
    crops = crop_predictor(Predictor(engine, meta))
    record.calls.clear()
    rng = np.random.default_rng(0)
    Predictor(engine, meta).predict(list(rng.integers(0, 255, (2, 64, 80, 3), np.uint8)))
    crops.predict(list(rng.integers(0, 255, (3, 40, 40, 3), np.uint8)))
    assert [c[2:] for c in record.named("set_input_shape")] == [
        ((2, 3, 64, 80), 0), ((3, 3, INPUT, INPUT), 1)
    ]


def test_dla_needs_a_tensorrt_with_dla(fp16_export, tmp_path, monkeypatch):
    for version in ("10.0.1", "10.3.0", "10.7.0.23", "11.4.1", "11.5.0"):
        check_dla(version, 0)
    for version in ("10.8.0", "10.15.1", "11.0.0", "11.3.0", "11.4.0"):
        with pytest.raises(ConfigError) as info:
            check_dla(version, 0)
        message = str(info.value)
        assert "\n" not in message and f"TensorRT {version} has none" in message
        assert "10.0–10.7 (JetPack 6.1/6.2 ship 10.3) or ≥ 11.4.1" in message
    check_dla("11.0.0", None)  # no DLA asked for: nothing to refuse
    assert trt_release("10.3") == (10, 3, 0) and trt_release("11.4.1.9") == (11, 4, 1)

    trt, record = fake_tensorrt("10.3.0", dla_cores=2)  # Jetson AGX Orin, JetPack 6.x
    run_tensorrt_on_cpu(monkeypatch, trt)
    engine = _tensorrt(fp16_export, tmp_path / "jetson", dla_core=1)
    assert record.named("set_flag") == [("set_flag", "GPU_FALLBACK")]
    assert engine.engine.plan["dla_core"] == 1
    assert record.named("Runtime.DLA_core") == [("Runtime.DLA_core", 1)]

    trt, record = fake_tensorrt("11.2.0", dla_cores=2)
    run_tensorrt_on_cpu(monkeypatch, trt)
    with pytest.raises(ConfigError, match=r"TensorRT 11\.2\.0 has none"):
        _tensorrt(fp16_export, tmp_path / "trt11", dla_core=0)
    assert record.calls == []  # refused before anything was exported or built


def _bf16_conv_onnx(path: Path) -> Path:
    """A one-Conv bf16 graph at opset 22, as the bf16 export is."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.BFLOAT16, (2, 3, 1, 1), [0.5] * 6)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["x"], to=TensorProto.BFLOAT16),
            helper.make_node("Conv", ["x", "w"], ["logits"]),
        ],
        "bf16",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.BFLOAT16, ["N", 2, "H", "W"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_opset_beyond_what_the_parser_documents_is_said(tmp_path, monkeypatch, caplog):
    assert documented_opset((10, 3)) == 20 and documented_opset((10, 15)) == 24
    assert documented_opset((11, 2)) == 24 and documented_opset((11, 5)) == 25
    path = _bf16_conv_onnx(tmp_path / "bf16.onnx")
    profile = profile_shapes((1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8))
    warnings = {}
    for version in ("10.3.0", "10.15.1", "11.4.1"):
        trt, _ = fake_tensorrt(version)
        run_tensorrt_on_cpu(monkeypatch, trt)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="surgseg.engines.tensorrt_engine"):
            assert build_engine(path, profiles=[profile])
        warnings[version] = [r.getMessage() for r in caplog.records]
    assert warnings["10.15.1"] == warnings["11.4.1"] == []
    (line,) = warnings["10.3.0"]  # JetPack 6's TensorRT: one line saying what to do
    assert "is opset 22; TensorRT 10.3.0's ONNX parser is documented up to opset 20" in line
    assert "TensorRT ≥ 10.15" in line and "precision=fp16" in line


def test_a_bf16_export_below_opset_22_is_refused(fp16_export, tmp_path, monkeypatch):
    _, meta, fp16_path = fp16_export
    old = onnx.load(_bf16_conv_onnx(tmp_path / "old.onnx"))  # as an earlier version wrote it
    old.opset_import[0].version = 18
    for prop in onnx.load(fp16_path, load_external_data=False).metadata_props:
        value = '"bf16"' if prop.key == "surgseg.precision" else prop.value
        old.metadata_props.add(key=prop.key, value=value)
    onnx.save(old, tmp_path / "old.onnx")
    trt, record = fake_tensorrt("10.15.1")
    run_tensorrt_on_cpu(monkeypatch, trt)
    with pytest.raises(ConfigError, match=r"bf16 graph is opset 18, not valid ONNX .* opset 22"):
        create_engine("tensorrt", model=None, meta=meta, device="cuda", precision="bf16",
                      onnx_path=tmp_path / "old.onnx", cache_dir=tmp_path)  # fmt: skip
    assert record.calls == []


def test_the_fake_tensorrt_is_strict(monkeypatch):
    trt10, _ = fake_tensorrt("10.3.0")
    trt11, _ = fake_tensorrt("11.4.1")
    assert trt10.BuilderFlag.FP16 and trt10.BuilderFlag.TF32
    with pytest.raises(AttributeError):
        trt11.BuilderFlag.FP16  # removed in TensorRT 11  # noqa: B018
    config = trt11.Builder(trt11.Logger(trt11.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError):
        config.DLA_cores = 1  # a misspelled attribute
    with pytest.raises(TypeError):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatches=False)
    with pytest.raises(TypeError):
        config.set_memory_pool_limit("WORKSPACE", 1 << 30)
    with pytest.raises(AttributeError):
        trt11.Builder(trt11.Logger()).build_engine  # TensorRT 10 removed it  # noqa: B018


def test_tensor_addresses_are_256_byte_aligned():
    x = torch.arange(1 + 3 * 8 * 8, dtype=torch.float32)[1:].view(1, 3, 8, 8)
    assert x.data_ptr() % 256
    y = aligned(x)
    assert y.data_ptr() % 256 == 0 and torch.equal(x, y)
    assert aligned(y).data_ptr() == y.data_ptr()  # already aligned: no copy
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        out = aligned_empty((2, 4, 8, 8), dtype, torch.device("cpu"))
        assert out.data_ptr() % 256 == 0 and out.shape == (2, 4, 8, 8) and out.dtype == dtype
        assert out.is_contiguous()


def test_onnxruntime_tensorrt_provider_fp32_is_labelled_tf32(make_checkpoint, tmp_path):
    assert run_precision("fp32", ["tensorrt", "cuda", "cpu"]) == "tf32"  # no TF32 switch there
    assert run_precision("fp16", ["tensorrt", "cuda"]) == "fp16"
    assert run_precision("fp32", ["cuda", "cpu"]) == "fp32"  # use_tf32=0 on the CUDA provider
    model, meta = load_checkpoint(make_checkpoint())
    engine = create_engine("onnxruntime", model=model, meta=meta, threads=1,
                           cache_dir=tmp_path / "cache")  # fmt: skip
    assert (engine.name, engine.precision) == ("onnxruntime", "fp32")


def test_profile_validation():
    profile = profile_shapes([1, 3, 256, 320], [2, 3, 512, 640], [8, 3, 1024, 1280])
    assert profile == Profile((1, 3, 256, 320), (2, 3, 512, 640), (8, 3, 1024, 1280))
    assert profile.admits((8, 3, 1024, 1280)) and profile.admits((1, 3, 256, 320))
    assert not profile.admits((9, 3, 512, 640)) and not profile.admits((1, 3, 512))
    assert profile_for([profile, CROPS], (4, 3, 512, 640)) == 0
    assert profile_for([profile, CROPS], (20, 3, 160, 160)) == 1
    with pytest.raises(
        ConfigError, match=r"input shape \[9, 3, 512, 640\] is outside .* max \[8, 3, 1024, 1280\]"
    ):
        profile_for([profile], (9, 3, 512, 640))
    with pytest.raises(ConfigError, match=r"profiles \(min \[1, 3, 256, 320\].*; min \[1, 3, 160"):
        profile_for([profile, CROPS], (1, 3, 128, 640))
    with pytest.raises(ConfigError, match="min ≤ opt"):
        profile_shapes([1, 3, 512, 640], [1, 3, 256, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="opt ≤ max"):
        profile_shapes([1, 3, 256, 320], [16, 3, 512, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="C=3"):
        profile_shapes([1, 1, 256, 320], [1, 3, 512, 640], [8, 3, 1024, 1280])
    with pytest.raises(ConfigError, match="4 positive sizes"):
        profile_shapes([1, 3, 256], [1, 3, 512, 640], [8, 3, 1024, 1280])


def _reference(model, meta, x: torch.Tensor) -> torch.Tensor:
    with true_fp32():
        return create_engine("torch", model=model, meta=meta, device="cuda").infer(x)


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_tensorrt_matches_torch_fp32(make_checkpoint, tmp_path, precision):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability ≥ 8.0")
    ckpt = sharpen_checkpoint(make_checkpoint("parts"))
    model, meta = load_checkpoint(ckpt)
    calib = synthetic_frames(meta, [(64, 80)] * 4, batch=4, seed=1) if precision == "int8" else None
    options = dict(precision=precision, cache_dir=tmp_path, calibration_batches=calib)
    engine = create_engine("tensorrt", model=model, meta=meta, device="cuda", **options)
    x = synthetic_frames(meta, [(64, 80)], batch=4, seed=2)[0].cuda()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # the caller on a stream of its own: results still ordered
        out = engine.infer(x * 1)
        out = out.float().clone()
    torch.cuda.current_stream().wait_stream(side)
    assert out.device.type == "cuda" and out.shape == (4, 4, 64, 80)
    ref = _reference(model, meta, x)
    minimum = 0.98 if precision == "int8" else 0.995
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= minimum
    with pytest.raises(ConfigError, match="outside the TensorRT engine's profile"):
        engine.infer(torch.zeros(9, 3, 64, 80, device="cuda"))
    assert f".{precision}." in engine.engine_path.name
    built = engine.engine_path.stat().st_mtime_ns
    create_engine("tensorrt", model=model, meta=meta, device="cuda", **options)
    assert engine.engine_path.stat().st_mtime_ns == built  # cached engine reused
    assert list(tmp_path.glob("timing-*.cache"))


@pytest.mark.gpu
@needs_trt
def test_tensorrt_runs_the_tip_crops_on_their_profile(make_checkpoint, tmp_path):
    from surgseg.tip_refine import INPUT, crop_profile

    model, meta = load_checkpoint(sharpen_checkpoint(make_checkpoint("parts")))
    engine = create_engine("tensorrt", model=model, meta=meta, device="cuda", precision="fp32",
                           cache_dir=tmp_path, extra_profiles=[crop_profile()])  # fmt: skip
    for n, (h, w) in ((2, meta.input_size), (5, (INPUT, INPUT))):
        x = synthetic_frames(meta, [(h, w)], batch=n, seed=3)[0].cuda()
        out, ref = engine.infer(x).float(), _reference(model, meta, x)
        assert out.shape == (n, 4, h, w)
        assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.995


@pytest.mark.gpu
@needs_ort_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_matches_torch_fp32(make_checkpoint, tmp_path, precision):
    model, meta = load_checkpoint(sharpen_checkpoint(make_checkpoint("parts")))
    engine = create_engine(
        "onnxruntime", model=model, meta=meta, device="cuda", precision=precision,
        cache_dir=tmp_path,
    )  # fmt: skip
    x = synthetic_frames(meta, [(64, 80)], batch=3, seed=4)[0].cuda()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = engine.infer(x * 1).float().clone()
    torch.cuda.current_stream().wait_stream(side)
    ref = _reference(model, meta, x)
    assert out.shape == (3, 4, 64, 80)
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.995


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
