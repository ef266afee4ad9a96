"""surgseg-eval: measure a checkpoint on a labelled dataset; see conf/eval.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, check_bool, check_int, claim_output_dir, cli_errors, launch
from surgseg.apps.infer import build_predictor


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data``; write the report into ``cfg.output_dir``
    (checked, and locked, before the work starts)."""
    from surgseg.datasets import build_dataset, preflight
    from surgseg.evaluate import evaluate, write_report

    batch_size = check_int(cfg, "batch_size", minimum=1)
    progress = check_bool(cfg, "progress")
    predictor = build_predictor(cfg, task=cfg.task)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.split is not None:
        data["split"] = cfg.split
    dataset = build_dataset(data.pop("kind"), task=predictor.meta.task, **data)
    if check_bool(cfg, "preflight"):
        preflight(dataset)
    out_dir = claim_output_dir(cfg.output_dir)  # before the evaluation, not after it
    results = evaluate(
        predictor,
        dataset,
        batch_size=batch_size,
        submission_dir=out_dir / "submission" if check_bool(cfg, "submission") else None,
        progress=progress,
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
    launch("eval")
