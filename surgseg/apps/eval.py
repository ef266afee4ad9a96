"""surgseg-eval: measure a checkpoint on a labelled dataset; see conf/eval.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from surgseg.apps import CONF_DIR, check_bool, check_int, claim_output_dir, cli_errors, launch
from surgseg.apps.infer import build_predictor
from surgseg.errors import ConfigError

if TYPE_CHECKING:
    from surgseg.predictor import Predictor


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data``; write the report into ``cfg.output_dir``
    (checked, and locked, before the work starts)."""
    from surgseg.datasets import build_dataset, preflight
    from surgseg.evaluate import evaluate, write_report

    batch_size = check_int(cfg, "batch_size", minimum=1)
    progress = check_bool(cfg, "progress")
    predictor = build_predictor(cfg, task=cfg.task)
    by_video = None if cfg.fold_checkpoints is None else _fold_predictors(cfg, predictor)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.split is not None:
        data["split"] = cfg.split
    dataset = build_dataset(data.pop("kind"), task=predictor.meta.task, **data)
    if check_bool(cfg, "preflight"):
        preflight(dataset)
    out_dir = claim_output_dir(cfg.output_dir)  # before the evaluation, not after it
    results = evaluate(
        predictor if by_video is None else by_video,
        dataset,
        batch_size=batch_size,
        submission_dir=out_dir / "submission" if check_bool(cfg, "submission") else None,
        progress=progress,
    )
    results["checkpoint"] = str(Path(cfg.checkpoint).resolve())
    if cfg.fold_checkpoints is not None:
        results["fold_checkpoints"] = [str(Path(p).resolve()) for p in cfg.fold_checkpoints]
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_report(results, out_dir)
    return results


def _fold_predictors(cfg: DictConfig, default: Predictor) -> dict[str, Predictor]:
    """``{video: predictor}``: each EndoVis 2017 video of fold k's validation set by the
    checkpoint ``cfg.fold_checkpoints[k]``, videos 9 and 10 by ``default``."""
    from surgseg.datasets import ENDOVIS2017_FOLDS

    paths = cfg.fold_checkpoints
    if not isinstance(paths, ListConfig) or len(paths) != len(ENDOVIS2017_FOLDS):
        raise ConfigError(
            f"fold_checkpoints must list {len(ENDOVIS2017_FOLDS)} checkpoints (folds "
            f"{', '.join(map(str, ENDOVIS2017_FOLDS))}), got {paths!r}"
        )
    predictors = {f"instrument_dataset_{v}": default for v in range(1, 11)}
    for fold, path in enumerate(paths):
        one = OmegaConf.merge(cfg, {"checkpoint": str(path)})
        fold_predictor = build_predictor(one, task=default.meta.task)
        for video in ENDOVIS2017_FOLDS[fold]:
            predictors[f"instrument_dataset_{video}"] = fold_predictor
    return predictors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@cli_errors("surgseg-eval")
def main(cfg: DictConfig) -> None:
    results = run(cfg)
    scores = ", ".join(
        f"{key} {value:.4f}"
        for key in ("challenge_iou", "frame_iou", "miou")
        if (value := results["overall"][key]) is not None
    )
    print(
        f"surgseg-eval: {results['frames']} frames, {scores} → "
        f"{Path(cfg.output_dir) / 'metrics.md'}"
    )


if __name__ == "__main__":
    launch("eval")
