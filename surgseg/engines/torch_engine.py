"""PyTorch engine: eval mode and inference_mode, plus the usual GPU speed-ups.

On CUDA: fp16/bf16 weights, channels_last memory format, cudnn.benchmark, optional
torch.compile and optional CUDA-graph capture.

CUDA graphs are captured in thread-local mode, so other threads of a pipeline (uploads that
pin memory or query events) may run CUDA calls during a capture. One graph is kept per
(channels, height, width) at the largest batch seen so far; a smaller batch is padded to it
and the padding's logits are dropped, so the short last batch of a video replays the graph
instead of capturing a new one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from surgseg.engines.base import Engine
from surgseg.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_Graph = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]


class TorchEngine(Engine):
    """Runs the model with PyTorch on ``device``.

    Args:
        model: the segmentation model (returns a dict with ``"out"``).
        device: where to run.
        precision: "fp32", "fp16" or "bf16" (weights and activations in that type; logits too).
        channels_last: NHWC memory format (faster convolutions on tensor cores).
        compile: wrap the model in ``torch.compile``.
        cuda_graphs: capture CUDA graphs and replay them (CUDA only; see the module docstring).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(
                f"engine.precision must be one of {tuple(PRECISIONS)}, got {precision!r}"
            )
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ConfigError("engine.cuda_graphs needs a CUDA device")
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError(
                "engine.precision=fp16 needs a CUDA device: PyTorch's fp16 convolutions on a "
                "CPU are many times slower than fp32; use fp32 (or bf16)"
            )
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = PRECISIONS[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.dtype != torch.float32:
            model = copy.deepcopy(model)
        model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)
        self.model = torch.compile(model) if compile else model
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], _Graph] = {}  # (C, H, W) → graph at the top batch
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.dtype).contiguous(memory_format=self.memory_format)
        return self.model(x)["out"]

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._forward(batch)
        with torch.cuda.device(self.device):
            n, item = batch.shape[0], tuple(batch.shape[1:])
            graph = self._graphs.get(item)
            if graph is None or graph[1].shape[0] < n:
                graph = self._graphs[item] = self._capture(batch)
            replay, static_in, static_out = graph
            static_in[:n].copy_(batch)
            replay.replay()
            return static_out[:n].clone()

    def _capture(self, batch: torch.Tensor) -> _Graph:
        static_in = batch.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cudnn.benchmark autotuning, lazy allocations
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def close(self) -> None:
        self._graphs.clear()
