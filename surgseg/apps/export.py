"""surgseg-export: checkpoint → ONNX, checked on ONNX Runtime against PyTorch.

    surgseg-export checkpoint=runs/binary/best.pt output_dir=exports

writes ``exports/best.onnx`` and ``exports/best.json`` (max |Δlogits| and argmax agreement on
synthetic frames at two sizes, against PyTorch FP32 with TF32 off). The ONNX file is only put in
place if the check passes. A bf16 export is written at opset ≥ 22 (bfloat16 ``Conv`` is valid ONNX
only from there; ``opset`` in the report is the one written) and, as ONNX Runtime's CPU provider
cannot run bfloat16 convolutions, with the check skipped and the reason in the report.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from surgseg.apps import CONF_DIR, claim_output_dir, cli_errors, launch
from surgseg.atomic import naming, write_json
from surgseg.checkpoint import load_checkpoint
from surgseg.errors import ConfigError
from surgseg.export import (
    BF16_PARITY_SKIPPED,
    check_onnx,
    export_onnx,
    export_opset,
    synthetic_frames,
)


def run(cfg: DictConfig) -> dict:
    """Export ``cfg.checkpoint``, check it and write the ONNX file and its JSON report."""
    if str(cfg.device) != "cpu":  # tracing and the ONNX Runtime check run on the CPU
        raise ConfigError(f"device={cfg.device}: surgseg-export runs on the CPU only (the export "
                          "and its ONNX Runtime check); leave device out")  # fmt: skip
    checkpoint = Path(cfg.checkpoint)
    model, meta = load_checkpoint(checkpoint)
    out_dir = claim_output_dir(cfg.output_dir)
    name = cfg.name or checkpoint.stem
    onnx_path, report_path = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    h, w = meta.input_size
    sizes = (
        [tuple(s) for s in cfg.check.sizes]
        if cfg.check.sizes
        else [(h, w), (h * 3 // 2, w * 3 // 2)]
    )

    staging = out_dir / f".{name}.checking.onnx"
    try:
        with naming(onnx_path, staging):  # a full disk names the file asked for
            export_onnx(
                model,
                staging,
                meta=meta,
                opset=int(cfg.opset),
                dynamic=bool(cfg.dynamic),
                precision=str(cfg.precision),
            )
        common = dict(
            checkpoint=str(checkpoint),
            onnx=str(onnx_path),
            opset=export_opset(int(cfg.opset), str(cfg.precision)),
            precision=str(cfg.precision),
            onnx_checker="passed (full_check)",
            reference="torch fp32, TF32 off",
        )
        if cfg.precision == "bf16":
            report = {**common, "parity": BF16_PARITY_SKIPPED, "passed": None}
        else:
            frames = synthetic_frames(meta, sizes, batch=int(cfg.check.batch), seed=int(cfg.seed))
            report = {**check_onnx(staging, model, frames), **common}
            report["min_agreement"] = float(cfg.check.min_agreement)
            report["passed"] = report["agreement"] >= report["min_agreement"]
        write_json(report_path, report)
        if report["passed"] is False:
            raise ConfigError(
                f"ONNX Runtime agrees with PyTorch on only {report['agreement']:.4%} of pixels "
                f"(< {report['min_agreement']:.2%}); report in {report_path}",
                checkpoint,
            )
        staging.replace(onnx_path)
    finally:
        staging.unlink(missing_ok=True)
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
