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
        number, 0 if this engine cannot run that size (the default: an engine built for its
        own input size alone)."""
        return 0

    @abstractmethod
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for ``batch``."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release resources (sessions, CUDA graphs, TensorRT contexts)."""
