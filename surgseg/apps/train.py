"""surgseg-train: train a segmentation model; see conf/train.yaml.

Under ``torchrun`` every process runs this app; they train data-parallel and only rank 0
writes and prints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import CONF_DIR, cli_errors
from surgseg.augment import TransformedSet, build_transform, instantiate_ops
from surgseg.checkpoint import CheckpointMeta
from surgseg.datasets import SegmentationSet, build_dataset, preflight
from surgseg.distributed import close_distributed, init_distributed
from surgseg.train import train

ARCH_KEYS = ("depth", "output_stride", "head", "aux_loss")


def build_datasets(cfg: DictConfig) -> tuple[SegmentationSet, SegmentationSet | None]:
    """The training set and, when the data config names validation videos (``val_videos``
    or an EndoVis 2017 ``fold``), the validation set; both checked by ``preflight``."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    kind = data.pop("kind")
    if data.get("fold") is None and data.get("val_videos") is None:
        train_set, val_set = build_dataset(kind, task=cfg.task, **data), None
    else:
        train_set = build_dataset(kind, task=cfg.task, split="train", **data)
        val_set = build_dataset(kind, task=cfg.task, split="val", **data)
    for dataset in (train_set, val_set):
        if dataset is not None:
            preflight(dataset)
    return train_set, val_set


def _videos(dataset: SegmentationSet | None) -> list[str]:
    return [] if dataset is None else sorted({dataset.video_of(i) for i in range(len(dataset))})


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return the final and best metrics and the output paths."""
    device = init_distributed(cfg.device)
    try:
        train_set, val_set = build_datasets(cfg)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        meta = CheckpointMeta(
            task=cfg.task,
            class_names=list(train_set.class_names),
            model={k: model[k] for k in ARCH_KEYS},
            input_size=tuple(cfg.input_size),
        )
        augment = OmegaConf.to_container(cfg.augment, resolve=True)
        train_tf = build_transform(
            instantiate_ops(augment["train"]["ops"]), mean=meta.mean, std=meta.std, seed=cfg.seed
        )
        eval_tf = build_transform(
            instantiate_ops(augment["eval"]["ops"]), mean=meta.mean, std=meta.std
        )
        settings = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        provenance = {
            "command": " ".join(sys.argv),
            "config": OmegaConf.to_container(settings, resolve=True),
            "dataset": {
                "kind": cfg.data.kind,
                "root": str(Path(cfg.data.root).expanduser().resolve()),
                "train_videos": _videos(train_set),
                "val_videos": _videos(val_set),
            },
        }
        return train(
            meta=meta,
            train_set=TransformedSet(train_set, train_tf),
            val_set=None if val_set is None else TransformedSet(val_set, eval_tf),
            out_dir=Path(cfg.output_dir),
            optimizer=instantiate(cfg.optim),
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            batch_size=cfg.batch_size,
            warmup_steps=cfg.warmup_steps,
            poly_power=cfg.poly_power,
            grad_clip=cfg.grad_clip,
            amp=cfg.amp,
            aux_weight=cfg.aux_weight,
            dice_weight=cfg.dice_weight,
            device=device,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            resume=cfg.resume,
            init_weights=model["init_weights"],
            backbone_weights=model["backbone_weights"],
            sync_bn=cfg.sync_bn,
            channels_last=cfg.channels_last,
            progress=cfg.progress,
            val_every=cfg.val_every,
            provenance=provenance,
        )
    finally:
        close_distributed()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@cli_errors("surgseg-train")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = result["best_val_miou"]
        best = "no validation set" if best is None else f"best val mIoU {best:.4f}"
        print(f"surgseg-train: {result['steps']} steps, {best}; checkpoints in {cfg.output_dir}")


if __name__ == "__main__":
    main()
