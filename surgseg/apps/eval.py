"""surgseg-eval: measure a checkpoint on a labelled dataset; see conf/eval.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, cli_errors
from surgseg.datasets import build_dataset, preflight
from surgseg.evaluate import evaluate, write_report
from surgseg.predictor import Predictor


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data``; write the report into ``cfg.output_dir``."""
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    predictor = Predictor.from_checkpoint(
        cfg.checkpoint,
        engine=engine.pop("name"),
        device=cfg.device,
        task=cfg.task,
        input_size=tuple(cfg.input_size) if cfg.input_size else None,
        **engine,
    )
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.split is not None:
        data["split"] = cfg.split
    dataset = build_dataset(data.pop("kind"), task=predictor.meta.task, **data)
    if cfg.preflight:
        preflight(dataset)
    out_dir = Path(cfg.output_dir)
    results = evaluate(
        predictor,
        dataset,
        batch_size=cfg.batch_size,
        submission_dir=out_dir / "submission" if cfg.submission else None,
        progress=cfg.progress,
    )
    results["checkpoint"] = str(Path(cfg.checkpoint).resolve())
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_report(results, out_dir)
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@cli_errors("surgseg-eval")
def main(cfg: DictConfig) -> None:
    results = run(cfg)
    scores = ", ".join(
        f"{key} {value:.4f}"
        for key in ("frame_iou", "miou")
        if (value := results["overall"][key]) is not None
    )
    print(
        f"surgseg-eval: {results['frames']} frames, {scores} → "
        f"{Path(cfg.output_dir) / 'metrics.md'}"
    )


if __name__ == "__main__":
    main()
