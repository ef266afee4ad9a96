"""Every primary config composes, and every option of every group builds what it describes."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from surgseg.apps import CONF_DIR, dataclass_from
from surgseg.augment import build_transform, instantiate_ops
from surgseg.engines import create_engine
from surgseg.errors import ConfigError
from surgseg.model import build_model
from surgseg.options import CueOptions, OutputOptions, Workers
from surgseg.synthetic import SyntheticSurgery

APPS = ["train", "infer", "demo", "eval", "export", "stream", "bench"]
GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "experiment")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides or [], return_hydra_config=True)


@pytest.mark.parametrize("app", APPS)
def test_every_app_config_composes(app):
    cfg = _compose(app)
    assert cfg.device == "cpu" and cfg.seed == 0
    assert cfg.hydra.output_subdir is None  # Hydra writes nothing of its own


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_build(option):
    model_cfg = _compose("train", [f"model={option}"]).model
    arch = {k: model_cfg[k] for k in ("depth", "output_stride", "head", "aux_loss")}
    model = build_model(num_classes=2, **arch).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 2, 32, 32)


@pytest.mark.parametrize("option", _options("optim"))
def test_optim_options_instantiate(option):
    factory = instantiate(_compose("train", [f"optim={option}"]).optim)
    optimizer = factory([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("option", _options("augment"))
def test_augment_options_instantiate(option):
    cfg = _compose("train", [f"augment@augment.train={option}"])
    ops = instantiate_ops(OmegaConf.to_container(cfg.augment.train, resolve=True)["ops"])
    transform = build_transform(ops, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0)
    image = torch.randint(0, 255, (96, 120, 3), dtype=torch.uint8).numpy()
    mask = (image[..., 0] > 128).astype("uint8")
    out = transform(image=image, mask=mask)
    assert tuple(out["image"].shape) == (3, *cfg.input_size)


@pytest.mark.parametrize("option", _options("data"))
def test_data_options_name_a_known_kind(option):
    cfg = _compose("train", [f"data={option}"])
    assert cfg.data.kind in {"synthetic", "endovis2015", "endovis2017", "generic"}


@pytest.mark.parametrize("option", _options("engine"))
def test_engine_options_build_or_fail_clearly(option, make_checkpoint):
    from surgseg.checkpoint import load_checkpoint

    model, meta = load_checkpoint(make_checkpoint())
    engine_cfg = OmegaConf.to_container(_compose("infer", [f"engine={option}"]).engine)
    name = engine_cfg.pop("name")
    if name == "tensorrt":
        with pytest.raises(ConfigError, match="tensorrt"):
            create_engine(name, model=model, meta=meta, **engine_cfg)
        return
    engine = create_engine(name, model=model, meta=meta, **engine_cfg)
    logits = engine.infer(torch.zeros(1, 3, 64, 80))
    assert tuple(logits.shape) == (1, 2, 64, 80)


@pytest.mark.parametrize(("group", "cls"), [("cues", CueOptions), ("outputs", OutputOptions),
                                            ("workers", Workers)])  # fmt: skip
def test_option_groups_are_their_dataclasses(group, cls):
    """One copy of each default: the config group is the dataclass registered with Hydra."""
    for app in ("infer", "stream", "bench"):
        cfg = _compose(app)
        if group in cfg:
            assert OmegaConf.to_container(cfg[group]) == {f.name: f.default for f in fields(cls)}
    assert dataclass_from(cls, _compose("bench")[group], group) == cls()


def test_option_values_are_checked():
    with pytest.raises(ConfigError, match=r"cues\.view"):
        dataclass_from(CueOptions, _compose("infer", ["cues.view=left"]).cues, "cues")
    with pytest.raises(ConfigError, match=r"outputs\.masks"):
        dataclass_from(OutputOptions, _compose("infer", ["outputs.masks=jpeg"]).outputs, "outputs")
    with pytest.raises(ConfigError, match=r"workers\.render"):
        dataclass_from(Workers, _compose("infer", ["workers.render=0"]).workers, "workers")
    assert _compose("infer", ["outputs.masks=null"]).outputs.masks is None


@pytest.mark.parametrize("option", _options("synthetic"))
def test_synthetic_options_render(option):
    gen = OmegaConf.to_container(_compose("demo", [f"synthetic@clips={option}"]).clips)
    keep = ("width", "height", "seed", "num_instruments", "fps", "smoke", "blur", "highlights")
    frame = SyntheticSurgery(**{k: gen[k] for k in keep}).render(0)
    assert frame.image.shape == (gen["height"], gen["width"], 3)


def test_groups_are_all_covered():
    assert set(GROUPS) == {"augment", "data", "engine", "model", "optim", "synthetic"}


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose(option):
    cfg = _compose("train", [f"+experiment={option}", "output_dir=x"])
    assert cfg.task in {"binary", "parts", "types"}
