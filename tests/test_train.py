"""The trainer on tiny CPU problems: learning, checkpoints, exact resume, Ctrl-C, the app."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from surgseg.checkpoint import load_checkpoint, read_checkpoint
from surgseg.errors import CheckpointError, ConfigError, DatasetError
from surgseg.predictor import Predictor
from surgseg.tasks import palette
from surgseg.train import evaluate, tensorboard_available, train
from tests._train_utils import SIZE, rectangles, tiny_meta, train_kwargs

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


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run of ``train_kwargs`` (4 epochs of 2 steps), the reference of the
    resume tests; deterministic and on one thread, like them."""
    out = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return out, train(**train_kwargs(out_dir=out))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


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
def test_ctrl_c_then_resume_is_exact(tmp_path, deterministic, straight, interrupt_at):
    whole_dir, whole = straight

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

    a, b = _final_weights(whole_dir), _final_weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == whole["train_loss"]
    assert resumed["val_miou"] == whole["val_miou"]
    assert (cut / "metrics.csv").read_text().count("\n") == 5


def test_max_steps_stop_then_resume_is_exact(tmp_path, deterministic, straight):
    """Stopped by max_steps inside epochs 2 and 3, resumed with larger limits (the last time
    with two loader workers): the same weights, losses and scores as one straight run."""
    whole_dir, whole = straight
    cut = tmp_path / "cut"
    first = train(**train_kwargs(out_dir=cut, max_steps=3))
    assert first["steps"] == 3 and first["epochs"] == 1.5
    state = read_checkpoint(cut / "last.pt")["train_state"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 3)
    train(**train_kwargs(out_dir=cut, max_steps=5, resume=True))
    resumed = train(**train_kwargs(out_dir=cut, resume=True, num_workers=2))

    a, b = _final_weights(whole_dir), _final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps"] == whole["steps"] == 8
    assert resumed["train_loss"] == whole["train_loss"]
    assert resumed["val_miou"] == whole["val_miou"]
    with (whole_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (cut / "metrics.csv").open() as f:
        cut_rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in cut_rows] == ["1", "1.5", "2", "2.5", "3", "4"]
    complete = [r for r in cut_rows if "." not in r["epoch"]]
    for key in ("step", "lr", "train_loss", "val_miou"):
        assert [r[key] for r in complete] == [r[key] for r in rows], key


def test_more_epochs_on_resume_follow_the_longer_schedule(straight, tmp_path):
    """The 4-epoch run ended at learning rate 0; with 6 epochs its next step runs at the
    longer schedule's rate, not at the 0 the optimizer was saved with."""
    shutil.copy(straight[0] / "last.pt", tmp_path / "last.pt")
    before = read_checkpoint(tmp_path / "last.pt")["state_dict"]
    result = train(**train_kwargs(out_dir=tmp_path, epochs=6, max_steps=9, resume=True))
    after = result["model"].state_dict()
    assert result["steps"] == 9
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    with (tmp_path / "metrics.csv").open() as f:
        lr = float(list(csv.DictReader(f))[-1]["lr"])
    assert lr == pytest.approx(1e-3 * (1 - (9 - 2) / (12 - 2)) ** 0.9)


def test_delivered_model_file_holds_weights_and_metadata_only(trained):
    out, _ = trained
    best, last = read_checkpoint(out / "best.pt"), read_checkpoint(out / "last.pt")
    assert best["train_state"] is None and last["train_state"]["optimizer"]["state"]
    # Adam keeps two moments per weight: the resumable file is about three times the model.
    assert (out / "best.pt").stat().st_size < 0.4 * (out / "last.pt").stat().st_size
    model, meta = load_checkpoint(out / "best.pt", task="binary")
    assert meta.input_size == SIZE and not model.training


def test_resume_refuses_another_batch_size(trained, tmp_path):
    shutil.copy(trained[0] / "last.pt", tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="batch_size 4, seed 3, world_size 1; cannot"):
        train(**train_kwargs(out_dir=tmp_path, epochs=6, resume=True, batch_size=2))


def test_resume_of_a_finished_run_changes_nothing(trained, tmp_path):
    out, result = trained
    again = train(**train_kwargs(out_dir=out, epochs=6, resume=True))
    assert again["steps"] == result["steps"] and again["val_miou"] == result["val_miou"]


