"""surgseg-export: checkpoint → ONNX, checked on ONNX Runtime against PyTorch.

    surgseg-export checkpoint=runs/binary/best.pt output_dir=exports

writes ``exports/best.onnx`` and ``exports/best.json`` (max |Δlogits| and argmax agreement on
synthetic frames at two sizes, against PyTorch FP32 with TF32 off). Both are put in place only
if the check passes; when it fails, the report is kept as ``exports/best.failed.json`` and
nothing else. Every setting is checked, and the checkpoint read, before the output folder is
made. A bf16 export is written at opset ≥ 22 (bfloat16 ``Conv`` is valid ONNX only from there;
``opset`` in the report is the one written) and, as ONNX Runtime's CPU provider cannot run
bfloat16 convolutions, with the check skipped and the reason in the report.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from surgseg.apps import CONF_DIR, check_bool, check_int, claim_output_dir, cli_errors, launch
from surgseg.atomic import naming, write_json
from surgseg.checkpoint import load_checkpoint
from surgseg.errors import ConfigError
from surgseg.export import (
    BF16_PARITY_SKIPPED,
    EXAMPLE_BATCH,
    check_onnx,
    check_opset,
    check_precision,
    export_onnx,
    export_opset,
    synthetic_frames,
)
from surgseg.preprocess import check_input_size

# The longest name: the files made from it (``.<name>.checking.partial-<pid>.onnx``, 32 bytes
# more at most) must fit the 255 bytes of a file name.
MAX_NAME_BYTES = 200
REQUIRES = ("onnx", "onnxscript", "onnxruntime")  # the exporter and the parity check


@dataclass(frozen=True)
class Settings:
    """The export's plain settings, every one checked before anything is read or made."""

    name: str | None
    opset: int
    dynamic: bool
    precision: str
    sizes: list[tuple[int, int]] | None
    batch: int
    min_agreement: float
    seed: int


def _check_name(value: Any) -> str | None:
    """``name``: null (the checkpoint's file name) or a plain file name, which can only land
    inside output_dir. A trailing ``.onnx`` (any case) names the ONNX file itself and is
    dropped: ``name=model.onnx`` writes model.onnx and model.json, not model.onnx.onnx."""
    if value is None:
        return None
    name = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(name, str) and name.lower().endswith(".onnx"):
        name = name[: -len(".onnx")]
    if (not isinstance(name, str) or name in ("", ".", "..")
            or any(c in name for c in ("/", "\\", "\0"))):  # fmt: skip
        raise ConfigError(f"name must be null (the checkpoint's file name) or a plain file name, "
                          f"without a folder, got {value!r}")  # fmt: skip
    return name


def _check_name_length(name: str, given: bool) -> None:
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        what = "name" if given else "name: the checkpoint's file name"
        raise ConfigError(f"{what} is too long to name the export ({size} bytes; at most "
                          f"{MAX_NAME_BYTES}): give a shorter name=...")  # fmt: skip


def _check_sizes(value: Any) -> list[tuple[int, int]] | None:
    """``check.sizes``: null or a non-empty list of [height, width], each an input size that
    inference takes (``preprocess.check_input_size``)."""
    if value is None:
        return None
    if (
        not isinstance(value, ListConfig)
        or not value
        or not all(isinstance(size, ListConfig) for size in value)
    ):
        raise ConfigError("check.sizes must be null or a list of [height, width], e.g. "
                          f"[[256, 320], [384, 480]], got {_plain(value)!r}")  # fmt: skip
    return [check_input_size(list(size), key=f"check.sizes[{i}]") for i, size in enumerate(value)]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, ListConfig | DictConfig) else value


def check_settings(cfg: DictConfig) -> Settings:
    """Check every setting of ``cfg`` (a ConfigError names the first bad one) before the
    checkpoint is read or anything is made."""
    if str(cfg.device) != "cpu":  # tracing and the ONNX Runtime check run on the CPU
        raise ConfigError(f"device={cfg.device}: surgseg-export runs on the CPU only (the export "
                          "and its ONNX Runtime check); leave device out")  # fmt: skip
    absent = [m for m in REQUIRES if importlib.util.find_spec(m) is None]
    if absent:
        raise ConfigError(f"surgseg-export needs the package(s) {', '.join(absent)}: "
                          "pip install 'surgseg[onnx]'")  # fmt: skip
    agreement = OmegaConf.select(cfg, "check.min_agreement")
    if (isinstance(agreement, bool) or not isinstance(agreement, int | float)
            or not math.isfinite(agreement) or not 0 < agreement <= 1):  # fmt: skip
        raise ConfigError("check.min_agreement must be a fraction of pixels, 0 < x ≤ 1 "
                          f"(0.995: 99.5 %), got {agreement!r}")  # fmt: skip
    return Settings(
        name=_check_name(cfg.name),
        opset=check_opset(cfg.opset, key="opset"),
        dynamic=check_bool(cfg, "dynamic"),
        precision=check_precision(cfg.precision, key="precision"),
        sizes=_check_sizes(cfg.check.sizes),
        batch=check_int(cfg, "check.batch", minimum=1),
        min_agreement=float(agreement),
        seed=check_int(cfg, "seed", minimum=0),
    )


