"""Train the dilated ResNet FCN: one pure function from datasets to checkpoints.

Writes into ``out_dir``: ``last.pt`` (every epoch, at the step limit and on Ctrl-C, with
everything needed to resume exactly), ``best.pt`` (highest validation mIoU; weights and
metadata only, the file to deliver), ``metrics.csv``, ``curves.png`` and, with the
``tensorboard`` package, a TensorBoard log in ``tensorboard/`` (losses, learning rate,
validation metrics, and a few validation frames with their truth and prediction each epoch).
Runs data-parallel when a process group is initialised (see :mod:`surgseg.distributed`); only
rank 0 writes or prints.

Resuming is exact: the data order depends only on (seed, epoch, rank) and each item's
augmentation only on (seed, epoch, item), whatever the number of loader workers; the
checkpoint keeps the optimizer, scheduler, AMP scaler and RNG states plus the position inside
the epoch, and the learning-rate schedule spans the planned epochs, not the step limit.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import importlib.util
import itertools
import math
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm

import surgseg
from surgseg import distributed as ddp
from surgseg.atomic import atomic_path
from surgseg.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from surgseg.errors import CheckpointError, ConfigError
from surgseg.losses import SegmentationLoss
from surgseg.metrics import SegmentationMetrics
from surgseg.model import IMAGENET_WEIGHTS, build_model, imagenet_weights, load_fcn_weights
from surgseg.schedule import build_scheduler
from surgseg.tasks import IGNORE_INDEX, palette

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TENSORBOARD_EVERY = 10  # training steps between the per-step loss and learning-rate scalars
TENSORBOARD_IMAGES = 4  # validation frames shown with their truth and prediction each epoch
TENSORBOARD_PANEL = 320  # longest side, in pixels, of each frame / truth / prediction panel


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (the optional extra) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def train(
    *,
    meta: CheckpointMeta,
    train_set: Dataset,
    val_set: Dataset | None,
    out_dir: str | Path,
    optimizer: Callable[[Iterable[nn.Parameter]], Optimizer],
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 8,
    warmup_steps: int = 0,
    poly_power: float = 0.9,
    grad_clip: float | None = None,
    amp: str | None = None,
    aux_weight: float = 0.5,
    dice_weight: float = 0.0,
    class_weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    resume: bool = False,
    init_weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    sync_bn: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    val_every: int = 1,
    tensorboard: bool | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a model described by ``meta``; return its final and best metrics, the output
    paths and the trained ``model`` (unwrapped, on ``device``).

    Args:
        meta: task, class names, architecture (``build_model`` arguments), input size and
            normalization; stored in every checkpoint.
        train_set, val_set: datasets of (float32 CHW image, int64 HW mask) pairs, already
            transformed; ``val_set`` may be None (no validation, no ``best.pt``).
        out_dir: output folder.
        optimizer: factory called with the model parameters, e.g.
            ``functools.partial(torch.optim.Adam, lr=1e-4)``.
        epochs, max_steps: training length; with both, whichever ends first. The
            learning-rate schedule spans ``epochs`` (``max_steps`` when ``epochs`` is None),
            so a run stopped by ``max_steps`` continues exactly when resumed with a larger one.
        batch_size: images per optimizer step and process.
        warmup_steps, poly_power: linear warm-up then poly decay, per step.
        grad_clip: max gradient norm, or None.
        amp: None, ``"bf16"`` or ``"fp16"`` (CUDA only; fp16 uses a GradScaler).
        aux_weight: weight of the auxiliary head's loss (when the model has one).
        dice_weight: weight of the soft Dice term (0 = cross-entropy only).
        class_weights: one cross-entropy weight per class (None: all 1).
        device: ``"cpu"``, ``"cuda"``…; under ``torchrun`` the per-process device.
        seed: seeds initialisation, data order and augmentation (non-negative).
        num_workers: data-loading worker processes; the results do not depend on it.
        resume: continue from ``out_dir/last.pt`` if it exists (same ``batch_size``, ``seed``
            and number of processes).
        init_weights: torchvision ``fcn_resnet*`` state dict to start from.
        backbone_weights: ImageNet ResNet state dict to start from.
        sync_bn: synchronise batch-norm statistics across processes (CUDA only).
        channels_last: use the channels-last memory format.
        progress: show tqdm bars (rank 0, on a terminal).
        val_every: validate every this many epochs (and after the last).
        tensorboard: write a TensorBoard log into ``out_dir/tensorboard``: None when the
            ``tensorboard`` package is installed (silently off without it), True always (an
            error without the package), False never.
        provenance: extra facts for the checkpoint (command, config, dataset).
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    rank, world = ddp.rank(), ddp.world_size()
    main = rank == 0
    if epochs is None and max_steps is None:
        raise ConfigError("give epochs or max_steps")
    if amp not in (None, *AMP_DTYPES):
        raise ConfigError(f"amp must be null, 'bf16' or 'fp16', got {amp!r}")
    if amp is not None and device.type != "cuda":
        raise ConfigError(f"amp={amp!r} needs a CUDA device, not {device.type!r}")
    if sync_bn and world > 1 and device.type != "cuda":
        raise ConfigError("sync_bn needs CUDA devices")
    if val_every < 1:
        raise ConfigError(f"val_every must be at least 1, got {val_every}")
    if any(n is not None and n < 1 for n in (epochs, max_steps)):
        raise ConfigError(f"epochs and max_steps must be positive, got {epochs} and {max_steps}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    if tensorboard and not tensorboard_available():
        raise ConfigError(
            "tensorboard=true needs the tensorboard package: pip install tensorboard "
            "(or surgseg[tensorboard]), or set tensorboard=false"
        )
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists() and not resume:
        raise ConfigError(
            "already holds a training run (last.pt); resume it or choose another output folder",
            out_dir,
        )

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    steps_per_epoch = len(sampler) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {len(sampler)} training images per process"
        )
    # The schedule spans the planned run; max_steps only says where to stop.
    schedule_steps = steps_per_epoch * epochs if epochs is not None else max_steps
    total_steps = min(schedule_steps, max_steps or schedule_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    settings = {"batch_size": batch_size, "seed": seed, "world_size": world}

    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
    torch.manual_seed(seed)
    # A resumed run takes every weight from last.pt: the starting weights are not read.
    resuming = resume and last_path.exists()
    model = build_model(
        num_classes=meta.num_classes,
        backbone_weights=None if resuming else backbone_weights,
        **meta.model,
    )
    if init_weights is not None and not resuming:
        load_fcn_weights(model, init_weights)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    opt = optimizer(model.parameters())
    scheduler = build_scheduler(
        opt, total_steps=schedule_steps, warmup_steps=warmup_steps, power=poly_power
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "best": None}
    state["history"] = []
    if resuming:
        state = _restore(last_path, meta, settings, model, opt, scheduler, scaler)
    elif resume and main:
        print(f"no {last_path} to resume: starting from scratch", file=sys.stderr)

    if sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    criterion = SegmentationLoss(
        aux_weight=aux_weight, dice_weight=dice_weight, class_weights=class_weights
    )
    autocast = functools.partial(
        torch.autocast, device.type, dtype=AMP_DTYPES.get(amp), enabled=amp is not None
    )

    base = {
        **(provenance or {}),
        "backbone_weights": _describe_weights(backbone_weights, meta.model.get("depth")),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "world_size": world,
        "seed": seed,
        "train_images": len(train_set),
        "val_images": len(val_set) if val_set is not None else 0,
    }

    def checkpoint(path: Path, *, resumable: bool) -> None:
        """Save the model; with ``resumable``, also everything needed to continue."""
        row = state["history"][-1] if state["history"] else {}
        facts = {
            **base,
            "epochs": _epochs_done(state, steps_per_epoch),
            "steps": state["step"],
            "metrics": row,
            "best_val_miou": state["best"],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        train_state = None
        if resumable:
            train_state = {
                **state,
                "settings": settings,
                "optimizer": opt.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
            }
        save_checkpoint(
            path,
            model=model,
            meta=dataclasses.replace(meta, provenance=facts),
            train_state=train_state,
        )

    show = progress and main and sys.stderr.isatty()
    writer = None
    if main and (tensorboard or (tensorboard is None and tensorboard_available())):
        from torch.utils.tensorboard import SummaryWriter

        # Resumed: events past the saved step (written after it, then lost) are dropped.
        writer = SummaryWriter(
            str(out_dir / "tensorboard"), purge_step=state["step"] if resuming else None
        )
    examples = _example_indices(val_set, TENSORBOARD_IMAGES) if writer is not None else []
    loss_sum: torch.Tensor | None = None
    try:
        while state["step"] < total_steps:
            epoch, done = state["epoch"], state["batch"]
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            loader = _train_loader(
                train_set,
                _Tail(sampler, done * batch_size),
                batch_size=batch_size,
                num_workers=num_workers,
                seed=seed,
                epoch=epoch,
                rank=rank,
                pin_memory=device.type == "cuda",
            )
            todo = min(steps_per_epoch, total_steps - (state["step"] - done))
            # Summed on the device: no host sync per step.
            loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)
            net.train()
            bar = tqdm(
                total=todo,
                initial=done,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not show,
                leave=False,
                dynamic_ncols=True,
            )
            for images, targets in itertools.islice(loader, todo - done):
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = targets.to(device, non_blocking=True)
                with _sigint_deferred():
                    with autocast():
                        loss = criterion(net(images), targets)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    scheduler.step()
                    loss_sum += loss.detach()
                    state["batch"] += 1
                    state["step"] += 1
                if writer is not None and (state["step"] - 1) % TENSORBOARD_EVERY == 0:
                    writer.add_scalar("train/loss", loss.item(), state["step"])
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state["step"])
                bar.update()
                if show and state["batch"] % 10 == 1:
                    bar.set_postfix(
                        loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                    )
            bar.close()

            ddp.broadcast_buffers(model)
            loss_mean = torch.stack([loss_sum, loss_sum.new_tensor(state["batch"])]).cpu()
            ddp.all_reduce_sum(loss_mean)
            # Stopped by the step limit inside the epoch: it stays open, to be continued.
            complete = state["batch"] == steps_per_epoch
            row: dict[str, Any] = {
                "epoch": _epochs_done(state, steps_per_epoch),
                "step": state["step"],
                "lr": scheduler.get_last_lr()[0],
                "train_loss": (loss_mean[0] / loss_mean[1]).item(),
                "val_miou": None,  # the foreground classes (background left out)
                "val_miou_all": None,  # every class, background included
                "val_iou": None,
            }
            finished = state["step"] >= total_steps
            scores: dict[str, Any] | None = None
            if val_set is not None and ((epoch + 1) % val_every == 0 or finished):
                scores = evaluate(
                    model,
                    val_set,
                    num_classes=meta.num_classes,
                    task=meta.task,
                    batch_size=batch_size,
                    device=device,
                    num_workers=num_workers,
                    amp=amp,
                    channels_last=channels_last,
                    progress=show,
                )
                row["val_miou"], row["val_iou"] = scores["miou"], scores["iou"]
                row["val_miou_all"] = scores["miou_all"]
            row["time_s"] = time.perf_counter() - started
            improved = row["val_miou"] is not None and (
                state["best"] is None or row["val_miou"] > state["best"]
            )
            # One update, so a Ctrl-C never leaves the epoch half-recorded. An open epoch
            # keeps the mean of the processes' loss sums: each adds it back on resuming.
            state.update(
                epoch=epoch + complete,
                batch=0 if complete else state["batch"],
                loss_sum=0.0 if complete else loss_mean[0].item() / world,
                history=[*state["history"], row],
                best=row["val_miou"] if improved else state["best"],
            )
            if main:
                checkpoint(last_path, resumable=True)
                if improved:
                    checkpoint(best_path, resumable=False)
                _write_csv(out_dir / "metrics.csv", state["history"], meta.class_names)
                _log(row, epochs)
            if writer is not None:
                _log_tensorboard(writer, row, scores, meta.class_names, state["step"])
                if scores is not None and examples:
                    grid = _example_grid(model, val_set, examples, meta, device, amp, memory_format)
                    writer.add_image("val/examples", grid, state["step"], dataformats="HWC")
                writer.flush()
    except KeyboardInterrupt:
        if main:
            if state["batch"] and loss_sum is not None:
                state["loss_sum"] = loss_sum.item()
            checkpoint(last_path, resumable=True)
            print(f"interrupted: saved {last_path}", file=sys.stderr)
        raise
    finally:
        if writer is not None:
            writer.close()

    curves = out_dir / "curves.png"
    if main:
        _plot_curves(curves, state["history"])
    final = state["history"][-1] if state["history"] else {}
    return {
        "epochs": _epochs_done(state, steps_per_epoch),
        "steps": state["step"],
        "train_loss": final.get("train_loss"),
        "val_miou": final.get("val_miou"),
        "val_iou": final.get("val_iou"),
        "best_val_miou": state["best"],
        "last": last_path,
        "best": best_path if best_path.exists() else None,
        "model": model,
        "metrics_csv": out_dir / "metrics.csv",
        "curves": curves,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    task: str | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: str | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Segmentation metrics of ``model`` on ``dataset`` of (image, mask) tensor pairs.

    Under DDP each process takes every ``world_size``-th image and the confusion matrices
    are summed, so every process gets the metrics of the whole set.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rank, world = ddp.rank(), ddp.world_size()
    shard = Subset(dataset, range(rank, len(dataset), world))
    # A private generator: validating never moves the global stream that dropout draws from,
    # so a validation at a step limit leaves the rest of the run as it would have been.
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
    metrics = SegmentationMetrics(num_classes, task=task)
    was_training = model.training
    model.eval()
    for images, targets in tqdm(loader, desc="validate", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(device.type, dtype=AMP_DTYPES.get(amp), enabled=amp is not None):
            logits = model(images)["out"]
        metrics.update(logits.argmax(1), targets.to(device, non_blocking=True))
    model.train(was_training)
    ddp.all_reduce_sum(metrics.confusion)
    ddp.all_reduce_sum(metrics.frame_stats)
    return metrics.compute()


def _describe_weights(weights: str | Path | None, depth: int | None) -> str | None:
    """What the backbone started from, for the checkpoint: torchvision's enum member for a
    weights name (``ResNet101_Weights.IMAGENET1K_V2``), else the file as given."""
    if isinstance(weights, str) and weights in IMAGENET_WEIGHTS and depth is not None:
        member = imagenet_weights(weights, depth)
        return f"{type(member).__name__}.{member.name}"
    return None if weights is None else str(weights)


def _log_tensorboard(
    writer: Any,
    row: dict[str, Any],
    scores: dict[str, Any] | None,
    class_names: list[str],
    step: int,
) -> None:
    """An epoch's scalars: the mean training loss (over all processes), the epoch's time and
    the validation metrics. (``train/loss``, rank 0's batch loss, and ``train/lr`` come every
    ``TENSORBOARD_EVERY`` steps.)"""
    writer.add_scalar("train/loss_epoch", row["train_loss"], step)
    writer.add_scalar("train/epoch_time_s", row["time_s"], step)
    if scores is None:
        return
    for key in ("miou", "mdice", "challenge_iou", "frame_iou", "pixel_accuracy",
                "balanced_accuracy"):  # fmt: skip
        if scores.get(key) is not None:
            writer.add_scalar(f"val/{key}", scores[key], step)
    for name, iou in zip(class_names, scores["iou"], strict=True):
        if iou is not None:
            writer.add_scalar(f"val/iou/{name}", iou, step)


def _example_indices(dataset: Dataset | None, count: int) -> list[int]:
    """``count`` items spread evenly over ``dataset`` (the same ones every epoch)."""
    if dataset is None or len(dataset) == 0:
        return []
    return sorted({round(x) for x in np.linspace(0, len(dataset) - 1, min(count, len(dataset)))})


@torch.no_grad()
def _example_grid(
    model: nn.Module,
    dataset: Dataset,
    indices: list[int],
    meta: CheckpointMeta,
    device: torch.device,
    amp: str | None,
    memory_format: torch.memory_format,
) -> np.ndarray:
    """One row per item: the frame, its ground truth and the model's prediction coloured in
    (``surgseg.tasks.palette``; ignore pixels grey), as an H×W×3 uint8 image."""
    import cv2

    colours = palette(meta.num_classes).astype(np.float32)
    mean, std = np.array(meta.mean, np.float32), np.array(meta.std, np.float32)
    was_training = model.training
    model.eval()
    rows = []
    for i in indices:
        image, target = dataset[i]
        x = image[None].to(device, memory_format=memory_format)
        with torch.autocast(device.type, dtype=AMP_DTYPES.get(amp), enabled=amp is not None):
            pred = model(x)["out"].argmax(1)[0].cpu().numpy()
        frame = (image.permute(1, 2, 0).numpy() * std + mean) * 255
        panels = [frame] + [_coloured(frame, np.asarray(m), colours) for m in (target, pred)]
        scale = min(1.0, TENSORBOARD_PANEL / max(frame.shape[:2]))
        size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
        if rows and size != (rows[0].shape[1] // 3, rows[0].shape[0]):
            size = (rows[0].shape[1] // 3, rows[0].shape[0])
        rows.append(np.concatenate([cv2.resize(p, size, interpolation=cv2.INTER_AREA)
                                    for p in panels], axis=1))  # fmt: skip
    model.train(was_training)
    return np.clip(np.concatenate(rows, axis=0), 0, 255).astype(np.uint8)


def _coloured(frame: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``frame`` (float RGB 0..255) with each labelled pixel blended with its class colour;
    ignore pixels grey."""
    out = frame.copy()
    labelled = (mask > 0) & (mask != IGNORE_INDEX)
    out[labelled] = 0.35 * frame[labelled] + 0.65 * colours[mask[labelled]]
    out[mask == IGNORE_INDEX] = 128
    return out