def test_max_steps_stops_inside_an_epoch(tmp_path):
    result = train(**train_kwargs(out_dir=tmp_path, epochs=None, max_steps=3, val_set=None))
    assert result["steps"] == 3 and result["epochs"] == 1.5
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


def test_validation_leaves_the_training_random_streams_alone():
    """Dropout draws from the global stream: a validation (at a step limit, say) must not
    move it, or the run would go on differently from one without that validation."""
    model = tiny_meta().build()
    before = torch.get_rng_state()
    evaluate(model, rectangles(4, augment=False, seed=1), num_classes=2, batch_size=2)
    assert torch.equal(torch.get_rng_state(), before)


def test_augmentation_depends_on_seed_epoch_and_item_only():
    """Each item is augmented the same way whether its epoch is read whole or from the middle
    (a resumed epoch), with or without loader workers; another epoch draws anew."""
    from surgseg.train import _Tail, _train_loader

    data = rectangles(8)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=0)

    def epoch_batches(epoch: int, *, start: int = 0, num_workers: int = 0) -> list[np.ndarray]:
        sampler.set_epoch(epoch)
        loader = _train_loader(
            data,
            _Tail(sampler, start),
            batch_size=2,
            num_workers=num_workers,
            seed=0,
            epoch=epoch,
            rank=0,
            pin_memory=False,
        )
        return [m.numpy() for _, m in loader]

    first, second = epoch_batches(0), epoch_batches(1)
    assert len(first) == 4
    assert not all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    for again in (
        epoch_batches(0),
        [*first[:1], *epoch_batches(0, start=2)],
        [*first[:2], *epoch_batches(0, start=4, num_workers=2)],
    ):
        assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))


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
            "class_weights=[1,2,4,4]",
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
    assert prov["config"]["class_weights"] == [1, 2, 4, 4]
    assert prov["train_images"] == 8 and prov["val_images"] == 4
    written = {"last.pt", "best.pt", "metrics.csv", "curves.png"}
    if tensorboard_available():  # on by default with the package
        written.add("tensorboard")
    assert {p.name for p in out.iterdir()} == written


APP_RUN = [
    "model=resnet18",
    "task=parts",
    "data.val_videos=[b]",
    "input_size=[64,80]",
    "epochs=2",
    "max_steps=1",
    "batch_size=4",
    "num_workers=0",
    "progress=false",
]


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, clips) -> Path:
    """A run folder of the app stopped by max_steps after 1 of its 4 planned steps."""
    from surgseg.apps.train import run

    out = tmp_path_factory.mktemp("app") / "run"
    assert run(_compose([*APP_RUN, f"data.root={clips}", f"output_dir={out}"]))["steps"] == 1
    return out


def _train_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "surgseg.apps.train", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_resume_continues_the_saved_run_as_the_readme_shows(app_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(app_run, out)
    proc = _train_cli(f"output_dir={out}", "resume=true", "max_steps=3")
    assert proc.returncode == 0, proc.stderr
    assert "surgseg-train: 3 steps" in proc.stdout
    _, meta = load_checkpoint(out / "last.pt", task="parts")
    assert meta.input_size == (64, 80) and meta.model["output_stride"] == 8
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 3)
    config = meta.provenance["config"]
    assert config["max_steps"] == 3 and config["batch_size"] == 4 and config["resume"] is True
    assert config["num_workers"] == 0 and config["progress"] is False  # the run's, not defaults
    assert config["data"]["val_videos"] == ["b"] and Path(config["data"]["root"]).is_absolute()


def test_resume_with_the_original_overrides_repeated(app_run, clips, tmp_path):
    from surgseg.apps.train import run

    out = tmp_path / "run"
    shutil.copytree(app_run, out)
    cfg = _compose([*APP_RUN, f"data.root={clips}", f"output_dir={out}", "resume=true"])
    assert run(cfg)["steps"] == 1  # nothing left to do up to max_steps=1
    result = run(_compose([*APP_RUN, f"data.root={clips}", f"output_dir={out}", "resume=true",
                           "max_steps=2", "device=cpu"]))  # fmt: skip
    assert result["steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["batch_size=2", "task=binary"], "batch_size, task"),
        (["batch_size=8"], "batch_size"),  # the default value, but not the run's
        (["model=resnet34"], "model.depth"),
        (
            ["+experiment=synthetic_resnet18"],  # may set any key: all are compared
            "augment.eval.ops, augment.train.ops, batch_size, crop_scale, crop_size, "
            "data.val_videos, input_size, optim.lr, warmup_steps",
        ),
    ],
)
def test_resume_refuses_changes_naming_the_keys(app_run, overrides, keys):
    from surgseg.apps.train import run

    with pytest.raises(ConfigError, match=f"cannot change {keys} "):
        run(_compose([f"output_dir={app_run}", "resume=true", *overrides]))


