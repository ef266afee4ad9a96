import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.segmentation import fcn_resnet101

from surgseg.errors import CheckpointError, ConfigError
from surgseg.model import build_model, load_fcn_weights


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