def _train_loader(
    dataset: Dataset,
    sampler: Sampler[int],
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    rank: int,
    pin_memory: bool,
) -> DataLoader:
    """A loader of ``dataset`` in ``sampler``'s order whose augmentation draws depend only on
    (seed, epoch, item index): not on where in the epoch it starts nor on the workers."""
    entropy = np.random.SeedSequence((seed, epoch, rank)).generate_state(1)
    return DataLoader(
        _Reseeded(dataset, seed=seed, epoch=epoch),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(int(entropy[0])),
        worker_init_fn=_seed_worker,
    )


class _Reseeded(Dataset):
    """``dataset`` whose albumentations pipeline (``dataset.transform``, which ignores global
    seeds) is reseeded from (seed, epoch, index) before each item is read."""

    def __init__(self, dataset: Dataset, *, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch
        self.transform = getattr(dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if hasattr(self.transform, "set_random_seed"):
            entropy = np.random.SeedSequence((self.seed, self.epoch, index)).generate_state(1)
            self.transform.set_random_seed(int(entropy[0]))
        return self.dataset[index]


class _Tail(Sampler[int]):
    """The indices of ``sampler`` from position ``start`` on: the rest of an epoch."""

    def __init__(self, sampler: Sampler[int], start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def _seed_worker(worker_id: int) -> None:
    """Give each worker its own global NumPy stream, derived from the loader's generator."""
    np.random.seed(torch.initial_seed() % 2**32)


def _epochs_done(state: dict[str, Any], steps_per_epoch: int) -> float:
    """Epochs trained, with the open epoch's fraction (1.5 = half-way through the second)."""
    epochs, batch = divmod(state["epoch"] * steps_per_epoch + state["batch"], steps_per_epoch)
    return round(epochs + batch / steps_per_epoch, 4) if batch else epochs


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so a training step is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and callable(previous):
        previous(signal.SIGINT, None)


def _restore(
    path: Path,
    meta: CheckpointMeta,
    settings: dict[str, int],
    model: nn.Module,
    opt: Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """Load the training state of ``path`` into the given objects; return the loop state.

    ``settings`` (batch size, seed, number of processes) must be those of the saved run: they
    fix the data order and the position inside the epoch.
    """
    payload = read_checkpoint(path)
    saved = payload["meta"]
    if saved["class_names"] != list(meta.class_names) or saved["model"] != dict(meta.model):
        raise CheckpointError(
            "was trained with other classes or another model; cannot resume", path
        )
    state = payload["train_state"]
    if not state:
        raise CheckpointError("holds no training state to resume from", path)
    was = state.pop("settings", settings)
    if was != settings:
        raise CheckpointError(
            f"was trained with {_describe(was)}; cannot resume with {_describe(settings)}", path
        )
    model.load_state_dict(payload["state_dict"])
    opt.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    # The schedule may be longer now (more epochs): follow it from the current step.
    for group, base_lr, factor in zip(
        opt.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scaler.load_state_dict(state.pop("scaler"))
    _set_rng_state(state.pop("rng"))
    return state


def _describe(settings: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (checkpoints are loaded with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def _write_csv(path: Path, history: list[dict[str, Any]], class_names: list[str]) -> None:
    # val_miou: mean IoU of the foreground classes (background left out); val_miou_all: of all
    # the classes, background included
    header = ["epoch", "step", "lr", "train_loss", "val_miou", "val_miou_all"]
    header += [f"val_iou_{name}" for name in class_names] + ["time_s"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in history:
            ious = row["val_iou"] or [None] * len(class_names)
            values = [row["epoch"], row["step"], row["lr"], row["train_loss"], row["val_miou"],
                      row.get("val_miou_all")]  # fmt: skip
            writer.writerow(values + ious + [round(row["time_s"], 3)])


def _plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Training loss and validation mIoU against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ax_loss.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    validated = [r for r in history if r["val_miou"] is not None]
    ax_iou.plot(
        [r["epoch"] for r in validated], [r["val_miou"] for r in validated], "o-", color="C1"
    )
    ax_iou.set(xlabel="epoch", ylabel="mIoU (foreground classes)", title="Validation mIoU",
               ylim=(0, 1))  # fmt: skip
    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _log(row: dict[str, Any], epochs: int) -> None:
    val = "" if row["val_miou"] is None else f"  val mIoU (foreground) {row['val_miou']:.4f}"
    print(
        f"epoch {row['epoch']}/{epochs}  step {row['step']}  loss {row['train_loss']:.4f}"
        f"  lr {row['lr']:.2e}{val}  ({row['time_s']:.1f}s)",
        flush=True,
    )


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _versions() -> dict[str, str]:
    return {
        "surgseg": surgseg.__version__,
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
