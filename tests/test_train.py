"""The trainer on tiny CPU problems: learning, checkpoints, exact resume, Ctrl-C, the app."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from surgseg.checkpoint import load_checkpoint, read_checkpoint
from surgseg.errors import ConfigError
from surgseg.predictor import Predictor
from surgseg.train import train
from tests._train_utils import SIZE, rectangles, train_kwargs

# One intra-op thread: the CPU is shared, and two threads contend badly.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, train(**train_kwargs(out_dir=out, epochs=6))


def test_loss_decreases_and_the_model_learns(trained):
    out, result = trained
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.6 * losses[0]
    assert result["steps"] == 12 and result["epochs"] == 6
    assert result["train_loss"] == pytest.approx(losses[-1])
    assert result["best_val_miou"] == max(float(r["val_miou"]) for r in rows)
    assert set(rows[0]) >= {"lr", "val_iou_background", "val_iou_tool", "time_s"}
    assert float(rows[-1]["lr"]) == 0.0  # poly decay reaches zero at the last step


def test_checkpoints_load_and_predict(trained):
    out, result = trained
    assert result["last"] == out / "last.pt" and result["best"] == out / "best.pt"
    _, meta = load_checkpoint(out / "last.pt", task="binary")
    assert meta.input_size == SIZE and meta.model["aux_loss"] is True
    prov = meta.provenance
    assert prov["epochs"] == 6 and prov["steps"] == 12 and prov["train_images"] == 8
    assert prov["metrics"]["val_miou"] == result["val_miou"]
    assert {"torch", "surgseg"} <= set(prov["versions"]) and prov["date"]
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["epoch"] == 6 and state["step"] == 12 and "optimizer" in state
    best = read_checkpoint(out / "best.pt")
    assert best["meta"]["provenance"]["metrics"]["val_miou"] == result["best_val_miou"]

    predictor = Predictor.from_checkpoint(out / "best.pt")
    frames = rectangles(2, augment=False, seed=1).dataset.images
    predictions = predictor.predict(list(frames))
    assert predictions[0].mask.shape == SIZE and predictions[0].mask.max() <= 1


def test_curves_png_is_written(trained):
    out, _ = trained
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "last.pt")["state_dict"]


@pytest.mark.parametrize("interrupt_at", [16, 21], ids=["epoch-boundary", "mid-epoch"])
def test_ctrl_c_then_resume_is_exact(tmp_path, deterministic, interrupt_at):
    whole = train(**train_kwargs(out_dir=tmp_path / "whole"))

    # 8 training items are read per epoch: 16 = first read of epoch 3, 21 = inside its 2nd batch.
    cut = tmp_path / "cut"
    broken = rectangles(8, interrupt_at=interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        train(**train_kwargs(out_dir=cut, train_set=broken))
    state = read_checkpoint(cut / "last.pt")["train_state"]
    assert (state["epoch"], state["batch"], state["step"]) == (
        2,
        interrupt_at // 4 - 4,
        4 + interrupt_at // 4 - 4,
    )
    load_checkpoint(cut / "last.pt")  # a valid checkpoint

    with pytest.raises(ConfigError, match="already holds a training run"):
        train(**train_kwargs(out_dir=cut))
    resumed = train(**train_kwargs(out_dir=cut, resume=True))

    a, b = _final_weights(tmp_path / "whole"), _final_weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == whole["train_loss"]
    assert resumed["val_miou"] == whole["val_miou"]
    assert (cut / "metrics.csv").read_text().count("\n") == 5


def test_resume_of_a_finished_run_changes_nothing(trained, tmp_path):
    out, result = trained
    again = train(**train_kwargs(out_dir=out, epochs=6, resume=True))
    assert again["steps"] == result["steps"] and again["val_miou"] == result["val_miou"]


def test_max_steps_stops_inside_an_epoch(tmp_path):
    result = train(**train_kwargs(out_dir=tmp_path, epochs=None, max_steps=3, val_set=None))
    assert result["steps"] == 3 and result["epochs"] == 2
    assert result["best"] is None and result["val_miou"] is None
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="amp"):
        train(**train_kwargs(out_dir=tmp_path, amp="bf16"))
    with pytest.raises(ConfigError, match="batch_size"):
        train(**train_kwargs(out_dir=tmp_path, batch_size=16))
    with pytest.raises(ConfigError, match="positive"):
        train(**train_kwargs(out_dir=tmp_path, epochs=0))
    with pytest.raises(ConfigError, match="epochs or max_steps"):
        train(**train_kwargs(out_dir=tmp_path, epochs=None))
    assert not list(tmp_path.iterdir())


def test_augmentation_differs_between_epochs_but_repeats_per_seed():
    from surgseg.train import _train_loader

    data = rectangles(8)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=0)

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        sampler.set_epoch(epoch)
        loader = _train_loader(
            data, sampler, batch_size=4, num_workers=0, seed=(0, epoch, 0), pin_memory=False
        )
        return [m.numpy() for _, m in loader]

    first, again, second = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from surgseg.apps import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from surgseg.synthetic import write_clip

    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "a", num_frames=8, width=80, height=64, seed=1)
    write_clip(root / "b", num_frames=4, width=80, height=64, seed=2)
    return root


def test_app_trains_from_the_composed_config(tmp_path, clips):
    from surgseg.apps.train import run

    out = tmp_path / "run"
    cfg = _compose(
        [
            "model=resnet18",
            "task=parts",
            f"data.root={clips}",
            "data.val_videos=[b]",
            f"output_dir={out}",
            "input_size=[64,80]",
            "epochs=2",
            "batch_size=4",
            "num_workers=0",
            "progress=false",
        ]
    )
    result = run(cfg)
    assert result["steps"] == 4 and result["val_iou"] is not None
    _, meta = load_checkpoint(out / "last.pt", task="parts")
    assert meta.class_names == ["background", "shaft", "wrist", "clasper"]
    assert meta.model == {"depth": 18, "output_stride": 8, "head": "fcn", "aux_loss": False}
    assert meta.input_size == (64, 80)
    prov = meta.provenance
    assert prov["dataset"]["train_videos"] == ["a"] and prov["dataset"]["val_videos"] == ["b"]
    assert prov["config"]["optim"]["lr"] == 1e-4 and "hydra" not in prov["config"]
    assert prov["train_images"] == 8 and prov["val_images"] == 4
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "metrics.csv", "curves.png"}


EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_compose(experiment):
    from hydra.utils import instantiate

    cfg = _compose([f"+experiment={experiment}", "data.root=/data", "output_dir=/runs/x"])
    assert cfg.task in ("binary", "parts", "types")
    assert cfg.model.output_stride == 8
    assert len(cfg.input_size) == 2
    assert cfg.augment.train.ops[0].size == cfg.crop_size
    optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr
    if experiment.startswith("pakhomov2017"):
        assert cfg.model.depth == 101 and cfg.optim._target_ == "torch.optim.Adam"
        assert cfg.optim.lr == 1e-4 and cfg.data.kind == "endovis2015"
    if experiment.startswith("endovis17"):
        assert cfg.data.kind == "endovis2017" and list(cfg.input_size) == [1024, 1280]


@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_optimizer_options_instantiate(optim):
    from hydra.utils import instantiate

    cfg = _compose([f"optim={optim}", "output_dir=x"])
    optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__.lower() == optim
