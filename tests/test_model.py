import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.hub
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet101_Weights, resnet18, resnet50
from torchvision.models.segmentation import fcn_resnet101

from surgseg.errors import CheckpointError, ConfigError
from surgseg.model import build_model, hub_cache_file, imagenet_weights, load_fcn_weights


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_size_and_stride(depth, output_stride):
    torch.manual_seed(0)
    model = build_model(num_classes=4, depth=depth, output_stride=output_stride, aux_loss=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model.eval()(x)
    assert feats["out"].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert feats["aux"].shape[-2:] == (64 // min(output_stride, 16), 96 // min(output_stride, 16))
    assert out["out"].shape == (1, 4, 64, 96)
    assert out["aux"].shape == (1, 4, 64, 96)


def test_no_pool_no_fc_and_linear_head():
    model = build_model(num_classes=3, depth=18, head="linear")
    names = dict(model.backbone.named_children())
    assert "avgpool" not in names and "fc" not in names
    assert isinstance(model.classifier, nn.Conv2d) and model.classifier.kernel_size == (1, 1)
    assert model.aux_classifier is None


def test_basic_block_dilation_follows_torchvision_rule():
    """ResNet-18/34 get the same dilation pattern torchvision gives Bottleneck ResNets."""
    ours = build_model(num_classes=2, depth=18, output_stride=8).backbone
    ref = resnet50(replace_stride_with_dilation=[False, True, True])
    for name in ("layer3", "layer4"):
        ours_layer, ref_layer = getattr(ours, name), getattr(ref, name)
        assert ours_layer[0].conv1.dilation == ref_layer[0].conv2.dilation
        assert ours_layer[0].conv1.stride == (1, 1)
        assert ours_layer[0].downsample[0].stride == (1, 1)
        assert ours_layer[1].conv1.dilation == ref_layer[1].conv2.dilation
        assert ours_layer[1].conv2.dilation == ref_layer[1].conv2.dilation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 19}, "model.depth"),
        ({"output_stride": 4}, "model.output_stride"),
        ({"head": "aspp"}, "model.head"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_model(**{"num_classes": 2, "depth": 18, **kwargs})


def test_backbone_weights_from_local_file(tmp_path):
    torch.manual_seed(1)
    ref = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(num_classes=2, depth=18, backbone_weights=path)
    assert torch.equal(model.backbone.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    with pytest.raises(CheckpointError, match="ImageNet ResNet"):
        build_model(num_classes=2, depth=34, backbone_weights=path)


def test_torchvision_fcn_resnet101_state_dict_loads(tmp_path):
    torch.manual_seed(2)
    ref = fcn_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = tmp_path / "fcn_resnet101.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(num_classes=4, depth=101, head="fcn", aux_loss=True)
    skipped = load_fcn_weights(model, path)
    assert set(skipped) == {
        "classifier.4.weight",
        "classifier.4.bias",
        "aux_classifier.4.weight",
        "aux_classifier.4.bias",
    }
    own, theirs = model.state_dict(), ref.state_dict()
    for key in (
        "backbone.layer4.2.conv3.weight",
        "classifier.0.weight",
        "backbone.bn1.running_mean",
    ):
        assert torch.equal(own[key], theirs[key])
    # Same weights, same features: the dilated backbones are the same network.
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model.eval().backbone(x)["out"], ref.eval().backbone(x)["out"])


def test_fcn_weights_of_wrong_depth_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_fcn_weights(build_model(num_classes=2, depth=18), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match=r"garbage\.pth: not a PyTorch weights file"):
        load_fcn_weights(build_model(num_classes=2, depth=18), garbage)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty torch cache (TORCH_HOME) on a machine without network: any download raises.

    The guard replaces torch.hub's download function, the one place torchvision's weights API
    touches the network; everything of ours and of the weights API runs for real.
    """

    def no_network(url, *args, **kwargs):
        raise OSError(f"no network in tests: {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_weight_names_follow_torchvisions_enums():
    assert imagenet_weights("imagenet", 101) is ResNet101_Weights.IMAGENET1K_V2
    assert imagenet_weights("imagenet_v1", 101) is ResNet101_Weights.IMAGENET1K_V1
    assert imagenet_weights("imagenet_v2", 101) is ResNet101_Weights.IMAGENET1K_V2
    assert imagenet_weights("imagenet", 18) is ResNet18_Weights.IMAGENET1K_V1  # its DEFAULT
    with pytest.raises(ConfigError, match="no IMAGENET1K_V2 weights for ResNet-18"):
        imagenet_weights("imagenet_v2", 18)


def test_imagenet_weights_from_torchs_cache_without_network(offline_hub: Path):
    """A state dict placed under the name torchvision looks for (the last part of
    ``weights.url``) in $TORCH_HOME/hub/checkpoints is what the backbone gets."""
    torch.manual_seed(5)
    ref = resnet18()
    path = offline_hub / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    assert path.name == "resnet18-f37072fd.pth" and hub_cache_file(ResNet18_Weights.DEFAULT) == path
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    for name in ("imagenet", "imagenet_v1"):
        model = build_model(num_classes=2, depth=18, backbone_weights=name)
        theirs = ref.state_dict()
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, theirs[key]), key


def test_imagenet_weights_offline_with_an_empty_cache_is_one_line(offline_hub: Path):
    with pytest.raises(CheckpointError) as info:
        build_model(num_classes=2, depth=18, backbone_weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert f"place resnet18-f37072fd.pth in {offline_hub}" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not list(offline_hub.glob("*"))  # nothing half-written left behind


def test_offline_train_app_says_which_file_to_place(tmp_path: Path):
    """The app, offline with an empty cache: one line naming file, folder and URL; status 2.
    The subprocess has no network guard, so a sitecustomize stands in for the network."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import torch.hub\n"
        "def _no_network(url, *a, **k):\n"
        "    raise OSError('no network in tests')\n"
        "torch.hub.download_url_to_file = _no_network\n"
    )
    home = tmp_path / "torch_home"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "surgseg.apps.train",
            "model=resnet18",
            "model.backbone_weights=imagenet",
            f"data.root={tmp_path}",
            f"output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TORCH_HOME": str(home), "PYTHONPATH": str(guard)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    folder = home / "hub" / "checkpoints"
    assert lines[0].startswith("surgseg-train: error: ImageNet weights ResNet18_Weights")
    assert not (tmp_path / "run").exists()  # said before the output folder is made
    assert f"place resnet18-f37072fd.pth in {folder}" in lines[0]
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in lines[0]
