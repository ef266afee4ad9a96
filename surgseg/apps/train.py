"""surgseg-train: train a segmentation model; see conf/train.yaml.

``resume=true`` continues the run in ``output_dir`` with the configuration saved in its
``last.pt``; only the keys of ``RESUME_KEYS`` may be given anew. Under ``torchrun`` every
process runs this app; they train data-parallel and only rank 0 writes and prints.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import (
    CONF_DIR,
    check_device,
    check_missing,
    claim_output_dir,
    cli_errors,
    launch,
)
from surgseg.augment import TransformedSet, build_transform, instantiate_ops
from surgseg.checkpoint import CheckpointMeta, read_checkpoint
from surgseg.datasets import SegmentationSet, build_dataset, dataset_root, preflight
from surgseg.distributed import close_distributed, init_distributed
from surgseg.errors import CheckpointError, ConfigError
from surgseg.model import IMAGENET_WEIGHTS, imagenet_state_dict, imagenet_weights
from surgseg.preprocess import check_input_size
from surgseg.tasks import class_names
from surgseg.train import AMP_DTYPES, tensorboard_available, train

ARCH_KEYS = ("depth", "output_stride", "head", "aux_loss")
# What a resumed run may be given anew: where the run is, how long it goes on (a larger
# max_steps continues exactly; more epochs lengthen the learning-rate schedule) and how it
# runs. Everything else is the saved run's.
RESUME_KEYS = ("output_dir", "resume", "epochs", "max_steps", "device", "num_workers", "progress",
               "tensorboard")  # fmt: skip


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def _pair(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == 2 and all(map(test, v))


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _non_negative(v: Any) -> bool:
    return _number(v) and v >= 0


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


# The training keys: what each must be, and the test of it.
CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "batch_size": ("a positive integer", _integer(1)),
    "val_every": ("a positive integer", _integer(1)),
    "epochs": ("null or a positive integer", _optional(_integer(1))),
    "max_steps": ("null or a positive integer", _optional(_integer(1))),
    "num_workers": ("a non-negative integer", _integer(0)),
    "warmup_steps": ("a non-negative integer", _integer(0)),
    "seed": ("a non-negative integer", _integer(0)),
    "poly_power": ("a non-negative number", _non_negative),
    "aux_weight": ("a non-negative number", _non_negative),
    "dice_weight": ("a non-negative number", _non_negative),
    "grad_clip": ("null or a positive number", _optional(_positive)),
    "optim.lr": ("a positive number", _positive),
    "amp": ("null, 'bf16' or 'fp16'", lambda v: v is None or v in AMP_DTYPES),
    "resume": ("true or false", _flag),
    "sync_bn": ("true or false", _flag),
    "channels_last": ("true or false", _flag),
    "progress": ("true or false", _flag),
    "tensorboard": ("auto, true or false", lambda v: v == "auto" or _flag(v)),
    "crop_size": ("[height, width] in pixels", _pair(_integer(1))),
    "crop_scale": (
        "[low, high] with 0 < low <= high <= 1",
        lambda v: _pair(_number)(v) and 0 < v[0] <= v[1] <= 1,
    ),
}


def _check_class_weights(weights: Any, task: str) -> None:
    names = class_names(task)
    if weights is None:
        return
    if not (isinstance(weights, list) and len(weights) == len(names)) or not all(
        map(_positive, weights)
    ):
        raise ConfigError(
            f"class_weights must be null or {len(names)} positive numbers, one per class of "
            f"task {task} ({', '.join(names)}), got {weights!r}"
        )


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse a nonsense value of a training key (``settings``: the plain, resolved config)
    with one line naming the key, before any work starts."""
    flat = _flat(settings)
    for key, (what, ok) in CHECKS.items():
        if not ok(flat.get(key)):
            raise ConfigError(f"{key} must be {what}, got {flat.get(key)!r}")
    if settings["epochs"] is None and settings["max_steps"] is None:
        raise ConfigError("give epochs or max_steps (both are null)")
    if settings["tensorboard"] is True and not tensorboard_available():
        raise ConfigError(
            "tensorboard=true needs the tensorboard package: pip install tensorboard "
            "(or surgseg[tensorboard]), or set tensorboard=false"
        )
    check_input_size(settings["input_size"])
    _check_class_weights(settings["class_weights"], settings["task"])
    amp, device = settings["amp"], str(settings["device"])
    if amp is not None and not device.startswith("cuda"):  # train() would stop at its start
        raise ConfigError(f"amp={amp} needs a CUDA device (device=cuda or cuda:N), "
                          f"got device={device}")  # fmt: skip
    weights = settings["model"].get("backbone_weights")
    if isinstance(weights, str) and weights in IMAGENET_WEIGHTS:
        imagenet_weights(weights, settings["model"]["depth"])
    if not _resumes(settings):  # a resumed run loads neither file
        _check_weight_files(settings["model"])
    try:
        instantiate(settings["optim"])([torch.nn.Parameter(torch.zeros(1))])
    except (InstantiationException, TypeError, ValueError) as exc:
        raise ConfigError(f"optim: {str(exc).splitlines()[0]}") from None


def _resumes(settings: dict[str, Any]) -> bool:
    """Whether ``settings`` continue a run (``resume=true`` and a ``last.pt`` in output_dir)."""
    out = settings["output_dir"]
    return settings["resume"] is True and out != "???" and (Path(out) / "last.pt").is_file()