def _check_sizes_for(settings: Settings, input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes of the parity check: ``check.sizes``, or the input size and 1.5× it; a static
    export (dynamic=false) takes only its own shape, so it is checked at that."""
    h, w = input_size
    if settings.dynamic:
        return settings.sizes or [(h, w), (h * 3 // 2, w * 3 // 2)]
    if settings.sizes and any(size != (h, w) for size in settings.sizes):
        given = [list(size) for size in settings.sizes]
        raise ConfigError(f"check.sizes: a dynamic=false export takes only the checkpoint's "
                          f"input size [{h}, {w}], got {given}")  # fmt: skip
    if settings.batch != EXAMPLE_BATCH:
        raise ConfigError(f"check.batch: a dynamic=false export is fixed at batch "
                          f"{EXAMPLE_BATCH}, got {settings.batch}")  # fmt: skip
    return [(h, w)]


def run(cfg: DictConfig) -> dict:
    """Export ``cfg.checkpoint``, check it and write the ONNX file and its JSON report."""
    settings = check_settings(cfg)
    checkpoint = Path(str(cfg.checkpoint))
    model, meta = load_checkpoint(checkpoint)
    name = settings.name or checkpoint.stem
    _check_name_length(name, settings.name is not None)
    sizes = _check_sizes_for(settings, meta.input_size)
    # Only now, with the command line found good, is the output folder made.
    out_dir = claim_output_dir(str(cfg.output_dir))
    onnx_path, report_path = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    failed_path = out_dir / f"{name}.failed.json"
    staging = out_dir / f".{name}.checking.onnx"
    staging_report = out_dir / f".{name}.checking.json"
    try:
        with naming(onnx_path, staging):  # a full disk names the file asked for
            export_onnx(
                model,
                staging,
                meta=meta,
                opset=settings.opset,
                dynamic=settings.dynamic,
                precision=settings.precision,
            )
        common = dict(
            checkpoint=str(checkpoint),
            onnx=str(onnx_path),
            opset=export_opset(settings.opset, settings.precision),
            precision=settings.precision,
            onnx_checker="passed (full_check)",
            reference="torch fp32, TF32 off",
        )
        if settings.precision == "bf16":
            report = {**common, "parity": BF16_PARITY_SKIPPED, "passed": None}
        else:
            frames = synthetic_frames(meta, sizes, batch=settings.batch, seed=settings.seed)
            report = {**check_onnx(staging, model, frames), **common}
            report["min_agreement"] = settings.min_agreement
            report["passed"] = report["agreement"] >= report["min_agreement"]
        if report["passed"] is False:
            # Kept under a name that says so; the ONNX file is dropped.
            write_json(failed_path, {**report, "onnx": None})
            raise ConfigError(
                f"ONNX Runtime agrees with PyTorch on only {report['agreement']:.4%} of pixels "
                f"(< {report['min_agreement']:.2%}; max |Δlogits| "
                f"{report['max_abs_diff']:.2e}); nothing exported, report in {failed_path}",
                checkpoint,
            )
        # The report is written in full first; then two renames put both in place.
        with naming(report_path, staging_report):
            write_json(staging_report, report)
        os.replace(staging, onnx_path)
        os.replace(staging_report, report_path)
        failed_path.unlink(missing_ok=True)  # an earlier run's failure, now superseded
    finally:
        staging.unlink(missing_ok=True)
        staging_report.unlink(missing_ok=True)
    return report


def summary(report: dict) -> str:
    """The one console line for ``report``."""
    if report["passed"] is None:
        return (
            f"{report['onnx']}: written (opset {report['opset']}, valid ONNX), "
            f"parity check {report['parity']}"
        )
    return (
        f"{report['onnx']}: max |Δlogits| {report['max_abs_diff']:.2e}, "
        f"argmax agreement {report['agreement']:.4%}"
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@cli_errors("surgseg-export")
def main(cfg: DictConfig) -> None:
    print(summary(run(cfg)))


if __name__ == "__main__":
    launch("export")
