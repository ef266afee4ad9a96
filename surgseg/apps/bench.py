"""surgseg-bench: throughput of each stage alone and end to end; see conf/bench.yaml and
docs/streaming.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, cli_errors, dataclass_from
from surgseg.apps.infer import build_predictor
from surgseg.atomic import write_json
from surgseg.bench import bench, random_predictor, write_report
from surgseg.errors import ConfigError
from surgseg.infer import CueOptions
from surgseg.predictor import Predictor
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
    if cfg.checkpoint:
        return build_predictor(cfg)
    if not cfg.input_size:
        raise ConfigError("input_size is needed when no checkpoint is given")
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    return random_predictor(model=OmegaConf.to_container(cfg.model, resolve=True), task=cfg.task,
                            input_size=tuple(cfg.input_size), engine=engine.pop("name"),
                            device=cfg.device, seed=cfg.seed, **engine)  # fmt: skip


def run(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark one configuration into ``cfg.run_dir``/bench.json; rebuild the sweep's report."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    run_dir = Path(cfg.run_dir)
    result = bench(_video(cfg), predictor=_predictor(cfg), out_dir=run_dir,
                   batch_size=cfg.batch_size, max_frames=cfg.max_frames,
                   held_frames=cfg.held_frames, queue_size=cfg.queue_size, masks=cfg.masks,
                   overlay=cfg.overlay, cues=cues, flops=cfg.flops)  # fmt: skip
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
    slowest = result["slowest_stage"]
    print(
        f"surgseg-bench: end to end {result['end_to_end']['fps']} fps; slowest stage alone: "
        f"{slowest} {result['stages_alone'][slowest]['fps']} fps "
        f"(ratio {result['end_to_end_vs_slowest']}); {cfg.run_dir}/bench.json, "
        f"{cfg.output_dir}/bench.md"
    )


if __name__ == "__main__":
    main()
