"""ONNX export: ORT parity with PyTorch, dynamic shapes, metadata, the app; INT8 Q/DQ for
TensorRT (placement, types, calibration, caches)."""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _engine_utils import sharpen, sharpen_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import surgseg.apps.export as export_app
from surgseg.apps import CONF_DIR
from surgseg.apps.export import run, summary
from surgseg.checkpoint import CheckpointMeta
from surgseg.errors import ConfigError, DatasetError
from surgseg.export import (
    BF16_OPSET,
    check_onnx,
    export_onnx,
    read_onnx_meta,
    synthetic_frames,
    true_fp32,
)
from surgseg.preprocess import Preprocess
from surgseg.quantize import (
    FP16_MAX,
    HIST_BINS,
    _AbsHistogram,
    _scale,
    _warn_ranges,
    cached_int8_onnx,
    calibration_files,
    calibration_frames,
    quantize_onnx,
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


def test_bf16_export_is_valid_onnx(exported, tmp_path):
    model, meta, _ = exported
    path = export_onnx(model, tmp_path / "b.onnx", meta=meta, precision="bf16", opset=18)
    proto = onnx.load(path)
    # bfloat16 Conv is valid ONNX only from opset 22: an opset-18 bf16 graph fails this check.
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == BF16_OPSET == 22
    types = {i.data_type for i in proto.graph.initializer if i.dims}
    assert onnx.TensorProto.BFLOAT16 in types and onnx.TensorProto.FLOAT not in types
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_onnx_meta(path)[1] == "bf16"


def _graph_facts(proto: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """(initializers by name, producing node by tensor, consumers by tensor)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {out: n for n in proto.graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    return inits, producer, consumers


def test_int8_qdq_is_what_tensorrt_builds(exported, tmp_path):
    model, meta, path = exported
    calib = [b.numpy() for b in synthetic_frames(meta, [(64, 80)] * 3, batch=2, seed=1)]
    cache = tmp_path / "calibration.json"
    qdq = quantize_onnx(path, tmp_path / "q.onnx", frames=calib, method="minmax",
                        calibration_cache=cache)  # fmt: skip
    proto = onnx.load(qdq)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 19  # fp16 Q/DQ scales
    inits, producer, _ = _graph_facts(proto)
    dtype = onnx.TensorProto

    # TensorRT's DequantizeLinear takes INT8 only: no INT32 (quantized bias) inputs anywhere.
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    for dq in dqs:
        source = inits.get(dq.input[0])
        q = producer.get(dq.input[0])
        assert (source is not None and source.data_type == dtype.INT8) or (
            q is not None and q.op_type == "QuantizeLinear"
        ), dq.name
        assert inits[dq.input[1]].data_type == dtype.FLOAT16  # scales: the fp16 output type
        zero = onnx.numpy_helper.to_array(inits[dq.input[2]])
        assert zero.dtype == np.int8 and not zero.any()  # symmetric
    for q in (n for n in proto.graph.node if n.op_type == "QuantizeLinear"):
        assert onnx.numpy_helper.to_array(inits[q.input[2]]).dtype == np.int8

    # The logits: Resize ← the last Conv, unquantized, with fp16 weights and bias.
    output = proto.graph.output[0]
    assert output.type.tensor_type.elem_type == dtype.FLOAT16
    resize = producer[output.name]
    assert resize.op_type == "Resize"
    logits_conv = producer[resize.input[0]]
    assert logits_conv.op_type == "Conv"
    assert all(inits[t].data_type == dtype.FLOAT16 for t in logits_conv.input[1:])
    assert producer[logits_conv.input[0]].op_type == "Relu"

    # Every other Conv: INT8 activation and per-channel INT8 weights, float bias.
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n is not logits_conv]
    assert len(convs) == 21
    for conv in convs:
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        weight_dq = producer[conv.input[1]]
        (axis,) = [a.i for a in weight_dq.attribute if a.name == "axis"]
        weights = onnx.numpy_helper.to_array(inits[weight_dq.input[0]])
        assert axis == 0 and weights.dtype == np.int8 and weights.min() >= -127
        assert len(onnx.numpy_helper.to_array(inits[weight_dq.input[1]])) == len(weights)
        if len(conv.input) > 2:
            assert inits[conv.input[2]].data_type == dtype.FLOAT16

    # Residual Adds: the input not coming straight from a Conv is quantized (TensorRT fuses
    # the Conv into the Add); with Convs on both sides, exactly one.
    for add in (n for n in proto.graph.node if n.op_type == "Add"):
        sources = [producer[t].op_type for t in add.input]
        assert sources.count("DequantizeLinear") == 1, sources
        assert "Conv" in sources

    report = check_onnx(qdq, model, synthetic_frames(meta, [(64, 80)], batch=2, seed=2))
    assert report["agreement"] >= 0.95
    assert read_onnx_meta(qdq)[1] == "int8"

    again = quantize_onnx(path, tmp_path / "q2.onnx", frames=None, method="minmax",
                          calibration_cache=cache)  # fmt: skip
    assert again.read_bytes() == qdq.read_bytes()  # the calibration cache alone suffices
    with pytest.raises(ConfigError, match="calibration frames"):
        quantize_onnx(path, tmp_path / "q3.onnx", frames=None, method="entropy",
                      calibration_cache=cache)  # fmt: skip
    with pytest.raises(ConfigError, match="method"):
        quantize_onnx(path, tmp_path / "q3.onnx", frames=calib, method="magic")
    assert not (tmp_path / "q3.onnx").exists()


def test_calibration_thresholds_on_known_distributions():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=1_000_000).astype(np.float32)
    relu = np.maximum(normal, 0)
    hist = _AbsHistogram()
    hist.add(normal[:500_000] * 0.5)  # a narrower first frame: later bins are added
    hist.add(normal[500_000:])
    magnitudes = np.abs(np.concatenate([normal[:500_000] * 0.5, normal[500_000:]]))
    assert hist.threshold("minmax") == magnitudes.max()
    width = hist.width * -(-hist.counts.size // 2048)
    assert abs(hist.threshold("percentile") - np.percentile(magnitudes, 99.99)) <= width
    for x in (normal, relu):  # entropy keeps nearly all of a Gaussian, zeros or not
        one = _AbsHistogram()
        one.add(x)
        amax = one.threshold("entropy")
        assert 3.5 < amax < np.abs(x).max() and (np.abs(x) > amax).mean() < 1e-4


def test_calibration_histogram_keeps_its_bin_count_whatever_the_range():
    rng = np.random.default_rng(1)
    hist, seen = _AbsHistogram(), []
    for scale in (1e-3, 0.7, 40.0, 3e4, 2e7):  # each frame far past the range so far
        x = (rng.normal(size=20_000) * scale).astype(np.float32)
        hist.add(x)
        seen.append(np.abs(x))
        assert hist.counts.size == HIST_BINS  # merged, never grown
        assert hist.width * HIST_BINS >= np.abs(x).max()
    magnitudes = np.concatenate(seen)
    assert hist.counts.sum() == magnitudes.size  # merging loses no count
    assert hist.threshold("minmax") == magnitudes.max()
    assert abs(hist.threshold("percentile") - np.percentile(magnitudes, 99.99)) <= hist.width
    assert 0 < hist.threshold("entropy") <= magnitudes.max()


def test_int8_scales_stay_within_fp16_and_say_when_they_cannot_follow(caplog):
    notes: dict[str, list[str]] = defaultdict(list)
    amax = np.array([0.0, 1e-4, 1.0, 1e6])
    scale = _scale(amax, "w", notes)
    assert scale.dtype == np.float16 and (scale > 0).all()  # TensorRT needs scales > 0
    assert np.isfinite(scale.astype(np.float32) * np.float16(127)).all()  # 127·s is finite
    assert scale[2] == np.float16(1 / 127)
    assert notes == {"tiny": ["w"], "over": ["w"]}  # the all-zero channel is not counted
    with caplog.at_level(logging.WARNING, logger="surgseg.quantize"):
        _warn_ranges(notes)
    over, tiny = (r.getMessage() for r in caplog.records)
    assert "exceed fp16's maximum 65504" in over and "saturate" in over
    assert "1 range(s)" in tiny and "fewer than 127 levels" in tiny


def test_int8_range_beyond_fp16_is_capped_with_a_warning(exported, tmp_path, caplog):
    _, meta, path = exported
    calib = [b.numpy() for b in synthetic_frames(meta, [(64, 80)], batch=2, seed=1)]
    cache = tmp_path / "calibration.json"
    quantize_onnx(path, tmp_path / "q.onnx", frames=calib, method="minmax",
                  calibration_cache=cache)  # fmt: skip
    stored = json.loads(cache.read_text())
    tensor = sorted(stored["amax"])[0]
    stored["amax"][tensor] = 1e6  # an activation fp16 cannot hold
    cache.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="surgseg.quantize"):
        qdq = quantize_onnx(path, tmp_path / "q2.onnx", frames=None, method="minmax",
                            calibration_cache=cache)  # fmt: skip
    assert f"exceed fp16's maximum {FP16_MAX:g}" in caplog.text and tensor in caplog.text
    inits = {i.name: i for i in onnx.load(qdq).graph.initializer}
    scale = onnx.numpy_helper.to_array(inits[f"{tensor}.scale"])
    assert np.isfinite(np.float16(127) * scale)  # dequantized values saturate, never inf


def test_calibration_frames_are_prepared_like_inference(tmp_path):
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "b.png"), image[..., ::-1])  # RGB on disk
    cv2.imwrite(str(tmp_path / "a.png"), image)
    (tmp_path / "notes.txt").write_text("not an image")
    files = calibration_files(tmp_path, limit=1)
    assert [f.name for f in files] == ["a.png"]
    geometry = Preprocess((64, 80), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (frame,) = calibration_frames(calibration_files(tmp_path)[1:], geometry)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(64, 80), mode="bilinear", align_corners=False)
    mean = torch.tensor(geometry.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(geometry.std).view(1, 3, 1, 1) * 255
    np.testing.assert_allclose(frame, ((x - mean) / std).numpy(), atol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \.png/\.jpg"):
        calibration_files(tmp_path / "empty")


def test_int8_cache_is_keyed_on_source_method_and_frames(exported, tmp_path):
    _, meta, path = exported
    calib = [b.numpy() for b in synthetic_frames(meta, [(64, 80)] * 2, batch=2, seed=1)]
    first = cached_int8_onnx(path, tmp_path, method="minmax", frames=calib)
    built = first.stat().st_mtime_ns
    assert cached_int8_onnx(path, tmp_path, method="minmax", frames=calib) == first
    assert first.stat().st_mtime_ns == built  # reused, not quantized again
    other_method = cached_int8_onnx(path, tmp_path, method="percentile", frames=calib)
    other_frames = cached_int8_onnx(path, tmp_path, method="minmax", frames=calib[:1])
    assert len({first, other_method, other_frames}) == 3
    assert len(list(tmp_path.glob("m.calibration-*.json"))) == 3
    with pytest.raises(ConfigError, match=r"calibration\.folder"):
        cached_int8_onnx(path, tmp_path, method="minmax")


def test_true_fp32_turns_tf32_off_and_restores_it():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with true_fp32():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_export_rejects_bad_settings(exported, tmp_path):
    model, meta, _ = exported
    with pytest.raises(ConfigError, match="precision"):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, precision="int4")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, opset=13)
    # Past the installed onnx's newest opset, torch would write opset 18 and say nothing.
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ConfigError, match=rf"^opset must be an integer from 18 .* to {newest} "):
        export_onnx(model, tmp_path / "x.onnx", meta=meta, opset=newest + 1)
    assert not any(tmp_path.iterdir())


def _compose(*command_line, **overrides):
    """conf/export.yaml with ``command_line`` (``key=value`` strings, parsed as on the command
    line) and ``overrides`` (Python values) applied."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="export", overrides=list(command_line))
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg[key] = value
    return cfg


def test_export_app(make_checkpoint, tmp_path):
    ckpt = sharpen_checkpoint(make_checkpoint("binary"))
    out = tmp_path / "exports"
    out.mkdir()
    (out / "binary.failed.json").write_text("{}")  # an earlier export's failed check
    report = run(_compose(checkpoint=str(ckpt), output_dir=str(out)))
    assert report["passed"] and report["agreement"] >= 0.995
    assert [b["shape"] for b in report["batches"]] == [[2, 3, 64, 80], [2, 3, 96, 120]]
    assert sorted(p.name for p in out.iterdir()) == ["binary.json", "binary.onnx"]
    meta, precision = read_onnx_meta(out / "binary.onnx")
    assert meta.task == "binary" and precision == "fp32"


def test_bf16_export_skips_parity_with_a_stated_reason(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("binary")
    out = tmp_path / "exports"
    report = run(_compose(checkpoint=str(ckpt), output_dir=str(out), precision="bf16"))
    assert report["passed"] is None and "no bfloat16 convolution" in report["parity"]
    assert report["opset"] == 22 and report["onnx_checker"] == "passed (full_check)"
    assert sorted(p.name for p in out.iterdir()) == ["binary.json", "binary.onnx"]
    assert read_onnx_meta(out / "binary.onnx")[1] == "bf16"
    onnx.checker.check_model(onnx.load(out / "binary.onnx"), full_check=True)
    line = summary(report)
    assert "\n" not in line and "opset 22, valid ONNX" in line and "parity check skipped" in line


def test_export_app_fails_cleanly(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("binary")
    with pytest.raises(ConfigError, match="precision"):
        run(_compose(checkpoint=str(ckpt), output_dir=str(tmp_path / "o"), precision="fp8"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("name", ["../escape", "sub/model", "..", ".", ""])
def test_export_name_must_be_a_plain_file_name(make_checkpoint, tmp_path, name):
    ckpt = make_checkpoint("binary")
    out = tmp_path / "out" / "exports"
    with pytest.raises(ConfigError, match=r"^name must be .*a plain file name"):
        run(_compose(checkpoint=str(ckpt), output_dir=str(out), name=name))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["binary.pt"]  # no folder, no file


def _refused_before_anything(tmp_path, match, *command_line):
    """``command_line`` is refused with ``match`` before the checkpoint (which does not even
    exist) is read or the output folder made."""
    cfg = _compose(f"checkpoint={tmp_path / 'absent.pt'}", f"output_dir={tmp_path / 'o'}",
                   *command_line)  # fmt: skip
    with pytest.raises(ConfigError, match=match) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("opset=11", r"^opset must be an integer from 18 .*got 11$"),
        ("precision=fp8", r"^precision must be one of fp32, fp16, bf16, got 'fp8'$"),
    ],
)
def test_export_opset_and_precision_are_refused_before_the_folder(tmp_path, setting, match):
    _refused_before_anything(tmp_path, match, setting)


@pytest.mark.parametrize("value", ["5", "0", "-0.5", "1.5", "nan", "true", "high"])
def test_export_min_agreement_is_a_fraction(tmp_path, value):
    _refused_before_anything(
        tmp_path,
        r"^check\.min_agreement must be a fraction .*0 < x ≤ 1",
        f"check.min_agreement={value}",
    )


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        (
            "[[10,10]]",
            r"^check\.sizes\[0\] must be \[height, width\], each at least 32 and a multiple "
            r"of 8, got \[10, 10\]$",
        ),
        ("[[64,80],[100,120]]", r"^check\.sizes\[1\] must be .*multiple of 8, got \[100, 120\]$"),
        ("[[64,80,3]]", r"^check\.sizes\[0\] must be \[height, width\]"),
        ("[64,80]", r"^check\.sizes must be null or a list of \[height, width\]"),
        ("[]", r"^check\.sizes must be null or a list of \[height, width\]"),
        ("64", r"^check\.sizes must be null or a list of \[height, width\]"),
    ],
)
def test_export_check_sizes_are_input_sizes_inference_takes(tmp_path, sizes, match):
    _refused_before_anything(tmp_path, match, f"check.sizes={sizes}")


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("opset=99", r"^opset must be an integer from 18 \(the dynamo exporter\) to \d+ .*got 99$"),
        ("opset=abc", r"^opset must be an integer"),
        ("dynamic=no", r"^dynamic must be true or false, got 'no'$"),
        ("check.batch=0", r"^check\.batch must be an integer ≥ 1, got 0$"),
        ("seed=-1", r"^seed must be an integer ≥ 0, got -1$"),
        ("device=cuda", r"^device=cuda: surgseg-export runs on the CPU only"),
    ],
)
def test_export_other_settings_are_refused_before_the_folder(tmp_path, setting, match):
    _refused_before_anything(tmp_path, match, setting)