def _check_weight_files(model: dict[str, Any]) -> None:
    """``model.init_weights`` and a ``model.backbone_weights`` that is not one of torchvision's
    names must be files (their content is read when training starts)."""
    for key, names in (("init_weights", ()), ("backbone_weights", tuple(IMAGENET_WEIGHTS))):
        value = model.get(key)
        if value is None or value in names:
            continue
        if not isinstance(value, str) or not value or not Path(value).is_file():
            also = f" (nor one of {', '.join(names)})" if names else ""
            raise ConfigError(f"model.{key}: no such file{also}: {value}")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf}; lists are leaves."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


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


def _plain(cfg: DictConfig, *, throw_on_missing: bool = False) -> dict[str, Any]:
    """``cfg`` as plain resolved data, without Hydra's own node, with an absolute data.root."""
    settings = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
        resolve=True,
        throw_on_missing=throw_on_missing,
    )
    root = settings["data"]["root"]
    if root != "???":
        settings["data"]["root"] = str(Path(root).expanduser().resolve())
    return settings


def _defaults() -> DictConfig:
    """conf/train.yaml as composed without overrides."""
    if GlobalHydra.instance().is_initialized():
        return compose("train")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train")


def _overridden(cfg: DictConfig) -> list[str]:
    """The config nodes named by the command-line overrides that made ``cfg``."""
    if "hydra" in cfg:
        overrides = list(cfg.hydra.overrides.task)
    elif HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    else:
        return []
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.package or o.key_or_group for o in parsed]


def _under(key: str, nodes: tuple[str, ...] | list[str]) -> bool:
    return any(key == node or key.startswith(f"{node}.") for node in nodes)


def resumed_settings(cfg: DictConfig, last: Path) -> dict[str, Any]:
    """The configuration saved in ``last`` (the run to resume), with the keys of
    ``RESUME_KEYS`` that ``cfg`` sets taken from it.

    A key outside ``RESUME_KEYS`` that ``cfg`` sets (by an override, a config group or an
    experiment) to a value other than the saved run's is refused, naming the keys; setting
    the saved value again is fine, so the original command plus ``resume=true`` also works.
    """
    saved = read_checkpoint(last)["meta"]["provenance"].get("config")
    if not isinstance(saved, dict):
        raise CheckpointError("holds no saved configuration to resume from", last)
    given = _plain(cfg)
    flat, defaults, before = _flat(given), _flat(_plain(_defaults())), _flat(saved)
    named = _overridden(cfg)
    unset = {k for k, v in flat.items() if v == "???"}
    asked = {k for k, v in flat.items() if v != defaults.get(k) or _under(k, named)} - unset
    # An experiment (a group merged at the top) may set any key, to any value: compare all.
    experiment = any(not any(_under(k, [node]) for k in flat) for node in named)
    compared = set(flat) - unset if experiment else asked
    changed = sorted(k for k in compared if not _under(k, RESUME_KEYS) and flat[k] != before.get(k))
    if changed:
        allowed = ", ".join(RESUME_KEYS[2:])
        raise ConfigError(
            f"resuming continues the saved run: cannot change {', '.join(changed)} "
            f"(only {allowed} may be given)",
            last.parent,
        )
    settings = {**given, **saved, "output_dir": given["output_dir"], "resume": True}
    settings.update({key: given[key] for key in RESUME_KEYS[2:] if key in asked})
    return settings


def _writes() -> bool:
    """Whether this is the process that writes: rank 0 under torchrun (read from the
    environment, as the process group may not exist yet), or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return the final and best metrics and the output paths.

    With ``resume=true`` and a ``last.pt`` in ``output_dir``, the run continues with the
    configuration saved there (see :func:`resumed_settings`).
    """
    given = _plain(cfg)
    check_settings(given)
    check_device(cfg)
    datasets = None
    if OmegaConf.is_missing(cfg, "output_dir") or not (Path(cfg.output_dir) / "last.pt").exists():
        check_missing(cfg)  # no run to take them from: every required setting, in one line
        dataset_root(cfg.data.root)  # a mistyped data.root: one line, no folder made
        weights = cfg.model.backbone_weights
        if weights in IMAGENET_WEIGHTS and _writes():
            # Into torch's cache now, before the data is checked and once for every process
            # (the others wait to join the process group meanwhile); offline, one line says
            # which file to place where.
            imagenet_state_dict(weights, cfg.model.depth, progress=cfg.progress)
        datasets = build_datasets(cfg)  # a bad split or mask: one line, no folder made
    # Only now, with the command line found good, is the output folder made.
    out_dir = Path(cfg.output_dir)
    if _writes():
        claim_output_dir(out_dir)
    last = out_dir / "last.pt"
    if given["resume"] and last.exists():
        settings = resumed_settings(cfg, last)
    elif last.exists():
        raise ConfigError(
            "already holds a training run (last.pt); resume it with resume=true or choose "
            "another output folder",
            out_dir,
        )
    else:
        settings = _plain(cfg, throw_on_missing=True)
    cfg = OmegaConf.create(settings)
    check_device(cfg)  # a resumed run's saved device
    device = init_distributed(cfg.device)
    try:
        train_set, val_set = datasets or build_datasets(cfg)
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
        provenance = {
            "command": " ".join(sys.argv),
            "config": settings,
            "dataset": {
                "kind": cfg.data.kind,
                "root": cfg.data.root,
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
            class_weights=None if cfg.class_weights is None else list(cfg.class_weights),
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
            tensorboard=None if cfg.tensorboard == "auto" else cfg.tensorboard,
            provenance=provenance,
        )
    finally:
        close_distributed()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@cli_errors("surgseg-train")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    if _writes():
        best = result["best_val_miou"]
        best = "no validation set" if best is None else f"best val mIoU (foreground) {best:.4f}"
        print(f"surgseg-train: {result['steps']} steps, {best}; checkpoints in {cfg.output_dir}")


if __name__ == "__main__":
    launch("train")
