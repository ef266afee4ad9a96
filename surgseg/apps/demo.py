"""surgseg-demo: generate synthetic surgeries, train a small model, process a held-out clip
and write a report; see conf/demo.yaml.

The delivered model is ``model.pt`` (weights and metadata, from the best validation epoch);
``train/last.pt`` keeps the training state, to continue with ``surgseg-train ... resume=true``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, check_device, cli_errors, dataclass_from, launch
from surgseg.apps import infer as infer_app
from surgseg.apps import train as train_app
from surgseg.demo import evaluate_run, format_number, save_overlay_still, write_report
from surgseg.infer import process_video
from surgseg.options import CueOptions, OutputOptions
from surgseg.synthetic import load_clip, write_clip

# Seeds of the held-out and validation clips; training clips use 1, 2, 3, …
HELDOUT_SEED, VAL_SEED = 1000, 2000


def _say(step: str) -> None:
    print(f"surgseg-demo: {step}", flush=True)


def _val_names(cfg: DictConfig) -> list[str]:
    return [f"val_{i:02d}" for i in range(cfg.val_clips)]


def make_clips(cfg: DictConfig, data: Path) -> tuple[Path, Path]:
    """Write the training, validation and held-out clips; return (clips root, held-out clip)."""
    gen = OmegaConf.to_container(cfg.clips, resolve=True)
    gen.pop("seed")
    clips = data / "clips"
    jobs = [(clips / f"train_{i:02d}", i + 1, cfg.frames_per_clip) for i in range(cfg.train_clips)]
    jobs += [
        (clips / name, VAL_SEED + i, cfg.frames_per_clip) for i, name in enumerate(_val_names(cfg))
    ]
    jobs += [(data / "heldout", HELDOUT_SEED, cfg.heldout_frames)]
    for folder, seed, frames in jobs:
        if not (folder / "clip.json").exists():
            # crossing and touching instruments in the training clips only (train_crossings)
            train = {"crossings": cfg.train_crossings} if folder.name.startswith("train_") else {}
            write_clip(folder, **{**gen, "num_frames": frames, "seed": seed, **train})
    return clips, data / "heldout"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the demo into ``cfg.output_dir``; return the evaluation figures."""
    check_device(cfg)  # before any data is generated
    out = Path(cfg.output_dir).resolve()
    _say(f"[1/4] generating synthetic surgeries in {out / 'data'}")
    clips, heldout = make_clips(cfg, out / "data")

    _say(f"[2/4] training {cfg.model} ({cfg.task}) on {cfg.train_clips} clips")
    size = f"[{cfg.input_size[0]},{cfg.input_size[1]}]"
    crop = f"[{cfg.crop_size[0]},{cfg.crop_size[1]}]"
    train_cfg = compose(
        "train",
        overrides=[
            "+experiment=synthetic_resnet18",
            f"model={cfg.model}",
            f"task={cfg.task}",
            f"data.root={clips}",
            f"data.val_videos=[{','.join(_val_names(cfg))}]",
            f"output_dir={out / 'train'}",
            f"input_size={size}",
            f"crop_size={crop}",
            f"device={cfg.device}",
            f"seed={cfg.seed}",
            f"progress={cfg.progress}",
            f"epochs={cfg.epochs}",
            f"batch_size={cfg.batch_size}",
            f"max_steps={'null' if cfg.max_steps is None else cfg.max_steps}",
        ],
    )
    started = time.perf_counter()
    trained = train_app.run(train_cfg)
    train_time = time.perf_counter() - started
    checkpoint = out / "model.pt"
    os.replace(trained["best"], checkpoint)  # one delivered model file, not a copy

    _say("[3/4] processing the held-out clip")
    infer_cfg = compose(
        "infer",
        overrides=[
            f"input={heldout / 'video.mp4'}",
            f"checkpoint={checkpoint}",
            f"output_dir={out}",
            f"device={cfg.device}",
            f"progress={cfg.progress}",
            f"outputs.masks={cfg.masks}",
        ],
    )
    cues = dataclass_from(CueOptions, infer_cfg.cues, "cues")
    outputs = dataclass_from(OutputOptions, infer_cfg.outputs, "outputs")
    run_record = process_video(
        heldout / "video.mp4",
        predictor=infer_app.build_predictor(infer_cfg, task=infer_cfg.task),
        out_dir=out / "heldout",
        outputs=outputs,
        cues=cues,
        batch_size=infer_cfg.batch_size,
        progress=cfg.progress,
        record={"checkpoint": str(checkpoint), "config": OmegaConf.to_container(infer_cfg)},
    )

    _say("[4/4] scoring against ground truth")
    clip = load_clip(heldout)
    result = evaluate_run(out / "heldout", clip, task=cfg.task, cues=cues)
    pictures = [("training curves", "train/curves.png")]
    if outputs.overlay:
        save_overlay_still(
            out / "heldout" / "overlay.mp4", out / "overlay_frame.png", index=len(clip) // 2
        )
        pictures.insert(0, ("held-out frame with masks, axes and tips", "overlay_frame.png"))
    write_report(
        out / "report.md",
        result,
        context={
            "model": f"dilated {cfg.model}, output stride {train_cfg.model.output_stride}",
            "train_time_s": train_time,
            "device": cfg.device,
            "frame_size": f"{clip.meta['width']}×{clip.meta['height']}",
            "infer_fps": run_record["fps"],
            "pictures": pictures,
            "train_steps": trained["steps"],
        },
    )
    _say(f"report: {out / 'report.md'}")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="demo")
@cli_errors("surgseg-demo")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    binary = result["binary"]
    cues = result.get("cues_written", {}).get("raw") or result["cues_from_model"]
    print(
        f"surgseg-demo: binary IoU {binary['iou'][1]:.3f}; cues written by the run: "
        f"tip error median {format_number(cues['tip_px_median'])} px, "
        f"axis error median {format_number(cues['axis_deg_median'])}°"
    )


if __name__ == "__main__":
    launch("demo")
