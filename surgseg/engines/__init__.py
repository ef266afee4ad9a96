"""Inference engines behind one interface; ``create_engine`` picks one by name.

Every engine takes a normalized float32 NCHW batch on its device and returns logits (float32 or
half) NCHW on the same device; the Predictor upcasts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgseg.checkpoint import CheckpointMeta
from surgseg.engines.base import Engine
from surgseg.errors import ConfigError

ENGINES = ("torch", "onnxruntime", "tensorrt")


def create_engine(
    name: str,
    *,
    model: nn.Module,
    meta: CheckpointMeta,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Engine:
    """Build the engine called ``name`` for ``model`` (loaded from a checkpoint with ``meta``).

    ``options`` are the engine's own keyword arguments (``conf/engine/<name>.yaml``). A missing
    backend, an unknown option or an unknown value raises ConfigError.
    """
    if name == "torch":
        from surgseg.engines.torch_engine import TorchEngine as cls

        args: tuple = (model,)
    elif name == "onnxruntime":
        from surgseg.engines.onnxruntime_engine import OnnxRuntimeEngine as cls

        args = (model, meta)
    elif name == "tensorrt":
        from surgseg.engines.tensorrt_engine import TensorRTEngine as cls

        args = (model, meta)
    else:
        raise ConfigError(f"engine must be one of {ENGINES}, got {name!r}")
    try:
        return cls(*args, device=device, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"engine={name}: {exc}".replace("__init__() ", "")) from None


__all__ = ["ENGINES", "Engine", "create_engine"]
