"""surgseg-demo: generate synthetic surgeries, train a small model, process a held-out clip
and write a report; see conf/demo.yaml.

The delivered model is ``model.pt`` (weights and metadata, from the best validation epoch);
``train/last.pt`` keeps the training state, to continue with ``surgseg-train ... resume=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from omegaconf import DictConfig, ListConfig, OmegaConf

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
from surgseg.apps import infer as infer_app
from surgseg.apps import train as train_app
from surgseg.demo import evaluate_run, format_number, save_overlay_still, write_report
from surgseg.errors import ConfigError
from surgseg.infer import process_video
from surgseg.options import MASK_FORMATS, CueOptions, OutputOptions
from surgseg.synthetic import CLIP_FILE, check_clip_settings, load_clip, write_clip
from surgseg.tasks import TASKS

# Seeds of the held-out and validation clips; training clips use 1, 2, 3, …
HELDOUT_SEED, VAL_SEED = 1000, 2000


def _say(step: str) -> None:
    print(f"surgseg-demo: {step}", flush=True)


def _train_names(cfg: DictConfig) -> list[str]:
    return [f"train_{i:02d}" for i in range(cfg.train_clips)]


def _val_names(cfg: DictConfig) -> list[str]:
    return [f"val_{i:02d}" for i in range(cfg.val_clips)]


def check_settings(cfg: DictConfig) -> None:
    """Refuse a nonsense demo setting with one line naming it, before any data is made."""
    for key in ("train_clips", "val_clips", "frames_per_clip", "heldout_frames"):
        check_int(cfg, key, minimum=1)
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got {cfg.task!r}")
    if check_input_size(cfg) is None:
        raise ConfigError("input_size must be [height, width], got null")
    crossings = cfg.train_crossings
    if isinstance(crossings, bool) or not isinstance(crossings, int | float) \
            or not 0 <= crossings <= 1:  # fmt: skip
        raise ConfigError(f"train_crossings must be a number from 0 to 1, got {crossings!r}")
    if cfg.masks not in MASK_FORMATS:  # the scoring reads the masks back
        raise ConfigError(f"masks must be one of {MASK_FORMATS}, got {cfg.masks!r}")
    check_bool(cfg, "refine_tips")
    # The generator's own checks, named clips.<key>: a bad one would otherwise stop the demo
    # only at the clip that uses it, with clips written before it.
    check_clip_settings(OmegaConf.to_container(cfg.clips, resolve=True), prefix="clips.")


def _is_clip(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished clip made with ``settings`` (write_clip's)."""
    try:
        meta = json.loads((folder / CLIP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(key) == value for key, value in settings.items() if value is not None)


def make_clips(cfg: DictConfig, data: Path) -> tuple[Path, Path]:
    """Write the training, validation and held-out clips; return (clips root, held-out clip).
    A clip an earlier run made with the same settings is kept; one made otherwise is made
    again."""
    gen = OmegaConf.to_container(cfg.clips, resolve=True)
    gen.pop("seed")
    clips = data / "clips"
    jobs = [(clips / name, i + 1, cfg.frames_per_clip) for i, name in enumerate(_train_names(cfg))]
    jobs += [
        (clips / name, VAL_SEED + i, cfg.frames_per_clip) for i, name in enumerate(_val_names(cfg))
    ]
    jobs += [(data / "heldout", HELDOUT_SEED, cfg.heldout_frames)]
    for folder, seed, frames in jobs:
        # crossing and touching instruments in the training clips only (train_crossings)
        train = {"crossings": cfg.train_crossings} if folder.name.startswith("train_") else {}
        settings = {**gen, "num_frames": frames, "seed": seed, **train}
        if not _is_clip(folder, settings):
            (folder / CLIP_FILE).unlink(missing_ok=True)  # unfinished until written again
            write_clip(folder, **settings)
    return clips, data / "heldout"


def _override(value: Any) -> str:
    """``value`` as the right-hand side of a Hydra override (``[256,320]``, ``null``)."""
    plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    return json.dumps(plain, separators=(",", ":"))


def _replace_folder(new: Path, old: Path) -> None:
    """Put folder ``new`` in the place of ``old`` (which may be missing)."""
    if old.exists():
        stale = old.with_name(f".{old.name}.stale-{os.getpid()}")
        os.replace(old, stale)
        shutil.rmtree(stale)
    os.replace(new, old)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the demo into ``cfg.output_dir``; return the evaluation figures."""
    check_settings(cfg)
    check_device(cfg)  # before any data is generated
    out = Path(cfg.output_dir).resolve()
    # Trained into a new folder that replaces train/ once done: a second demo in the same
    # output folder trains afresh, and a killed one leaves no train/ that looks finished.
    partial = out / f".train.partial-{os.getpid()}"
    train_cfg = compose(
        "train",
        overrides=[
            "+experiment=synthetic_resnet18",
            f"task={cfg.task}",
            f"data.root={out / 'data' / 'clips'}",
            f"data.videos=[{','.join(_train_names(cfg) + _val_names(cfg))}]",
            f"data.val_videos=[{','.join(_val_names(cfg))}]",
            f"output_dir={partial}",
            f"input_size={_override(cfg.input_size)}",
            f"crop_size={_override(cfg.crop_size)}",
            f"device={cfg.device}",
            f"seed={cfg.seed}",
            f"progress={cfg.progress}",
            f"epochs={cfg.epochs}",
            f"batch_size={cfg.batch_size}",
            f"max_steps={_override(cfg.max_steps)}",
        ],
    )
    train_cfg.model = cfg.model  # the demo's model settings (conf/model), whole
    train_app.check_settings(OmegaConf.to_container(train_cfg, resolve=True))
    claim_output_dir(out)  # one demo at a time in a folder
    for leftover in out.glob(".train.partial-*"):  # of a demo that was killed
        shutil.rmtree(leftover, ignore_errors=True)

    _say(f"[1/4] generating synthetic surgeries in {out / 'data'}")
    heldout = make_clips(cfg, out / "data")[1]

    _say(f"[2/4] training ResNet-{cfg.model.depth} ({cfg.task}) on {cfg.train_clips} clips")
    started = time.perf_counter()
    trained = train_app.run(train_cfg)
    train_time = time.perf_counter() - started
    checkpoint = out / "model.pt"
    os.replace(trained["best"], checkpoint)  # one delivered model file, not a copy
    _replace_folder(partial, out / "train")

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
            f"cues.refine_tips={cfg.refine_tips}",
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
            "model": f"dilated ResNet-{cfg.model.depth}, output stride {cfg.model.output_stride}",
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
