"""surgseg-bench: throughput of each stage alone and end to end; see conf/bench.yaml and
docs/streaming.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import (
    CONF_DIR,
    check_device,
    check_input_size,
    check_int,
    claim_output_dir,
    cli_errors,
    dataclass_from,
    launch,
)
from surgseg.apps.infer import build_predictor
from surgseg.errors import ConfigError
from surgseg.options import CueOptions, OutputOptions, Workers

if TYPE_CHECKING:
    from surgseg.bench import StandInPredictor
    from surgseg.predictor import Predictor


def _video(cfg: DictConfig) -> Path:
    """``cfg.input``, or the synthetic clip described by ``cfg.clip`` (made once)."""
    from surgseg.synthetic import write_clip

    if cfg.input:
        return Path(cfg.input)
    c = cfg.clip
    name = f"{c.width}x{c.height}_{c.frames}f_{c.fps}fps_s{c.seed}"
    folder = Path(cfg.output_dir) / "clips" / name
    if not (folder / "clip.json").is_file():  # clip.json is written last
        write_clip(folder, num_frames=c.frames, width=c.width, height=c.height, fps=c.fps,
                   seed=c.seed)  # fmt: skip
    return folder / "video.mp4"


def _predictor(cfg: DictConfig) -> Predictor:
    """The checkpoint's predictor (its own task), or the ``model`` config's with random
    weights."""
    from surgseg.bench import random_predictor

    if cfg.checkpoint:
        return build_predictor(cfg, task=None)
    size = check_input_size(cfg)
    if size is None:
        raise ConfigError("input_size is needed when no checkpoint is given")
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    return random_predictor(model=OmegaConf.to_container(cfg.model, resolve=True), task=cfg.task,
                            input_size=size, engine=engine.pop("name"), device=check_device(cfg),
                            seed=cfg.seed, **engine)  # fmt: skip


def _standin(cfg: DictConfig, video: Path, model: Predictor) -> StandInPredictor:
    """A stand-in at ``cfg.standin_fps`` delivering the synthetic clip's ground truth, or
    for another video, ``model``'s predictions of its first ``held_frames`` frames."""
    from surgseg.bench import StandInPredictor, clip_predictions
    from surgseg.decode import read_frames

    if not cfg.input and (video.parent / "masks.npz").is_file():
        predictions = clip_predictions(video.parent, model.meta.task)
    else:
        frames = [f.image for _, f in zip(range(cfg.held_frames), read_frames(video),
                                          strict=False)]  # fmt: skip
        predictions = [p for i in range(0, len(frames), cfg.batch_size)
                       for p in model.predict(frames[i : i + cfg.batch_size])]  # fmt: skip
    fps = cfg.standin_fps
    if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
        raise ConfigError(f"standin_fps must be a positive number of frames per second, got "
                          f"{fps!r}")  # fmt: skip
    return StandInPredictor(predictions, model.meta, fps=float(fps))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark one configuration into ``cfg.run_dir``/bench.json; rebuild the sweep's report."""
    import torch

    from surgseg.atomic import write_json
    from surgseg.bench import bench, write_report

    if cfg.torch_threads:
        torch.set_num_threads(check_int(cfg, "torch_threads", minimum=1))
    claim_output_dir(cfg.run_dir, key="run_dir")
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    outputs = dataclass_from(OutputOptions, cfg.outputs, "outputs")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    run_dir = Path(cfg.run_dir)
    video = _video(cfg)
    predictor = _predictor(cfg)
    if cfg.standin_fps is not None:
        predictor = _standin(cfg, video, predictor)
    max_frames = None if cfg.max_frames is None else check_int(cfg, "max_frames", minimum=1)
    result = bench(video, predictor=predictor, out_dir=run_dir,
                   batch_size=check_int(cfg, "batch_size", minimum=1), max_frames=max_frames,
                   held_frames=check_int(cfg, "held_frames", minimum=1),
                   queue_size=check_int(cfg, "queue_size", minimum=1), outputs=outputs,
                   cues=cues, workers=workers, flops=cfg.flops)  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    result["config"] = config
    write_json(run_dir / "bench.json", result)
    write_report(cfg.output_dir)
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
@cli_errors("surgseg-bench")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    bound = result["bound"]
    print(
        f"surgseg-bench: end to end {result['end_to_end']['fps']} fps; bound {bound['fps']} fps "
        f"({bound['limited_by']}; ratio {result['end_to_end_vs_bound']}); "
        f"{cfg.run_dir}/bench.json, {cfg.output_dir}/bench.md"
    )


if __name__ == "__main__":
    launch("bench")