def test_a_new_run_into_a_used_folder_is_refused_before_the_data_is_looked_at(app_run):
    from surgseg.apps.train import run

    with pytest.raises(ConfigError, match="already holds a training run"):
        run(_compose([f"output_dir={app_run}"]))  # no data.root


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=abc", "batch_size must be a positive integer, got 'abc'"),
        ("batch_size=0", "batch_size must be a positive integer, got 0"),
        ("batch_size=-4", "batch_size must be a positive integer, got -4"),
        ("batch_size=2.5", "batch_size must be a positive integer, got 2.5"),
        ("epochs=0", "epochs must be null or a positive integer, got 0"),
        ("max_steps=-1", "max_steps must be null or a positive integer, got -1"),
        ("num_workers=-1", "num_workers must be a non-negative integer, got -1"),
        ("warmup_steps=x", "warmup_steps must be a non-negative integer, got 'x'"),
        ("seed=-3", "seed must be a non-negative integer, got -3"),
        ("val_every=0", "val_every must be a positive integer, got 0"),
        ("grad_clip=0", "grad_clip must be null or a positive number, got 0"),
        ("dice_weight=-1", "dice_weight must be a non-negative number, got -1"),
        ("aux_weight=nan", "aux_weight must be a non-negative number, got nan"),
        ("poly_power=abc", "poly_power must be a non-negative number, got 'abc'"),
        ("amp=fp8", "amp must be null, 'bf16' or 'fp16', got 'fp8'"),
        (
            "class_weights=[1,2,4]",
            "class_weights must be null or 2 positive numbers, one per class of task binary "
            "(background, tool), got [1, 2, 4]",
        ),
        ("class_weights=[1,0]", "class_weights must be null or 2 positive numbers"),
        ("class_weights=3", "class_weights must be null or 2 positive numbers"),
        ("resume=maybe", "resume must be true or false, got 'maybe'"),
        ("crop_scale=[0.5,0.2]", "crop_scale must be [low, high] with 0 < low <= high <= 1"),
        ("crop_size=[0,80]", "crop_size must be [height, width] in pixels, got [0, 80]"),
        ("input_size=[30,40]", "input_size must be [height, width], each at least 32"),
        ("optim.lr=abc", "optim.lr must be a positive number, got 'abc'"),
        ("optim.lr=-1", "optim.lr must be a positive number, got -1"),
        ("+optim.bogus=1", "optim: "),
        ("epochs=null", "give epochs or max_steps"),
    ],
)
def test_bad_training_values_name_the_key_before_any_work(tmp_path, override, message):
    from surgseg.apps.train import run

    cfg = _compose(
        [f"data.root={tmp_path / 'missing'}", f"output_dir={tmp_path / 'run'}", override]
    )
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("amp=bf16", "amp=bf16 needs a CUDA device (device=cuda or cuda:N), got device=cpu"),
        ("amp=fp16", "amp=fp16 needs a CUDA device (device=cuda or cuda:N), got device=cpu"),
        ("model.init_weights=bad/random.pt", "model.init_weights: no such file: bad/random.pt"),
        ("model.backbone_weights=bad/r18.pth",
         "model.backbone_weights: no such file (nor one of imagenet, imagenet_v1, imagenet_v2): "
         "bad/r18.pth"),
    ],
)  # fmt: skip
def test_settings_that_fail_in_training_are_refused_before_the_folder(
    clips, tmp_path, override, message
):
    """With good data these used to pass every check, the output folder was made, and
    training stopped at once, leaving the folder empty."""
    from surgseg.apps.train import run

    cfg = _compose([*APP_RUN, f"data.root={clips}", f"output_dir={tmp_path / 'run'}", override])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()


