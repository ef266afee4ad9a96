"""Shared fixtures: tiny models and checkpoints. Everything is made here, nothing downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from surgseg.checkpoint import CheckpointMeta, save_checkpoint
from surgseg.tasks import class_names

SMALL_INPUT = (64, 80)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch intra-op thread, then restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a ResNet-18 checkpoint with seeded random weights for ``task``."""

    def make(task: str = "binary", *, output_stride: int = 8, name: str | None = None) -> Path:
        torch.manual_seed(0)
        meta = CheckpointMeta(
            task=task,
            class_names=list(class_names(task)),
            model={"depth": 18, "output_stride": output_stride, "head": "fcn", "aux_loss": False},
            input_size=SMALL_INPUT,
            provenance={"made_by": "tests"},
        )
        model = meta.build()
        path = tmp_path / (name or f"{task}.pt")
        save_checkpoint(path, model=model, meta=meta)
        return path

    return make
