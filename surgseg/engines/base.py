"""The one interface every inference engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Engine(ABC):
    """Runs the segmentation network on a normalized batch.

    ``infer`` takes a float32 NCHW tensor on ``self.device`` (already resized and normalized)
    and returns the logits, NCHW, on ``self.device``, at the input's spatial size.
    """

    name: str = "engine"
    device: torch.device = torch.device("cpu")

    def max_batch(self, size: tuple[int, int]) -> int | None:
        """The most images of ``size`` (height, width) one ``infer`` takes: None for any
        number (the default), 0 if this engine cannot run that size."""
        return None

    @abstractmethod
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for ``batch``."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release resources (sessions, CUDA graphs, TensorRT contexts)."""
