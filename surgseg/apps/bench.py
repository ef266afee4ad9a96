"""surgseg-bench: throughput of each stage alone and end to end; see conf/bench.yaml and
docs/streaming.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from surgseg.apps.infer import build_predictor, engine_settings
from surgseg.errors import ConfigError, VideoError
from surgseg.options import CueOptions, OutputOptions, Workers

if TYPE_CHECKING:
    from surgseg.bench import StandInPredictor
    from surgseg.predictor import Predictor


def _positive(cfg: DictConfig, key: str) -> float:
    """``cfg[key]`` as a positive number, or a ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    """The run's plain settings, every one checked before any work is done."""

    batch_size: int
    held_frames: int
    queue_size: int
    max_frames: int | None
    torch_threads: int | None
    standin_fps: float | None
    flops: bool
    cues: CueOptions
    outputs: OutputOptions
    workers: Workers


def check_settings(cfg: DictConfig) -> Settings:
    """Check every setting of ``cfg`` (a ConfigError names the first bad one) before anything
    is made: no run folder, no synthetic clip, no model."""
    from surgseg.tasks import class_names

    check_device(cfg)
    if not cfg.checkpoint:  # a checkpoint brings its own task, checked as it is loaded
        class_names(cfg.task)
    if check_input_size(cfg) is None and not cfg.checkpoint:
        raise ConfigError("input_size is needed when no checkpoint is given")
    if cfg.input:
        if not Path(cfg.input).is_file():
            raise VideoError("no such file", cfg.input)
    else:
        for key in ("clip.frames", "clip.width", "clip.height"):
            check_int(cfg, key, minimum=1)
        check_int(cfg, "clip.seed", minimum=0)
        _positive(cfg, "clip.fps")
        if cfg.clip.width % 2 or cfg.clip.height % 2:
            raise ConfigError(f"clip.width and clip.height must be even (H.264), got "
                              f"{cfg.clip.width}×{cfg.clip.height}")  # fmt: skip
    optional = {
        key: None if OmegaConf.select(cfg, key) is None else check_int(cfg, key, minimum=1)
        for key in ("max_frames", "torch_threads")
    }
    return Settings(
        batch_size=check_int(cfg, "batch_size", minimum=1),
        held_frames=check_int(cfg, "held_frames", minimum=1),
        queue_size=check_int(cfg, "queue_size", minimum=1),
        max_frames=optional["max_frames"],
        torch_threads=optional["torch_threads"],
        standin_fps=None if cfg.standin_fps is None else _positive(cfg, "standin_fps"),
        flops=check_bool(cfg, "flops"),
        cues=_cues(cfg),
        outputs=dataclass_from(OutputOptions, cfg.outputs, "outputs"),
        workers=dataclass_from(Workers, cfg.workers, "workers"),
    )  # fmt: skip


def _cues(cfg: DictConfig) -> CueOptions:
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    if cues.refine_tips and cfg.standin_fps is not None:  # its crops need the model itself
        raise ConfigError("cues.refine_tips needs the model: it cannot run with standin_fps")
    return cues


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
    engine, options = engine_settings(cfg)
    return random_predictor(model=OmegaConf.to_container(cfg.model, resolve=True), task=cfg.task,
                            input_size=size, engine=engine, device=check_device(cfg),
                            seed=cfg.seed, **options)  # fmt: skip


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
    return StandInPredictor(predictions, model.meta, fps=_positive(cfg, "standin_fps"))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark one configuration into ``cfg.run_dir``/bench.json; rebuild the sweep's report.
    Every setting is checked first: a mistake leaves no folder, clip or model behind."""
    import torch

    from surgseg.atomic import write_json
    from surgseg.bench import bench, write_report

    settings = check_settings(cfg)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    predictor = _predictor(cfg)  # a bad checkpoint is one line, before any folder is made
    if settings.cues.refine_tips:
        from surgseg.tip_refine import check_engine

        check_engine(predictor)
    if cfg.input:
        from surgseg.decode import probe

        probe(cfg.input)  # so is a file that is not a video
    claim_output_dir(cfg.output_dir)  # bench.md and bench.png are rebuilt there
    claim_output_dir(cfg.run_dir, key="run_dir")
    run_dir = Path(cfg.run_dir)
    video = _video(cfg)
    if settings.standin_fps is not None:
        predictor = _standin(cfg, video, predictor)
    result = bench(video, predictor=predictor, out_dir=run_dir, batch_size=settings.batch_size,
                   max_frames=settings.max_frames, held_frames=settings.held_frames,
                   queue_size=settings.queue_size, outputs=settings.outputs,
                   cues=settings.cues, workers=settings.workers,
                   flops=settings.flops)  # fmt: skip
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
        f"{Path(cfg.run_dir).resolve() / 'bench.json'}, "
        f"{Path(cfg.output_dir).resolve() / 'bench.md'}"
    )


if __name__ == "__main__":
    launch("bench")
