"""surgseg-infer: segment recorded surgeries; see conf/infer.yaml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import (
    CONF_DIR,
    check_bool,
    check_device,
    check_input_size,
    check_int,
    claim_output_dir,
    cli_errors,
    dataclass_from,
    launch,
)
from surgseg.options import CueOptions, OutputOptions, Workers

if TYPE_CHECKING:
    from surgseg.infer import InferSummary
    from surgseg.predictor import Predictor


def build_predictor(cfg: DictConfig, *, task: str | None) -> Predictor:
    """The predictor named by ``cfg.checkpoint``, ``cfg.engine`` and ``cfg.device``; with a
    ``task``, the checkpoint must have been trained for it."""
    from surgseg.predictor import Predictor

    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    return Predictor.from_checkpoint(
        cfg.checkpoint,
        engine=engine.pop("name"),
        device=check_device(cfg),
        task=task,
        input_size=check_input_size(cfg),
        **engine,
    )


def run(cfg: DictConfig) -> InferSummary:
    """Process ``cfg.input`` into ``cfg.output_dir``."""
    from surgseg.infer import process_inputs

    outputs = dataclass_from(OutputOptions, cfg.outputs, "outputs")
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    batch_size = check_int(cfg, "batch_size", minimum=1)
    progress = check_bool(cfg, "progress")
    predictor = build_predictor(cfg, task=cfg.task)
    output_dir = claim_output_dir(cfg.output_dir)
    record = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    return process_inputs(
        cfg.input,
        predictor=predictor,
        output_dir=output_dir,
        outputs=outputs,
        cues=cues,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        record=record,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="infer")
@cli_errors("surgseg-infer")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    print(f"surgseg-infer: {len(summary.done)} video(s) done in {cfg.output_dir}")
    if summary.failed:
        print(f"surgseg-infer: {len(summary.failed)} video(s) failed:", file=sys.stderr)
        for _, reason in summary.failed:
            print(f"  {reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    launch("infer")
