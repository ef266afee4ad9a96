"""Data-parallel training: two CPU processes with the gloo backend."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from surgseg.checkpoint import load_checkpoint, read_checkpoint
from surgseg.train import evaluate, tensorboard_available
from tests._train_utils import ddp_worker, rectangles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_weights_and_one_set_of_outputs(tmp_path):
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    a, b = ranks[0]["state_dict"], ranks[1]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(a[k], saved["state_dict"][k]) for k in a)
    logs = ["tensorboard"] if tensorboard_available() else []  # written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        ["best.pt", "curves.png", "last.pt", "metrics.csv", *logs])
    if logs:
        assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # 8 images over 2 processes of batch 4: one step per epoch.
    assert saved["train_state"]["step"] == 2 and saved["meta"]["provenance"]["world_size"] == 2

    # Each process validated half of the set; the summed confusion gives the whole set's mIoU.
    assert ranks[0]["val_miou"] == ranks[1]["val_miou"]
    model, meta = load_checkpoint(tmp_path / "run" / "last.pt")
    whole = evaluate(model, rectangles(4, augment=False, seed=1), num_classes=meta.num_classes)
    assert whole["miou"] == pytest.approx(ranks[0]["val_miou"], abs=1e-3)