def test_weight_files_are_checked_only_for_a_new_run(tmp_path):
    from surgseg.apps.train import _plain, check_settings

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")  # read only when training starts
    check_settings(_plain(_compose([f"model.init_weights={weights}",
                                    f"model.backbone_weights={weights}"])))  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")  # a run to resume: it loads neither file
    missing = [f"output_dir={run}", "model.init_weights=bad/random.pt"]
    check_settings(_plain(_compose([*missing, "resume=true"])))
    with pytest.raises(ConfigError, match=r"^model\.init_weights: no such file"):
        check_settings(_plain(_compose(missing)))


def test_help_lists_every_key_a_resumed_run_may_change():
    from surgseg.apps import app_help
    from surgseg.apps.train import RESUME_KEYS

    text = re.sub(r"\s*\n\s*#\s*", " ", app_help("surgseg-train", "train"))
    assert f"only {', '.join(RESUME_KEYS[2:])} may change" in text


def test_a_missing_data_folder_is_named_before_the_output_folder_is_made(tmp_path):
    from surgseg.apps.train import run

    with pytest.raises(DatasetError, match="dataset folder not found"):
        run(_compose([f"data.root={tmp_path / 'missing'}", f"output_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()


def test_a_bad_value_on_the_command_line_is_one_line(clips, tmp_path):
    proc = _train_cli(f"data.root={clips}", f"output_dir={tmp_path / 'run'}", "batch_size=abc")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "surgseg-train: error: batch_size must be a positive integer, got 'abc'"
    )


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
    # The paper's settings start from ImageNet; the synthetic (demo-sized) one from scratch.
    paper = experiment.startswith(("pakhomov2017", "endovis17"))
    assert cfg.model.backbone_weights == ("imagenet" if paper else None)


@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_optimizer_options_instantiate(optim):
    from hydra.utils import instantiate

    cfg = _compose([f"optim={optim}", "output_dir=x"])
    optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__.lower() == optim


def test_tensorboard_log_of_a_two_step_run(tmp_path):
    pytest.importorskip("tensorboard")
    import cv2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = train(**train_kwargs(out_dir=out, epochs=1, tensorboard=True))
    assert result["steps"] == 2
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/loss_epoch", "val/miou", "val/challenge_iou",
            "val/frame_iou", "val/iou/background", "val/iou/tool"} <= scalars  # fmt: skip
    assert [e.step for e in events.Scalars("train/loss")] == [1]  # every 10 steps from the first
    (epoch_loss,) = events.Scalars("train/loss_epoch")
    assert epoch_loss.step == 2 and epoch_loss.value == pytest.approx(result["train_loss"])
    (miou,) = events.Scalars("val/miou")
    assert miou.value == pytest.approx(result["val_miou"])
    (example,) = events.Images("val/examples")
    grid = cv2.imdecode(np.frombuffer(example.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    grid = cv2.cvtColor(grid, cv2.COLOR_BGR2RGB)
    h, w = SIZE
    assert grid.shape == (4 * h, 3 * w, 3)  # the 4 validation frames: frame, truth, prediction
    # The first row: the frame, then its truth coloured with the task's palette.
    raw = rectangles(4, augment=False, seed=1).dataset
    image, mask = raw[0]
    np.testing.assert_allclose(grid[:h, :w], image, atol=1)
    tool = mask == 1
    expected = 0.35 * image[tool] + 0.65 * palette(2)[1]
    np.testing.assert_allclose(grid[:h, w : 2 * w][tool], expected, atol=1.5)
    assert (grid[:h, w : 2 * w][mask == 255] == 128).all()  # ignore pixels grey


def test_tensorboard_without_the_package(tmp_path, monkeypatch):
    """On by default: silently off without the package. Asked for: one clear error."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert not tensorboard_available()
    out = tmp_path / "run"
    train(**train_kwargs(out_dir=out, epochs=1, max_steps=1))
    assert not (out / "tensorboard").exists()
    with pytest.raises(ConfigError, match="tensorboard=true needs the tensorboard package"):
        train(**train_kwargs(out_dir=tmp_path / "asked", epochs=1, tensorboard=True))
    from surgseg.apps.train import run

    cfg = _compose([f"data.root={tmp_path / 'missing'}", f"output_dir={tmp_path / 'app'}",
                    "tensorboard=true"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"^tensorboard=true needs the tensorboard package"):
        run(cfg)
    assert not (tmp_path / "app").exists()  # refused before any work


GUIDE = "## Training on real data: EndoVis 2015 and 2017"
ROOT = Path(__file__).resolve().parents[1]


def _guide_blocks() -> list[str]:
    """The bash blocks of the README's real-data guide, as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(GUIDE + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


# Shell functions in front of the guide's commands: each command runs as written, with the
# overrides of a one-step CPU run of a tiny model appended (and the tiny crop for EndoVis
# 2017). torchrun runs 2 CPU processes; sync_bn needs CUDA, so it is turned off there.
GUIDE_PRELUDE = r"""
set -euo pipefail
tiny=(device=cpu amp=null model.depth=18 "input_size=[64,80]" batch_size=2 max_steps=1
      num_workers=0 progress=false)
crop() { case "$*" in *endovis17*) echo "$CROP17";; esac; }
surgseg-train() { command surgseg-train "$@" "${tiny[@]}" $(crop "$@"); }
surgseg-eval() { command surgseg-eval "$@" device=cpu progress=false $(crop "$@"); }
torchrun() {
  shift 2  # --nproc_per_node N
  local args=() a
  for a in "$@"; do [[ $a == sync_bn=true ]] && a=sync_bn=false; args+=("$a"); done
  command torchrun --standalone --nproc_per_node 2 "${args[@]}" "${tiny[@]}" $(crop "$@")
}
"""


@pytest.mark.slow  # 14 processes (4 folds, 2 torchrun pairs, 3 evaluations…): ~2 CPU-minutes
def test_real_data_guide_commands_run(tmp_path):
    from _fake_layouts import SMALL_CROP, make_endovis2015, make_endovis2017, make_endovis2017_test
    from torchvision.models import resnet18

    crop = ",".join(f"{k}:{getattr(SMALL_CROP, k)}" for k in SMALL_CROP.__dataclass_fields__)

    blocks = _guide_blocks()
    assert len(blocks) == 3 and all("/data/" in b for b in blocks)
    data = tmp_path / "data"
    make_endovis2017(data / "endovis17/train", videos=range(1, 9), frames=2)
    make_endovis2017_test(data / "endovis17/test", videos=range(1, 11), frames=1, empty=(0,))
    for n in range(1, 5):
        make_endovis2015(data / "endovis15", video=f"Dataset{n}", frames=2)
    # torchvision's ImageNet weights, in an empty torch cache: a seeded ResNet-18 state dict
    # under the name torchvision looks for; any download attempt fails (no network in tests).
    cache = tmp_path / "torch_home/hub/checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), cache / "resnet18-f37072fd.pth")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import torch.hub\n"
        "def _no_network(url, *a, **k):\n"
        "    raise OSError('no network in tests')\n"
        "torch.hub.download_url_to_file = _no_network\n"
    )
    script = GUIDE_PRELUDE + "\n".join(b.replace("/data/", f"{data}/") for b in blocks)
    env = {**os.environ, "CROP17": f"data.crop={{{crop}}}", "PYTHONPATH": str(guard),
           "TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs, evals = tmp_path / "runs", tmp_path / "eval"
    for k in range(4):
        _, meta = load_checkpoint(runs / f"endovis17_parts_fold{k}/best.pt", task="parts")
        assert meta.provenance["backbone_weights"] == "ResNet18_Weights.IMAGENET1K_V1"
        assert meta.provenance["dataset"]["val_videos"] == [
            f"instrument_dataset_{v}" for v in ({0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}[k])
        ]
    cv = json.loads((evals / "endovis17_parts_cv/metrics.json").read_text())
    assert cv["frames"] == 16 and len(cv["videos"]) == 8
    test = json.loads((evals / "endovis17_parts_test/metrics.json").read_text())
    assert test["frames"] == 10 and len(test["videos"]) == 10
    assert test["overall"]["challenge_iou"] is not None
    assert (runs / "endovis17_parts_fold0_ddp/last.pt").is_file()
    assert (runs / "pakhomov2017_endovis15_binary_ddp/last.pt").is_file()
    e15 = json.loads((evals / "pakhomov2017_endovis15_binary/metrics.json").read_text())
    assert list(e15["videos"]) == ["Dataset4"]
    assert e15["overall"]["balanced_accuracy"] is not None
