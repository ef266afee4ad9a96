"""Inference engines behind one interface; ``create_engine`` picks one by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgseg.checkpoint import CheckpointMeta
from surgseg.engines.base import Engine
from surgseg.errors import ConfigError

ENGINES = ("torch",)


def create_engine(
    name: str,
    *,
    model: nn.Module,
    meta: CheckpointMeta,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Engine:
    """Build the engine called ``name`` for ``model`` (loaded from a checkpoint with ``meta``)."""
    if name == "torch":
        from surgseg.engines.torch_engine import TorchEngine

        return TorchEngine(model, device=device, **options)
    raise ConfigError(f"engine must be one of {ENGINES}, got {name!r}")


__all__ = ["ENGINES", "Engine", "create_engine"]
