"""ONNX export: ORT parity with PyTorch, dynamic shapes, metadata, INT8 Q/DQ, the app."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _engine_utils import sharpen, sharpen_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from surgseg.apps import CONF_DIR
from surgseg.apps.export import run
from surgseg.checkpoint import CheckpointMeta
from surgseg.errors import ConfigError
from surgseg.export import (
    check_onnx,
    export_onnx,
    quantize_onnx,
    read_onnx_meta,
    synthetic_frames,
)
from surgseg.tasks import class_names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, CheckpointMeta, Path]:
    torch.manual_seed(0)
    meta = CheckpointMeta(
        task="parts",
        class_names=list(class_names("parts")),
        model={"depth": 18, "output_stride": 8, "head": "fcn", "aux_loss": False},
        input_size=(64, 80),
        provenance={"made_by": "tests"},
    )
    model = sharpen(meta.build())
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", meta=meta)
    return model, meta, path


def test_ort_matches_torch_at_two_sizes(exported):
    model, meta, path = exported
    frames = synthetic_frames(meta, [(64, 80), (96, 120)], batch=2)
    report = check_onnx(path, model, frames)
    assert [b["shape"] for b in report["batches"]] == [[2, 3, 64, 80], [2, 3, 96, 120]]
    assert report["agreement"] >= 0.995
    assert report["max_abs_diff"] < 1e-3
    # The same check fails for a different network: it can tell models apart.
    other = sharpen(copy.deepcopy(model))
    torch.nn.init.normal_(other.classifier[-1].weight)
    assert check_onnx(path, other, frames)["agreement"] < 0.9


def test_dynamic_batch_and_size(exported):
    model, _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.randn(3, 3, 48, 56)
    out = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x)["out"].numpy()
    assert out.shape == (3, 4, 48, 56)
    assert np.abs(out - ref).max() < 1e-3


def test_metadata_round_trip(exported):
    _, meta, path = exported
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    assert {"surgseg.task", "surgseg.class_names", "surgseg.mean", "surgseg.std"} <= set(props)
    assert onnx.load(path).opset_import[0].version >= 17
    assert read_onnx_meta(path) == (meta, "fp32")


def test_fp16_export_runs_on_ort(exported, tmp_path):
    model, meta, _ = exported
    path = export_onnx(model, tmp_path / "h.onnx", meta=meta, precision="fp16")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float16)"
    assert read_onnx_meta(path)[1] == "fp16"
    report = check_onnx(path, model, synthetic_frames(meta, [(64, 80)], batch=2))
    assert report["agreement"] >= 0.995
    assert model.classifier[-1].weight.dtype == torch.float32  # the caller's model is untouched


def test_int8_qdq_is_symmetric_and_cached(exported, tmp_path):
    model, meta, path = exported
    calib = [b.numpy() for b in synthetic_frames(meta, [(64, 80)] * 4, batch=2, seed=1)]
    cache = tmp_path / "calibration.json"
    qdq = quantize_onnx(
        path, tmp_path / "q.onnx", batches=calib, method="minmax", calibration_cache=cache
    )
    proto = onnx.load(qdq)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    zero_points = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    zps = [zero_points[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric INT8, as TensorRT needs
    assert cache.is_file()
    report = check_onnx(qdq, model, synthetic_frames(meta, [(64, 80)], batch=2, seed=2))
    assert report["agreement"] >= 0.95
    again = quantize_onnx(
        path, tmp_path / "q2.onnx", batches=None, method="minmax", calibration_cache=cache
    )
    assert again.read_bytes() == qdq.read_bytes()
    with pytest.raises(ConfigError, match="calibration"):
        quantize_onnx(
            path, tmp_path / "q3.onnx", batches=None, calibration_cache=tmp_path / "none.json"
        )
    with pytest.raises(ConfigError, match="method"):
        quantize_onnx(path, tmp_path / "q3.onnx", batches=calib, method="magic")


def test_export_rejects_bad_settings(exported, tmp_path):
    model, meta, _ = exported
    with pytest.raises(ConfigError, match="precision"):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, precision="int4")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, opset=13)
    assert not any(tmp_path.iterdir())


def _compose(**overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="export")
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg[key] = value
    return cfg


def test_export_app(make_checkpoint, tmp_path):
    ckpt = sharpen_checkpoint(make_checkpoint("binary"))
    out = tmp_path / "exports"
    report = run(_compose(checkpoint=str(ckpt), output_dir=str(out)))
    assert report["passed"] and report["agreement"] >= 0.995
    assert [b["shape"] for b in report["batches"]] == [[2, 3, 64, 80], [2, 3, 96, 120]]
    assert sorted(p.name for p in out.iterdir()) == ["binary.json", "binary.onnx"]
    meta, precision = read_onnx_meta(out / "binary.onnx")
    assert meta.task == "binary" and precision == "fp32"


def test_export_app_fails_cleanly(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("binary")
    with pytest.raises(ConfigError, match="precision"):
        run(_compose(checkpoint=str(ckpt), output_dir=str(tmp_path / "o"), precision="fp8"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
