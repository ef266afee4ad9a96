"""PyTorch engine: eval mode, inference_mode."""

from __future__ import annotations

import torch
from torch import nn

from surgseg.engines.base import Engine


class TorchEngine(Engine):
    """Runs the model with PyTorch on ``device``."""

    name = "torch"

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)["out"]
