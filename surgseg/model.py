"""The seed paper's model: a ResNet made fully convolutional with dilation (Pakhomov et al. 2017).

ResNet without average pool and FC layer; the last strides replaced by dilated convolutions
(output stride 8 by default); a 1×1 classifier (``head="linear"``, as in the paper) or
torchvision's FCN head; bilinear upsampling to the input size. The model returns a dict with
``"out"`` (and ``"aux"`` from layer3 when ``aux_loss=True``), like torchvision's segmentation
models.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCN, FCNHead

from surgseg.errors import CheckpointError, ConfigError

DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
_DILATE = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
HEADS = ("linear", "fcn")

# ImageNet weights by name, as torchvision's enums have them (ResNet101_Weights.IMAGENET1K_V2…);
# "imagenet" is torchvision's DEFAULT (V2 where a depth has it, else V1).
IMAGENET_WEIGHTS = {
    "imagenet": "DEFAULT",
    "imagenet_v1": "IMAGENET1K_V1",
    "imagenet_v2": "IMAGENET1K_V2",
}
_WEIGHT_ENUMS: dict[int, type[WeightsEnum]] = {
    18: resnet.ResNet18_Weights,
    34: resnet.ResNet34_Weights,
    50: resnet.ResNet50_Weights,
    101: resnet.ResNet101_Weights,
}
# Seconds any one network operation of a download may take before it counts as offline.
DOWNLOAD_TIMEOUT_S = 30


def build_model(
    *,
    num_classes: int,
    depth: int = 101,
    output_stride: int = 8,
    head: str = "fcn",
    aux_loss: bool = False,
    backbone_weights: str | Path | None = None,
) -> FCN:
    """Build the dilated ResNet FCN.

    Args:
        num_classes: number of output classes, background included.
        depth: ResNet depth, one of 18, 34, 50, 101.
        output_stride: 8, 16 or 32; strides beyond it become dilation.
        head: ``"linear"`` (a 1×1 convolution) or ``"fcn"`` (torchvision's FCNHead).
        aux_loss: add an auxiliary FCN head on layer3.
        backbone_weights: ImageNet weights for the backbone: ``"imagenet"``, ``"imagenet_v1"``
            or ``"imagenet_v2"`` (torchvision's weights, from torch's hub cache, downloaded
            into it once if missing; see :func:`imagenet_state_dict`), or a local file with an
            ImageNet ResNet state dict in torchvision's layout; None for random weights.
    """
    if depth not in DEPTHS:
        raise ConfigError(f"model.depth must be one of {sorted(DEPTHS)}, got {depth}")
    if output_stride not in _DILATE:
        raise ConfigError(
            f"model.output_stride must be one of {sorted(_DILATE)}, got {output_stride}"
        )
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of {HEADS}, got {head!r}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")

    dilate = _DILATE[output_stride]
    if depth >= 50:
        backbone = DEPTHS[depth](weights=None, replace_stride_with_dilation=dilate)
    else:
        backbone = DEPTHS[depth](weights=None)
        _dilate_basic_blocks(backbone, dilate)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights, depth=depth)

    channels = backbone.fc.in_features  # 512 (BasicBlock) or 2048 (Bottleneck)
    layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    body = IntermediateLayerGetter(backbone, return_layers=layers)
    classifier = (
        FCNHead(channels, num_classes) if head == "fcn" else nn.Conv2d(channels, num_classes, 1)
    )
    aux = FCNHead(channels // 2, num_classes) if aux_loss else None
    return FCN(body, classifier, aux)


def _dilate_basic_blocks(net: resnet.ResNet, dilate: list[bool]) -> None:
    """Turn the strides of layer2..4 of a BasicBlock ResNet into dilation, in place.

    torchvision's ``replace_stride_with_dilation`` supports only Bottleneck blocks; this follows
    the same rule: the first block of a dilated layer keeps the previous dilation, the others
    use the new one.
    """
    dilation = 1
    for layer, do in zip((net.layer2, net.layer3, net.layer4), dilate, strict=True):
        if not do:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            first = previous if i == 0 else dilation
            for conv, rate in ((block.conv1, first), (block.conv2, dilation)):
                conv.stride, conv.dilation, conv.padding = (1, 1), (rate, rate), (rate, rate)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"not a PyTorch weights file ({exc.__class__.__name__})", path
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("does not hold a state dict of tensors", path)
    return state


def imagenet_weights(name: str, depth: int) -> WeightsEnum:
    """torchvision's weights enum member for ``name`` (a key of ``IMAGENET_WEIGHTS``) and a
    ResNet ``depth``, e.g. ``("imagenet", 101)`` → ``ResNet101_Weights.IMAGENET1K_V2``."""
    if name not in IMAGENET_WEIGHTS:
        raise ConfigError(
            f"model.backbone_weights must be one of {sorted(IMAGENET_WEIGHTS)} or a file, "
            f"got {name!r}"
        )
    if depth not in _WEIGHT_ENUMS:
        raise ConfigError(f"model.depth must be one of {sorted(_WEIGHT_ENUMS)}, got {depth}")
    enum = _WEIGHT_ENUMS[depth]
    member = IMAGENET_WEIGHTS[name]
    if member not in enum.__members__:
        have = ", ".join(m for m in enum.__members__ if m != "DEFAULT")
        raise ConfigError(
            f"model.backbone_weights={name}: torchvision has no {member} weights for "
            f"ResNet-{depth} (it has {have}); use imagenet or imagenet_v1"
        )
    return enum[member]


def hub_cache_file(weights: WeightsEnum) -> Path:
    """Where torchvision's weights API keeps ``weights``: the file named by the last part of
    ``weights.url`` in torch's hub checkpoints folder (``$TORCH_HOME/hub/checkpoints``,
    ``~/.cache/torch/hub/checkpoints`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation meanwhile, so a download without a network fails instead
    of waiting forever (torch.hub opens its URL without a timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_state_dict(
    name: str, depth: int, *, progress: bool = False
) -> dict[str, torch.Tensor]:
    """The ImageNet state dict ``name`` for a ResNet of ``depth``, through torchvision's
    weights API: read from torch's hub cache, or downloaded into it first when missing.

    A file present in the cache is read without any network access (torchvision downloads
    only when the file is missing; its hash is checked on download). When the file is missing
    and cannot be downloaded (offline), CheckpointError says in one line which file to place
    in which folder and the URL to fetch it from.
    """
    weights = imagenet_weights(name, depth)
    path = hub_cache_file(weights)
    present = path.is_file()
    what = f"ImageNet weights {type(weights).__name__}.{weights.name}"
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            state = weights.get_state_dict(
                progress=progress, check_hash=True, map_location="cpu", weights_only=True
            )
    except Exception as exc:
        if present:
            raise CheckpointError(
                f"{what}: not a PyTorch weights file ({exc.__class__.__name__}); delete it to "
                "download it again",
                path,
            ) from None
        raise CheckpointError(
            f"{what} are not in torch's cache and could not be downloaded "
            f"({exc.__class__.__name__}): place {path.name} in {path.parent} "
            f"(fetch it from {weights.url}), or give model.backbone_weights=/path/to/file.pth"
        ) from None
    return state


def load_backbone_weights(
    backbone: resnet.ResNet, source: str | Path, *, depth: int | None = None
) -> None:
    """Load ImageNet weights into ``backbone``: ``source`` names torchvision's weights
    (``IMAGENET_WEIGHTS``, for a ResNet of ``depth``) or is a local file with a ResNet state
    dict in torchvision's layout.

    The ``fc`` layer is skipped; every other tensor must match.
    """
    if isinstance(source, str) and source in IMAGENET_WEIGHTS:
        if depth is None:
            raise ValueError("depth is needed to pick torchvision's weights")
        given, where = imagenet_state_dict(source, depth), None
    else:
        given, where = _read_state_dict(source), source
    state = {k: v for k, v in given.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(
            f"not an ImageNet ResNet state dict of this depth "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)",
            where,
        )


def load_fcn_weights(model: FCN, path: str | Path) -> list[str]:
    """Load a torchvision ``fcn_resnet*`` state dict (e.g. fcn_resnet101's COCO weights).

    Tensors whose shapes differ (the final classifier layers when the class count differs) are
    skipped and their names returned; any other mismatch is an error.
    """
    given = _read_state_dict(path)
    own = model.state_dict()
    skipped = [k for k, v in given.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in given.items() if k in own and k not in skipped}
    # The auxiliary head is optional on either side.
    unexpected = [k for k in given if k not in own and not k.startswith("aux_classifier.")]
    missing = [k for k in own if k not in given and not k.startswith("aux_classifier.")]
    if unexpected or missing:
        raise CheckpointError(
            f"does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected keys); "
            "is it an fcn_resnet state dict of the same depth and head='fcn'?",
            path,
        )
    model.load_state_dict(state, strict=False)
    return skipped
