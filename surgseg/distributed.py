"""Data-parallel helpers: join the process group that ``torchrun`` describes, and the few
collectives the trainer needs. Everything is a no-op in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Uses NCCL for CUDA and gloo otherwise. On CUDA each process takes the GPU numbered by
    ``LOCAL_RANK``. Returns the device this process should use.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0)."""
    return rank() == 0


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process.

    DDP broadcasts them only at the start of each forward pass, so after the last step each
    process still holds the statistics of its own batches.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, on the device the backend needs."""
    if world_size() == 1:
        return tensor
    on = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    reduced = tensor.to(on)
    dist.all_reduce(reduced)
    tensor.copy_(reduced)
    return tensor
