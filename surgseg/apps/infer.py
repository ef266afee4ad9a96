"""surgseg-infer: segment recorded surgeries; see conf/infer.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, cli_errors, dataclass_from
from surgseg.infer import InferSummary, process_inputs
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.predictor import Predictor


def build_predictor(cfg: DictConfig, *, task: str | None) -> Predictor:
    """The predictor named by ``cfg.checkpoint``, ``cfg.engine`` and ``cfg.device``; with a
    ``task``, the checkpoint must have been trained for it."""
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    size = tuple(cfg.input_size) if cfg.input_size else None
    return Predictor.from_checkpoint(
        cfg.checkpoint,
        engine=engine.pop("name"),
        device=cfg.device,
        task=task,
        input_size=size,
        **engine,
    )


def run(cfg: DictConfig) -> InferSummary:
    """Process ``cfg.input`` into ``cfg.output_dir``."""
    outputs = dataclass_from(OutputOptions, cfg.outputs, "outputs")
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    predictor = build_predictor(cfg, task=cfg.task)
    record = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    return process_inputs(
        cfg.input,
        predictor=predictor,
        output_dir=Path(cfg.output_dir),
        outputs=outputs,
        cues=cues,
        batch_size=cfg.batch_size,
        workers=workers,
        progress=cfg.progress,
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
    main()
