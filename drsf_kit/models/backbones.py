"""Backbone bodies as named stages: mini CPU bodies and torchvision ResNets with local-weights loading.

Every body is a ``StageBody``: an ordered ``nn.ModuleDict`` of stages with known output channels and
strides, so the DRSF blocks can be inserted after any stage by name. All bodies name their stride-4..32
stages ``layer1``..``layer4`` (the mini segmentation encoder stops at ``layer3``), so "DFDR after
``layer2``" means the stride-8 map for every profile.

Nothing here downloads: pretrained ResNet weights come from a local ``state_dict`` file only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from drsf_kit.errors import DataError


class StageBody(nn.Module):
    """An ordered set of named stages; ``channels[name]``/``strides[name]`` describe each output."""

    def __init__(self, stages: dict[str, nn.Module], channels: dict[str, int], strides: dict[str, int]):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.channels = dict(channels)
        self.strides = dict(strides)

    def stage_names(self) -> list[str]:
        """Stage names in execution order."""
        return list(self.stages.keys())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output (plain run without DRSF blocks)."""
        out = {}
        for name, stage in self.stages.items():
            x = stage(x)
            out[name] = x
        return out


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _plain_stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    # Two plain conv-BN-ReLU layers: such small plain encoders learn rendered scenes from scratch far
    # faster than ImageNet-style residual nets (see the measurements in docs/method.md).
    return nn.Sequential(conv_bn_relu(cin, cout, stride), conv_bn_relu(cout, cout))


def mini_detection_body(widths: tuple[int, ...] = (32, 48, 96, 160, 256)) -> StageBody:
    """Plain conv/BN body for the 180x320 benchmark: stem (stride 4) and layer1..layer4 (strides 4..32).

    ``widths`` = (stem, layer1, layer2, layer3, layer4) channels.
    """
    w0, w1, w2, w3, w4 = widths
    stages = {
        "stem": nn.Sequential(conv_bn_relu(3, w0, 2), conv_bn_relu(w0, w1, 2)),
        "layer1": conv_bn_relu(w1, w1),
        "layer2": _plain_stage(w1, w2, 2),
        "layer3": _plain_stage(w2, w3, 2),
        "layer4": _plain_stage(w3, w4, 2),
    }
    channels = {"stem": w1, "layer1": w1, "layer2": w2, "layer3": w3, "layer4": w4}
    strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    return StageBody(stages, channels, strides)


def mini_segmentation_body(widths: tuple[int, ...] = (24, 48, 96, 160)) -> StageBody:
    """Plain conv/BN encoder: stem (stride 2), layer1 (4), layer2 (8), layer3 (16, the bottleneck)."""
    w0, w1, w2, w3 = widths
    stages = {
        "stem": _plain_stage(3, w0, 2),
        "layer1": _plain_stage(w0, w1, 2),
        "layer2": _plain_stage(w1, w2, 2),
        "layer3": _plain_stage(w2, w3, 2),
    }
    channels = {"stem": w0, "layer1": w1, "layer2": w2, "layer3": w3}
    strides = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16}
    return StageBody(stages, channels, strides)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local ``state_dict`` file (also accepts {"state_dict": ...} / {"model": ...} wrappers)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "backbone weights file not found (weights are never downloaded: pass a local ResNet state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-torch file
        raise DataError(path, f"cannot read backbone weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(path, "not a state_dict (expected a dict of parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(module: nn.Module, path: str | Path, ignore_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Load a local ``state_dict`` into ``module`` strictly (keys under ``ignore_prefixes`` are skipped).

    Missing, unexpected or wrongly shaped keys raise ``DataError`` naming the file and the first offenders.
    """
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    # BatchNorm's counter is not a weight; frozen BN has none, plain BN may lack it in old files.
    own_keys = {k for k in own if not k.endswith("num_batches_tracked") and not k.startswith(ignore_prefixes)}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(own_keys - given)
    unexpected = sorted(given - own_keys)
    shape = sorted(k for k in own_keys & given if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        raise DataError(path, f"does not match the {type(module).__name__} backbone: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)


def resnet_body(
    depth: int,
    pretrained_path: Optional[str | Path] = None,
    frozen_bn: bool = False,
    trainable_layers: int = 5,
    dilated: bool = False,
) -> StageBody:
    """A torchvision ResNet-``depth`` (50 or 101) body as stages stem, layer1..layer4.

    Args:
        depth: 50 or 101.
        pretrained_path: local ResNet ``state_dict`` to load (``fc.*`` is ignored); None = random init.
        frozen_bn: use FrozenBatchNorm2d (the detection recipe for pretrained backbones).
        trainable_layers: how many of (layer4, layer3, layer2, layer1, stem) train; the rest is frozen.
        dilated: DeepLabV3's output stride 8 (layer3 and layer4 dilated instead of strided).
    """
    from torchvision.models import resnet50, resnet101
    from torchvision.ops import FrozenBatchNorm2d

    builders = {50: resnet50, 101: resnet101}
    if depth not in builders:
        raise ValueError(f"ResNet depth must be 50 or 101, got {depth}")
    norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    net = builders[depth](weights=None, norm_layer=norm, replace_stride_with_dilation=[False, dilated, dilated])
    if pretrained_path is not None:
        load_backbone_weights(net, pretrained_path)
    stages = {
        "stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        "layer1": net.layer1,
        "layer2": net.layer2,
        "layer3": net.layer3,
        "layer4": net.layer4,
    }
    trainable = ["layer4", "layer3", "layer2", "layer1", "stem"][:trainable_layers]
    for name, stage in stages.items():
        if name not in trainable:
            stage.requires_grad_(False)
    channels = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 8 if dilated else 16, "layer4": 8 if dilated else 32}
    return StageBody(stages, channels, strides)