def test_export_long_name_is_refused_before_the_folder(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("binary")
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match=r"^name is too long .*240 bytes"):
        run(_compose(checkpoint=str(ckpt), output_dir=str(out), name="a" * 240))
    assert not out.exists()


def test_export_failed_parity_leaves_no_finished_files(make_checkpoint, tmp_path, monkeypatch):
    ckpt = make_checkpoint("binary")
    out = tmp_path / "exports"
    poor = {"max_abs_diff": 3.0, "agreement": 0.5, "batches": []}
    monkeypatch.setattr(export_app, "check_onnx", lambda path, model, frames: poor)
    with pytest.raises(ConfigError, match=r"agrees with PyTorch on only 50\.0000% .*< 99\.50%"):
        run(_compose(checkpoint=str(ckpt), output_dir=str(out)))
    # Neither file under its final name: only the report, under a name that says it failed
    # (test_export_app: a later export that passes removes it).
    assert sorted(p.name for p in out.iterdir()) == ["binary.failed.json"]
    failed = json.loads((out / "binary.failed.json").read_text())
    assert failed["passed"] is False and failed["onnx"] is None


def test_static_export_is_checked_at_its_own_shape(make_checkpoint, tmp_path):
    ckpt = sharpen_checkpoint(make_checkpoint("binary"))
    out = tmp_path / "static"
    with pytest.raises(
        ConfigError, match=r"^check\.batch: a dynamic=false export is fixed at batch 2"
    ):
        run(_compose("dynamic=false", "check.batch=4", checkpoint=str(ckpt), output_dir=str(out)))
    with pytest.raises(
        ConfigError, match=r"^check\.sizes: a dynamic=false export takes only .*64, 80"
    ):
        run(_compose("dynamic=false", "check.sizes=[[96,120]]", checkpoint=str(ckpt),
                     output_dir=str(out)))  # fmt: skip
    assert not out.exists()
    report = run(_compose("dynamic=false", checkpoint=str(ckpt), output_dir=str(out)))
    assert report["passed"] and [b["shape"] for b in report["batches"]] == [[2, 3, 64, 80]]
    graph_input = onnx.load(out / "binary.onnx").graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in graph_input.dim] == [2, 3, 64, 80]


