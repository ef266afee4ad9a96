"""surgseg-bench: throughput of each stage alone and end to end; see conf/bench.yaml and
docs/streaming.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, cli_errors, dataclass_from
from surgseg.apps.infer import build_predictor
from surgseg.atomic import write_json
from surgseg.bench import StandInPredictor, bench, random_predictor, write_report
from surgseg.decode import read_frames
from surgseg.errors import ConfigError
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.predictor import Prediction, Predictor
from surgseg.synthetic import write_clip


def _video(cfg: DictConfig) -> Path:
    """``cfg.input``, or the synthetic clip described by ``cfg.clip`` (made once)."""
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
    if cfg.checkpoint:
        return build_predictor(cfg, task=None)
    if not cfg.input_size:
        raise ConfigError("input_size is needed when no checkpoint is given")
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    return random_predictor(model=OmegaConf.to_container(cfg.model, resolve=True), task=cfg.task,
                            input_size=tuple(cfg.input_size), engine=engine.pop("name"),
                            device=cfg.device, seed=cfg.seed, **engine)  # fmt: skip


def _standin(cfg: DictConfig, video: Path, model: Predictor) -> StandInPredictor:
    """A stand-in at ``cfg.standin_fps`` delivering the synthetic clip's ground truth, or
    for another video, ``model``'s predictions of its first ``held_frames`` frames."""
    task = model.meta.task
    truth = video.parent / "masks.npz"
    if not cfg.input and truth.is_file():
        with np.load(truth) as masks:
            labels = masks["types" if task == "types" else "parts"]
        if task == "binary":
            labels = (labels > 0).astype(np.uint8)
        confidence = np.full(labels.shape[1:], 230, np.uint8)
        predictions = [Prediction(m, confidence) for m in labels]
    else:
        frames = [f.image for _, f in zip(range(cfg.held_frames), read_frames(video),
                                          strict=False)]  # fmt: skip
        predictions = [p for i in range(0, len(frames), cfg.batch_size)
                       for p in model.predict(frames[i : i + cfg.batch_size])]  # fmt: skip
    return StandInPredictor(predictions, model.meta, fps=float(cfg.standin_fps))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark one configuration into ``cfg.run_dir``/bench.json; rebuild the sweep's report."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    outputs = dataclass_from(OutputOptions, cfg.outputs, "outputs")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    run_dir = Path(cfg.run_dir)
    video = _video(cfg)
    predictor = _predictor(cfg)
    if cfg.standin_fps is not None:
        predictor = _standin(cfg, video, predictor)
    result = bench(video, predictor=predictor, out_dir=run_dir, batch_size=cfg.batch_size,
                   max_frames=cfg.max_frames, held_frames=cfg.held_frames,
                   queue_size=cfg.queue_size, outputs=outputs, cues=cues, workers=workers,
                   flops=cfg.flops)  # fmt: skip
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
    main()