def test_export_without_onnxruntime_is_one_line_before_the_folder(tmp_path, monkeypatch):
    find_spec = export_app.importlib.util.find_spec

    def without_ort(name, *args):
        return None if name == "onnxruntime" else find_spec(name, *args)

    monkeypatch.setattr(export_app.importlib.util, "find_spec", without_ort)
    _refused_before_anything(tmp_path, r"^surgseg-export needs the package\(s\) onnxruntime: pip")


@pytest.mark.parametrize(
    ("name", "stem"),
    [("model.onnx", "model"), ("model.ONNX", "model"), ("v1.2.onnx", "v1.2"), ("model", "model"),
     ("model.onnx.onnx", "model.onnx")],
)  # fmt: skip
def test_export_name_ending_in_onnx_means_that_file(tmp_path, name, stem):
    """``name=model.onnx`` writes model.onnx (and model.json), not model.onnx.onnx."""
    cfg = _compose(f"checkpoint={tmp_path / 'absent.pt'}", f"output_dir={tmp_path / 'o'}",
                   name=name)  # fmt: skip
    assert export_app.check_settings(cfg).name == stem


def test_export_name_of_only_the_suffix_is_refused(tmp_path):
    _refused_before_anything(tmp_path, r"^name must be .*a plain file name.*got '\.onnx'$",
                             "name=.onnx")  # fmt: skip


def test_export_help_says_it_runs_on_the_cpu_only():
    from surgseg.apps import app_help

    text = app_help("surgseg-export", "export")
    assert "device: cpu         # the CPU only: the export and its ONNX Runtime check" in text
    assert text.count("\n  device: ") == 1  # not again among the settings of every app
